"""Training batches: length filtering, fairseq-style length-bucketed batching (DDP aware), padding collate.

A bad file never stops training: the dataset returns None for it, collate drops it, and a batch of
only bad files becomes None for the training loop to skip.
"""

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wavadapt.data.audio import SAMPLE_RATE, normalize_waveform, read_audio
from wavadapt.data.corpora import Utterance, samples_at_16k
from wavadapt.data.text import normalize, normalize_text
from wavadapt.errors import AudioError, WavadaptError

log = logging.getLogger("wavadapt.data")

LABEL_PAD = -100  # ignored by torch's losses and by transformers' CTC heads


class Encoder(Protocol):
    """What the dataset needs from a vocabulary (wavadapt.data.text.Vocabulary)."""

    def encode(self, text: str) -> list[int]: ...


class LengthFilter(NamedTuple):
    """What :func:`filter_by_length` kept, and the ids it dropped as unreadable or outside the limits."""

    kept: list[Utterance]
    unreadable: list[str]
    outside: list[str]


def filter_by_length(
    utterances: Sequence[Utterance], min_seconds: float = 0.0, max_seconds: float = math.inf
) -> LengthFilter:
    """Keep utterances with ``min_seconds <= duration <= max_seconds``.

    Unknown lengths are read from file headers and filled in (the kept utterances carry them). An
    unreadable header drops the utterance with a warning naming the file.
    """
    kept, unreadable, outside = [], [], []
    for u in utterances:
        if u.num_samples is None:
            try:
                u = replace(u, num_samples=samples_at_16k(u.audio, u.raw_format))
            except AudioError as e:
                log.warning("skipping %s: %s", u.id, e)
                unreadable.append(u.id)
                continue
        if min_seconds <= u.num_samples / SAMPLE_RATE <= max_seconds:
            kept.append(u)
        else:
            outside.append(u.id)
    return LengthFilter(kept, unreadable, outside)


class Transcribed(NamedTuple):
    """A labeled set split by :func:`transcribed`: what trains, and the ids left out, by reason."""

    kept: list[Utterance]
    no_transcript: list[str]
    foreign: list[str]
    """Transcripts with letters outside the language's alphabet (kept, without those letters, on request)."""
    dropped: dict[str, int]
    """Characters normalisation removed without a spoken form (digits it cannot spell, symbols), with counts."""


def transcribed(utterances: Sequence[Utterance], language: str | None = None, keep_foreign: bool = False
                ) -> Transcribed:
    """Split a labeled set into the utterances that train and the ids of those without a transcript (missing, or
    nothing left after normalisation for ``language`` or their own: a CTC target of no tokens) and, unless
    ``keep_foreign``, of those whose transcript holds letters outside the alphabet; each named in a warning,
    and the characters normalisation dropped counted in one."""
    kept, missing, foreign, dropped = [], [], [], Counter()
    for u in utterances:
        normalized = normalize(u.text, language or u.language) if u.text is not None else None
        if normalized is None or not normalized.text:
            log.warning("skipping %s (%s): %s transcript", u.id, u.path, "no" if u.text is None else "empty")
            missing.append(u.id)
            continue
        dropped.update(c for c in u.text.lower() if c in normalized.dropped)
        if normalized.foreign and not keep_foreign:
            log.warning("skipping %s (%s): letters outside the %s alphabet (%s)", u.id, u.path,
                        language or u.language, normalized.foreign)
            foreign.append(u.id)
            continue
        kept.append(u)
    if dropped:
        log.warning("normalisation dropped characters it cannot spell out: %s",
                    ", ".join(f"{c!r} x{n}" for c, n in dropped.most_common()))
    return Transcribed(kept, missing, foreign, dict(dropped))


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of a padded batch tensor's cells that are padding, over all ``batches``."""
    real = padded = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        padded += max(sizes) * len(sizes)
    return 1.0 - real / padded if padded else 0.0


def pack(order: Sequence[int], lengths: Sequence[int], cap: int) -> list[list[int]]:
    """The utterances ``order`` lists, packed greedily in that order into batches whose padded size (the longest
    one's length times their number) stays under ``cap``."""
    batches, batch, longest = [], [], 0
    for i in order:
        if batch and max(longest, int(lengths[i])) * (len(batch) + 1) > cap:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, int(lengths[i]))
    return batches + [batch] if batch else batches


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size stays under a cap (fairseq's max_tokens).

    Each epoch sorts the utterances by length with a little random jitter (so equal-length neighbours
    differ between epochs), packs them greedily while ``max_len * batch_size <= cap``, shuffles the
    batch order, and deals the batches round-robin to ``num_replicas`` ranks. Every rank must have the same
    number of batches (DDP steps in lockstep), so the largest batches are split in two until the count
    divides evenly (only when fewer utterances than ranks remain are batches repeated, as torch's
    DistributedSampler does); ``drop_last=True`` drops the remainder instead. Call ``set_epoch``
    before each epoch.

    ``lengths`` are in samples at ``sample_rate`` (use the cropped lengths when the dataset crops).

    ``groups`` (each utterance's language) with a ``temperature`` other than 1 resamples the epoch by language, as
    XLS-R, MMS and Omnilingual ASR pre-train: language l gets a share of the epoch's audio proportional to
    ``hours_l ** temperature`` (1: as the corpus holds them; 0.5: XLS-R's; 0: every language alike), its own
    utterances drawn in a new random order each epoch, repeated where its share exceeds them.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_seconds_per_batch: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        sample_rate: int = SAMPLE_RATE,
        jitter: float = 0.05,
        groups: Sequence[str] | None = None,
        temperature: float = 1.0,
    ):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if temperature < 0:
            raise WavadaptError(f"language temperature {temperature}: give 0 (languages alike) to 1 (as the corpus)")
        if groups is not None and len(groups) != len(self.lengths):
            raise WavadaptError(f"{len(groups)} languages given for {len(self.lengths)} utterances")
        self.groups = None if groups is None or temperature == 1 else np.asarray(groups)
        self.temperature = temperature
        self.cap = int(max_seconds_per_batch * sample_rate)
        if not 0 <= rank < num_replicas:
            raise WavadaptError(f"rank {rank} is not in 0..{num_replicas - 1}")
        too_long = int((self.lengths > self.cap).sum())
        if too_long:
            raise WavadaptError(
                f"{too_long} utterances are longer than max_seconds_per_batch={max_seconds_per_batch}; "
                "drop them with filter_by_length(max_seconds=...)"
            )
        self.shuffle, self.seed, self.jitter = shuffle, seed, jitter
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches ``__iter__`` yields (same on every rank)."""
        self.epoch = epoch
        self._batches = self._make_batches()

    def _make_batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        chosen = self._by_language(rng) if self.groups is not None else np.arange(len(self.lengths))
        keys = self.lengths[chosen].astype(np.float64)
        if self.shuffle:
            keys = keys * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, size=len(keys))
        batches = pack(chosen[np.argsort(keys, kind="stable")].tolist(), self.lengths, self.cap)
        if self.shuffle:  # before dividing, so drop_last drops random batches, not the longest ones
            rng.shuffle(batches)
        return self._divide_evenly(batches)

    def _by_language(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's utterances (indices, some repeated or left out) with each language's share of the audio
        proportional to its hours ** temperature; as much audio in all as the corpus holds."""
        languages = sorted(set(self.groups.tolist()))
        members = [np.flatnonzero(self.groups == g) for g in languages]
        hours = np.array([self.lengths[m].sum() for m in members], dtype=np.float64)
        share = hours**self.temperature / (hours**self.temperature).sum() * hours.sum()
        chosen = []
        for m, target in zip(members, share, strict=True):
            order = np.concatenate([rng.permutation(m) for _ in range(int(target // self.lengths[m].sum()) + 1)])
            taken = np.searchsorted(np.cumsum(self.lengths[order]), target) + 1  # the first reaching its share
            chosen.append(order[:taken])
        return np.concatenate(chosen)

    def _divide_evenly(self, batches: list[list[int]]) -> list[list[int]]:
        if self.drop_last:
            return batches[: len(batches) - len(batches) % self.num_replicas]
        while len(batches) % self.num_replicas:
            # Halving a batch keeps it under the cap; the largest one loses the least efficiency.
            k = max(range(len(batches)), key=lambda j: len(batches[j]))
            big = batches.pop(k)
            if len(big) == 1:  # all singletons: nothing left to split
                batches.insert(k, big)
                return batches + batches[: -len(batches) % self.num_replicas]
            batches[k:k] = [big[: len(big) // 2], big[len(big) // 2 :]]
        return batches

    @property
    def padding_fraction(self) -> float:
        """Padding fraction of this epoch's batches, all ranks together."""
        return padding_fraction(self._batches, self.lengths)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self._batches) // self.num_replicas


@dataclass
class DataStats:
    """Counts for the training log: utterances loaded, files skipped (decode errors), empty batches.

    ``AudioDataset.stats`` records the skipped ids of the process that read them; with DataLoader
    workers those stay in the workers (their log warnings name the files), so the training loop
    keeps its own DataStats and feeds it every batch through :meth:`update`.
    """

    utterances: int = 0
    skipped: int = 0
    skipped_batches: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    def update(self, batch: dict | None) -> None:
        """Account for one collated batch (None: every file in it failed)."""
        if batch is None:
            self.skipped_batches += 1
            return
        self.utterances += len(batch["ids"])
        self.skipped += batch["num_skipped"]


class AudioDataset(Dataset):
    """Utterances -> ``{"id", "waveform" (float32, 16 kHz), "labels"}``.

    ``labels`` (only with a ``vocab``) are the ids of the transcript after ``text.normalize_text``
    for the utterance's language, the same text ``check_corpus`` checks.

    ``crop_seconds`` takes a random window of longer utterances (pre-training), drawn from
    ``(seed, epoch, index)`` so runs and resumes repeat it; ``set_epoch`` changes the draw.
    ``normalize`` applies per-utterance zero mean / unit variance (see audio.normalize_waveform).
    An undecodable file gives None (logged by name, counted in ``stats``) instead of an exception.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        vocab: Encoder | None = None,
        crop_seconds: float | None = None,
        normalize: bool = False,
        seed: int = 0,
    ):
        if vocab is not None:
            unlabeled = [u.id for u in utterances if u.text is None]
            if unlabeled:
                raise WavadaptError(
                    f"{len(unlabeled)} utterances have no transcript (e.g. {unlabeled[0]}); labels need text"
                )
        self.utterances = list(utterances)
        self.vocab = vocab
        self.crop = None if crop_seconds is None else int(crop_seconds * SAMPLE_RATE)
        self.normalize = normalize
        self.seed = seed
        self.epoch = 0
        self.stats = DataStats()

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict | None:
        u = self.utterances[index]
        try:
            x = read_audio(u.audio, raw=u.raw_format)
        except AudioError as e:
            if u.id not in self.stats.skipped_ids:  # named once, not once per epoch
                log.warning("skipping %s: %s", u.id, e)
                self.stats.skipped_ids.append(u.id)
            self.stats.skipped += 1
            return None
        if self.crop is not None and len(x) > self.crop:
            start = np.random.default_rng((self.seed, self.epoch, index)).integers(len(x) - self.crop + 1)
            x = x[start : start + self.crop]
        if self.normalize:
            x = normalize_waveform(x)
        item = {"id": u.id, "waveform": torch.from_numpy(x)}
        if self.vocab is not None:
            item["labels"] = self.labels(u)
        self.stats.utterances += 1
        return item

    def labels(self, u: Utterance) -> torch.Tensor:
        """The label ids of ``u``'s transcript."""
        return torch.tensor(self.vocab.encode(normalize_text(u.text, u.language)), dtype=torch.long)

    def lengths(self) -> list[int]:
        """Per-utterance lengths in 16 kHz samples after cropping (for the batch sampler); must be known."""
        missing = [u.id for u in self.utterances if u.num_samples is None]
        if missing:
            raise WavadaptError(f"{len(missing)} utterances have no length (e.g. {missing[0]}); run filter_by_length")
        crop = self.crop or math.inf
        return [min(u.num_samples, crop) for u in self.utterances]


def collate(items: Sequence[dict | None]) -> dict | None:
    """Pad a list of dataset items into a batch; None items (bad files) are dropped and counted.

    Returns ``waveforms`` (B, T) zero-padded, ``attention_mask`` (B, T) int32 (1 = audio; int32 as
    transformers' feature extractors make it, half the bytes of int64 to pass from DataLoader workers),
    ``ids``, ``num_skipped``, ``padding_fraction``, ``audio_seconds`` (unpadded), and with labels ``labels``
    (B, L) padded with -100 plus ``label_lengths`` (B,). Returns None when every item was bad.
    """
    good = [item for item in items if item is not None]
    if not good:
        return None
    sizes = torch.tensor([len(item["waveform"]) for item in good])
    # (B,) -> (B, T): position t is audio iff t < size.
    attention_mask = (torch.arange(int(sizes.max()))[None, :] < sizes[:, None]).int()
    batch = {
        "ids": [item["id"] for item in good],
        "waveforms": torch.nn.utils.rnn.pad_sequence([item["waveform"] for item in good], batch_first=True),
        "attention_mask": attention_mask,
        "num_skipped": len(items) - len(good),
        "padding_fraction": 1.0 - sizes.sum().item() / attention_mask.numel(),
        "audio_seconds": sizes.sum().item() / SAMPLE_RATE,
    }
    if "labels" in good[0]:
        batch.update(pad_labels([item["labels"] for item in good]))
    return batch


def pad_labels(labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Label id sequences -> ``labels`` (B, L) padded with -100 and ``label_lengths`` (B,)."""
    return {"labels": torch.nn.utils.rnn.pad_sequence(list(labels), batch_first=True, padding_value=LABEL_PAD),
            "label_lengths": torch.tensor([len(t) for t in labels])}


def make_dataloader(
    dataset: AudioDataset,
    max_seconds_per_batch: float,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader over ``dataset`` with a LengthBucketBatchSampler and :func:`collate`.

    The utterances need known lengths (:func:`filter_by_length` fills them). Each epoch, call
    :func:`set_epoch` on the loader before iterating it.
    """
    sampler = LengthBucketBatchSampler(
        dataset.lengths(), max_seconds_per_batch, shuffle, seed, num_replicas, rank, drop_last
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Workers are re-created per epoch so they see the dataset's new epoch (random crops).
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Advance a :func:`make_dataloader` loader's batch order and random crops to ``epoch``."""
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
