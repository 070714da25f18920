"""Cached CNN features for training with a frozen CNN: pre-training (the multihead baselines and cwav2vec
2.0) and every fine-tuning method (none trains the CNN).

Once the CNN (wav2vec 2.0's feature encoder) is frozen, its output for an utterance never changes, so it
can be computed once and read back every epoch instead of decoding the audio and running the CNN again.
Only the CNN's output is cached: the feature projection may train (multihead, full fine-tuning) and masking
comes after it, so everything from the projection on runs as in :meth:`PretrainingModel.forward` and
:meth:`CTCModel.forward`, which take the cached output as ``cnn_features`` (``pretrain(...,
feature_cache=DIR)`` and ``finetune(..., feature_cache=ROOT)`` train this way).

A cache directory (e.g. ``<run>/feature_cache/``) holds::

    feature_cache.json            index: format, version, CNN fingerprint, dtype, conv geometry and, per
                                  utterance id, its shard and frame count (written last: a cache whose
                                  build was interrupted has none and is rebuilt)
    features-00000.safetensors    per utterance id its whole-utterance (C, T) CNN output, fp16 by default,
    ...                           in shards of about ``shard_bytes``

The fingerprint hashes the CNN's weights, its conv configuration and whether waveforms are normalised:
:meth:`FeatureCache.open` refuses a cache made by another CNN.

Cropping happens in frame space: a crop of ``crop_seconds`` keeps ``n = frames(crop samples)``
consecutive frames ``[k, k + n)`` of the cached utterance. How that compares with running the CNN on a
crop of the audio that starts at sample ``320 k`` (the hop):

* No edge effect: the convolutions have no padding, so frame ``t`` sees exactly samples
  ``[320 t, 320 t + 400)`` (the receptive field) of the utterance in both cases.
* Per-frame CNNs (``feat_extract_norm="layer"``: Large, XLS-R) give the same features up to float
  rounding, except that with ``normalize_waveforms`` the waveform is normalised over the whole utterance
  instead of over the crop (one gain and offset per utterance).
* Base's ``"group"`` CNN is not local: the first conv's GroupNorm (one group per channel) normalises each
  channel over the whole time axis, so its statistics come from the whole utterance instead of the crop
  and every frame differs a little, not only at the edges (little when the crop covers most of it).
* Crops start on the 320-sample frame grid: the sub-frame shifts (0-319 samples) that sample-level crops
  draw are a small augmentation the cache gives up.
* Padding: a padded batch of waveforms runs the CNN over the zero padding (GroupNorm's statistics include
  it); cached features are computed per utterance without padding, as in fairseq, which crops a batch
  to its shortest utterance.
* fp16 storage rounds features to ~5e-4 relative (use ``dtype=torch.float32`` to avoid it).

Fine-tuning takes whole utterances, never crops, and runs a padded batch's rows as if alone (see
``CTCModel``), so with fp32 storage a cached run trains as the uncached one does, up to float rounding.
Its caches live under a root directory, one subdirectory per CNN and utterance set (:func:`keyed_dir`):
runs of one backbone on one corpus, in any process, share one cache, built once under a file lock.

Size: C = 512 channels x 50 frames per second x 2 bytes = 51 kB per second of audio in fp16 (1.6 times
16-bit PCM): 18 GB for 100 h, 177 GB for LibriSpeech's 960 h.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from wavadapt.data.audio import SAMPLE_RATE, normalize_waveform, read_audio
from wavadapt.data.batching import pad_labels
from wavadapt.data.corpora import Utterance, require_unique_ids
from wavadapt.errors import AudioError, CheckpointError, WavadaptError
from wavadapt.model.backbone import conv_geometry
from wavadapt.model.pretraining import PretrainingModel

if TYPE_CHECKING:
    from wavadapt.training.loop import Distributed

log = logging.getLogger("wavadapt.training.feature_cache")

FORMAT = "wavadapt-feature-cache"
VERSION = 1
INDEX = "feature_cache.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_CNN_CONFIG = ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_extract_activation")


def frames_of(model: PretrainingModel, num_samples: int) -> int:
    """How many CNN frames ``num_samples`` samples give."""
    return int(model.backbone._get_feat_extract_output_lengths(torch.tensor(num_samples)))


def cnn_fingerprint(model: PretrainingModel) -> str:
    """sha256 of the CNN's conv configuration, waveform normalisation and weights (names, dtypes, shapes,
    bytes): what decides the features a cache holds."""
    config = model.backbone.config
    h = hashlib.sha256()
    header = {k: getattr(config, k) for k in _CNN_CONFIG} | {"normalize_waveforms": model.normalize_waveforms}
    h.update(json.dumps(header, sort_keys=True, default=list).encode())
    for name, tensor in sorted(model.backbone.feature_extractor.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def cnn_features(model: PretrainingModel, waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(S,) waveform, as the model takes it (normalised if ``model.normalize_waveforms``) -> (C, T) fp32
    CNN output on the CPU."""
    cnn = model.backbone.feature_extractor
    ref = next(cnn.parameters())
    x = torch.as_tensor(waveform).to(device=ref.device, dtype=ref.dtype)
    return cnn(x[None])[0].float().cpu()


class FeatureCache:
    """Read access to a cache directory; cheap to pickle (DataLoader workers open the shards lazily)."""

    def __init__(self, path: str | Path, index: dict):
        self.path = Path(path)
        self.index = index
        self.fingerprint: str = index["fingerprint"]
        self.dtype: torch.dtype = DTYPES[index["dtype"]]
        self._shards: dict[int, object] = {}

    @classmethod
    def open(cls, path: str | Path, model: PretrainingModel | None = None) -> FeatureCache:
        """Open a cache directory; with ``model``, check that its CNN made the cache."""
        index_path = Path(path) / INDEX
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index_path}: cannot read the feature cache index ({e})") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CheckpointError(f"{index_path}: not a {FORMAT} v{VERSION} index")
        if model is not None and index["fingerprint"] != cnn_fingerprint(model):
            raise CheckpointError(f"{path}: the feature cache was made by another CNN (or waveform normalisation) "
                                  "than this model's; rebuild it")
        return cls(path, index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}

    def __len__(self) -> int:
        return len(self.index["utterances"])

    def __contains__(self, utterance_id: str) -> bool:
        return utterance_id in self.index["utterances"]

    @property
    def ids(self) -> list[str]:
        return list(self.index["utterances"])

    @property
    def skipped(self) -> list[str]:
        """Utterances whose audio could not be decoded when the cache was built."""
        return list(self.index.get("skipped", []))

    def num_frames(self, utterance_id: str) -> int:
        return self._entry(utterance_id)[1]

    def features(self, utterance_id: str, start: int = 0, num_frames: int | None = None) -> torch.Tensor:
        """(C, num_frames) fp32 CNN output of frames ``[start, start + num_frames)`` (default: to the end);
        only those frames are read from disk."""
        shard, total = self._entry(utterance_id)
        stop = total if num_frames is None else start + num_frames
        if not 0 <= start <= stop <= total:
            raise WavadaptError(f"frames [{start}, {stop}) out of range: {utterance_id!r} has {total} frames")
        if shard not in self._shards:
            try:
                self._shards[shard] = safe_open(self.path / self.index["shards"][shard], framework="pt", device="cpu")
            except (OSError, SafetensorError) as e:
                raise CheckpointError(f"{self.path}: cannot read feature shard {shard} ({e})") from None
        return self._shards[shard].get_slice(utterance_id)[:, start:stop].float()

    def _entry(self, utterance_id: str) -> tuple[int, int]:
        try:
            shard, frames = self.index["utterances"][utterance_id]
        except KeyError:
            raise WavadaptError(f"utterance {utterance_id!r} is not in the feature cache {self.path}") from None
        return shard, frames


def write_feature_cache(model: PretrainingModel, waveforms: Iterable[tuple[str, torch.Tensor | np.ndarray]],
                    out_dir: str | Path, dtype: torch.dtype = torch.float16, shard_bytes: int = 2**30,
                    skipped: Sequence[str] = ()) -> FeatureCache:
    """Compute and store the CNN output of each ``(utterance id, waveform)`` (waveforms as the model takes
    them) in ``out_dir``, replacing any cache there; ``skipped`` ids are recorded as undecodable."""
    out_dir = Path(out_dir)
    name = next((k for k, v in DTYPES.items() if v == dtype), None)
    if name is None:
        raise WavadaptError(f"feature cache dtype must be one of {', '.join(DTYPES)}, not {dtype}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).unlink(missing_ok=True)  # the index goes last: until then the cache is incomplete
    for old in out_dir.glob("features-*.safetensors"):
        old.unlink()
    fingerprint = cnn_fingerprint(model)
    field, hop = conv_geometry(model.backbone.config)
    utterances: dict[str, list[int]] = {}
    shards: list[str] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes, channels = 0, None

    def flush() -> None:
        nonlocal pending_bytes
        if pending:
            shards.append(f"features-{len(shards):05d}.safetensors")
            save_file(pending, out_dir / shards[-1], metadata={"format": FORMAT, "fingerprint": fingerprint})
            pending.clear()
            pending_bytes = 0

    for utterance_id, waveform in waveforms:
        if utterance_id in utterances or utterance_id in pending:
            raise WavadaptError(f"utterance id {utterance_id!r} appears twice")
        x = cnn_features(model, waveform).to(dtype).contiguous()
        channels = x.shape[0]
        pending[utterance_id] = x
        pending_bytes += x.nbytes
        utterances[utterance_id] = [len(shards), x.shape[1]]
        if pending_bytes >= shard_bytes:
            flush()
    flush()
    index = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "dtype": name,
             "channels": channels, "receptive_field": field, "hop": hop,
             "normalize_waveforms": model.normalize_waveforms, "shards": shards, "utterances": utterances,
             "skipped": list(skipped)}
    tmp = out_dir / f"{INDEX}.tmp"
    tmp.write_text(json.dumps(index) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / INDEX)
    return FeatureCache(out_dir, index)


def build_feature_cache(model: PretrainingModel, utterances: Sequence[Utterance], out_dir: str | Path,
                        dtype: torch.dtype = torch.float16, shard_bytes: int = 2**30) -> FeatureCache:
    """The cache of ``utterances`` for ``model``'s CNN in ``out_dir``: reused when the cache there was made
    by this CNN, in ``dtype``, for these utterances; else (re)built by decoding every file (normalised
    as a whole utterance if ``model.normalize_waveforms``). Undecodable files are logged and skipped.
    Processes building one directory at once take turns (a lock file beside it): the later ones reuse."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _build_or_reuse(model, utterances, out_dir, dtype, shard_bytes)


def keyed_dir(root: str | Path, model: PretrainingModel, utterances: Sequence[Utterance]) -> Path:
    """``root``'s subdirectory for the cache of ``utterances`` by ``model``'s CNN: named by the CNN's fingerprint
    and a hash of the utterance ids, so caches of other CNNs or sets never replace each other."""
    ids = hashlib.sha256("\n".join(sorted(u.id for u in utterances)).encode()).hexdigest()
    return Path(root) / f"{cnn_fingerprint(model)[:16]}-{ids[:8]}"


def _build_or_reuse(model: PretrainingModel, utterances: Sequence[Utterance], out_dir: Path, dtype: torch.dtype,
                    shard_bytes: int) -> FeatureCache:
    require_unique_ids(utterances)
    wanted = {u.id for u in utterances}
    if (out_dir / INDEX).is_file():
        try:
            cache = FeatureCache.open(out_dir, model)
            if cache.dtype == dtype and wanted == set(cache.ids) | set(cache.skipped):
                return cache
        except CheckpointError as e:
            log.info("rebuilding the feature cache: %s", e)
    skipped: list[str] = []

    def waveforms():
        for u in utterances:
            try:
                x = read_audio(u.audio, raw=u.raw_format)
            except AudioError as e:
                log.warning("skipping %s: %s", u.id, e)
                skipped.append(u.id)
                continue
            yield u.id, normalize_waveform(x) if model.normalize_waveforms else x

    return write_feature_cache(model, waveforms(), out_dir, dtype, shard_bytes, skipped)


def crop_start(total_frames: int, crop_frames: int, rng: np.random.Generator) -> int:
    """A uniformly drawn first frame of a ``crop_frames`` window in ``total_frames`` (0 if it fits whole)."""
    return int(rng.integers(total_frames - crop_frames + 1)) if total_frames > crop_frames else 0


def collate_features(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, T_i) CNN outputs -> (B, C, T) zero-padded batch and (B, T) bool mask of the real frames."""
    lengths = torch.tensor([f.shape[1] for f in features])
    batch = torch.zeros(len(features), features[0].shape[0], int(lengths.max()), dtype=features[0].dtype)
    for i, f in enumerate(features):
        batch[i, :, : f.shape[1]] = f
    return batch, torch.arange(batch.shape[2])[None, :] < lengths[:, None]


def collate_cached(items: Sequence[dict]) -> dict:
    """CachedFeatureDataset items -> ``{"ids", "features" (B, C, T), "frame_mask" (B, T), "num_skipped",
    "padding_fraction", "audio_seconds"}`` (the audio the frames cover, as ``collate`` reports it), and with
    labels ``labels`` and ``label_lengths`` as ``collate`` pads them."""
    features, frame_mask = collate_features([item["features"] for item in items])
    batch = {"ids": [item["id"] for item in items], "features": features, "frame_mask": frame_mask,
             "num_skipped": 0, "padding_fraction": 1.0 - frame_mask.sum().item() / frame_mask.numel(),
             "audio_seconds": sum(item["num_samples"] for item in items) / SAMPLE_RATE}
    if "labels" in items[0]:
        batch.update(pad_labels([item["labels"] for item in items]))
    return batch


class CachedFeatureDataset(Dataset):
    """The cache's counterpart of ``AudioDataset``: utterance ids -> ``{"id", "features" (C, n) fp32}``, a
    random window of ``crop_seconds`` per epoch cropped in frame space, drawn from ``(seed, epoch, index)`` as
    AudioDataset draws its crops; ``num_samples`` is the audio the frames cover. The training loop batches its
    items with :attr:`collate`.

    For fine-tuning (no crop), ``labels`` gives each id's label ids (items get ``labels``) and ``num_samples``
    each id's true length, which the batch sampler then sees: the batches are those of the AudioDataset."""

    collate = staticmethod(collate_cached)

    def __init__(self, cache: FeatureCache, ids: Sequence[str], crop_seconds: float | None = None, seed: int = 0,
                 labels: Mapping[str, torch.Tensor] | None = None, num_samples: Mapping[str, int] | None = None):
        missing = [i for i in ids if i not in cache]
        if missing:
            raise WavadaptError(f"{len(missing)} utterances are not in the feature cache (e.g. {missing[0]})")
        if crop_seconds is not None and num_samples is not None:
            raise WavadaptError("true lengths (num_samples) apply to whole utterances, not to crops")
        self.cache, self.ids, self.seed, self.epoch = cache, list(ids), seed, 0
        self.labels, self.true_samples = labels, num_samples
        field, self.hop = cache.index["receptive_field"], cache.index["hop"]
        self.field = field
        self.crop = None
        if crop_seconds is not None:
            samples = int(crop_seconds * SAMPLE_RATE)
            self.crop = max(0, (samples - field) // self.hop + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        utterance_id = self.ids[index]
        total = self.cache.num_frames(utterance_id)
        if self.crop is None or total <= self.crop:
            features = self.cache.features(utterance_id)
        else:
            start = crop_start(total, self.crop, np.random.default_rng((self.seed, self.epoch, index)))
            features = self.cache.features(utterance_id, start, self.crop)
        item = {"id": utterance_id, "features": features, "num_samples": self._samples(utterance_id, features.shape[1])}
        if self.labels is not None:
            item["labels"] = self.labels[utterance_id]
        return item

    def _samples(self, utterance_id: str, frames: int) -> int:
        if self.true_samples is not None:
            return self.true_samples[utterance_id]
        return (frames - 1) * self.hop + self.field

    def lengths(self) -> list[int]:
        """Per-utterance lengths in samples after cropping (the audio the frames cover, or the true lengths), for
        the batch sampler."""
        return [self._samples(i, min(self.cache.num_frames(i), self.crop or math.inf)) for i in self.ids]


def cached_dataset(model: PretrainingModel, utterances: Sequence[Utterance], cache_dir: Path, dtype: torch.dtype,
                   env: Distributed, **options) -> tuple[CachedFeatureDataset, dict]:
    """The CachedFeatureDataset (``options``: its keyword arguments) of ``utterances`` (rank 0 builds or reuses
    the cache in ``cache_dir``, the other ranks wait and open it) and what run.json records of the cache."""
    model.to(env.device)  # the CNN runs where training will
    if env.main:
        cache = build_feature_cache(model, utterances, cache_dir, dtype)
    if env.world_size > 1:
        dist.barrier()
    if not env.main:
        cache = FeatureCache.open(cache_dir, model)
    ids = [u.id for u in utterances if u.id in cache]
    if not ids:
        raise WavadaptError(f"no usable utterances: none of the {len(utterances)} could be decoded into {cache_dir}")
    info = {"path": str(cache_dir), "fingerprint": cache.fingerprint, "dtype": str(cache.dtype).removeprefix("torch."),
            "utterances": len(ids), "unreadable": len(utterances) - len(ids)}
    return CachedFeatureDataset(cache, ids, **options), info
