"""Training batches streamed from WebDataset shards, local or behind fsspec URLs, for corpora too large to index.

Each epoch the shards are shuffled (by seed and epoch) and dealt to the readers, every DataLoader worker of every
torchrun rank one reader: reader r of R reads shards r, r + R, ... so each record is read once per epoch. A reader
fills a buffer of ``buffer_size`` samples (their encoded audio and its length from the header, nothing decoded),
packs it into length buckets under the batch cap as :class:`~wavadapt.data.batching.LengthBucketBatchSampler` does,
and yields the batches in a random order, decoded through the audio gate: a bad record is skipped and counted.
Every batch says which reader made it and its number, so the training loop saves the position reached by each
reader, and :meth:`ShardStream.resume_at` skips exactly the batches consumed before (packing them from headers,
without decoding).
"""

import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from wavadapt.data.audio import SAMPLE_RATE, audio_info, normalize_waveform, read_audio
from wavadapt.data.batching import Encoder, collate, pack
from wavadapt.data.corpora import in_language
from wavadapt.data.stores.tar_shards import read_shards
from wavadapt.data.text import normalize, normalize_text
from wavadapt.data.utterance import UNKNOWN_LANGUAGE, Utterance
from wavadapt.errors import AudioError, WavadaptError

log = logging.getLogger("wavadapt.data")


@dataclass(frozen=True)
class Shards:
    """WebDataset shards to stream rather than index (``finetune`` / ``pretrain --stream``): paths or URLs, the
    language to keep (records that name another are skipped), and the readers' buffer."""

    paths: list[str]
    language: str | None = None
    buffer_size: int = 500

    def listing(self) -> list[Utterance]:
        """Every sample's id and transcript, audio not decoded: a local shard's tar headers and text members, a
        remote shard read once."""
        return in_language(read_shards(self.paths), self.language, self.paths[0])


class ShardStream(IterableDataset):
    """Batches of ``shards`` (paths or URLs) for the training loop, epoch by epoch; see the module's docstring.

    With a ``vocab`` each batch has labels and a sample without a usable transcript in ``language`` is skipped;
    ``crop_seconds`` crops longer samples as :class:`~wavadapt.data.batching.AudioDataset` does (pre-training);
    samples outside ``min_seconds``-``max_seconds`` are skipped, and with ``ids`` those it does not hold. ``rank`` and
    ``world_size`` are torchrun's. Each item is ``{"reader", "number", "batch"}`` (``batch`` None when every file
    in it failed).
    """

    def __init__(self, shards: Sequence[str], max_seconds_per_batch: float, vocab: Encoder | None = None,
                 language: str | None = None, crop_seconds: float | None = None, normalize: bool = False,
                 min_seconds: float = 0.0, max_seconds: float = math.inf, buffer_size: int = 500, seed: int = 0,
                 rank: int = 0, world_size: int = 1, ids: set[str] | None = None):
        if not shards:
            raise WavadaptError("no shards to stream")
        self.shards, self.cap, self.ids = list(shards), int(max_seconds_per_batch * SAMPLE_RATE), ids
        self.vocab, self.language, self.buffer_size, self.seed = vocab, language, buffer_size, seed
        self.crop, self.normalize = crop_seconds, normalize
        self.min_samples, self.max_samples = min_seconds * SAMPLE_RATE, min(max_seconds * SAMPLE_RATE, self.cap)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, position: dict[int, int]) -> None:
        """Skip, in this epoch, the first ``position[r]`` batches of reader r (those the loop consumed)."""
        self.position = dict(position)

    def readers(self, workers: int) -> int:
        """How many readers an epoch deals the shards to; each needs one shard at least."""
        total = self.world_size * max(1, workers)
        if total > len(self.shards):
            raise WavadaptError(f"{len(self.shards)} shards for {total} readers ({self.world_size} processes x "
                                f"{max(1, workers)} data-loader workers): write smaller shards (wavadapt shard "
                                "--shard-size) or use fewer workers")
        return total

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        index, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        total = self.readers(workers)
        reader = self.rank * workers + index
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[reader::total]]
        rng = np.random.default_rng((self.seed, self.epoch, reader))
        skip, number = self.position.get(reader, 0), 0
        for buffer in self._buffers(mine):
            for batch in self._pack(buffer, rng):
                if number >= skip:  # None: every file of it failed, as collate says
                    yield {"reader": reader, "number": number, "batch": collate([self._item(buffer[i]) for i in batch])}
                number += 1

    def _buffers(self, shards: list[str]) -> Iterator[list[Utterance]]:
        """Usable samples of ``shards`` in order, ``buffer_size`` at a time, each with its length."""
        buffer = []
        for shard in shards:
            for u in read_shards([shard]):
                if (u := self._usable(u)) is not None:
                    buffer.append(u)
                if len(buffer) == self.buffer_size:
                    yield buffer
                    buffer = []
        if buffer:
            yield buffer

    def _usable(self, u: Utterance) -> Utterance | None:
        if self.language is not None and u.language not in (self.language, UNKNOWN_LANGUAGE):
            return None
        if self.ids is not None and u.id not in self.ids:  # left out by the listing (a transcript that cannot train)
            return None
        if self.vocab is not None and (u.text is None or not normalize(u.text, self.language or u.language).text):
            log.warning("skipping %s (%s): no transcript", u.id, u.audio)
            return None
        try:
            frames, rate, _ = audio_info(u.audio)
        except AudioError as e:
            log.warning("skipping %s: %s", u.id, e)
            return None
        samples = round(frames * SAMPLE_RATE / rate)
        if not self.min_samples <= samples <= (math.inf if self.crop else self.max_samples):
            return None
        return replace(u, num_samples=samples, language=self.language or u.language)

    def _pack(self, buffer: list[Utterance], rng: np.random.Generator) -> list[list[int]]:
        """The buffer's length buckets under the cap, in a random order."""
        crop = int(self.crop * SAMPLE_RATE) if self.crop else math.inf
        lengths = np.array([min(u.num_samples, crop) for u in buffer])
        keys = lengths * rng.uniform(0.95, 1.05, size=len(lengths))
        batches = pack(np.argsort(keys, kind="stable").tolist(), lengths, self.cap)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _item(self, u: Utterance) -> dict | None:
        """What AudioDataset gives for ``u``, its crop drawn from (seed, epoch, id)."""
        try:
            x = read_audio(u.audio)
        except AudioError as e:
            log.warning("skipping %s: %s", u.id, e)
            return None
        crop = int(self.crop * SAMPLE_RATE) if self.crop else None
        if crop is not None and len(x) > crop:
            draw = np.random.default_rng((self.seed, self.epoch, zlib.crc32(u.id.encode())))
            start = draw.integers(len(x) - crop + 1)
            x = x[start : start + crop]
        item = {"id": u.id, "waveform": torch.from_numpy(normalize_waveform(x) if self.normalize else x)}
        if self.vocab is not None:
            item["labels"] = torch.tensor(self.vocab.encode(normalize_text(u.text, u.language)), dtype=torch.long)
        return item


def stream_batches(stream: ShardStream, workers: int) -> Iterator[dict]:
    """One epoch of ``stream`` through a DataLoader with ``workers`` processes (the readers make the batches)."""
    stream.readers(workers)  # refuses too few shards before workers start
    # Its own generator: a loader created mid-epoch on resume must not draw from the global RNG.
    yield from torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                           generator=torch.Generator().manual_seed(stream.seed + stream.epoch))
