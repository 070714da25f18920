"""Span masking of wav2vec 2.0 pre-training, as fairseq's ``compute_mask_indices`` (``data/data_utils.py``).

Per utterance of ``sz`` real frames (padding is never masked)::

    num_mask = max(min_masks, int(mask_prob * sz / mask_length + u)),  u ~ U[0, 1)   # probabilistic rounding
    starts   = num_mask distinct draws from range(sz - mask_length)                  # "static" spans, may overlap
    masked   = union of [start, start + mask_length)

With mask_prob 0.65 and mask_length 10 the overlaps leave about 49% of the frames masked (wav2vec 2.0,
Sec. 4.2 and App. A). fairseq then (``require_same_masks``) keeps the same number of masked frames in
every utterance of the batch, the fewest any of them has, by dropping random masked frames: its
negative sampling reshapes the masked frames to (B, M, C).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compute_mask_indices(
    shape: tuple[int, int],
    lengths: Sequence[int] | np.ndarray | None = None,
    mask_prob: float = 0.65,
    mask_length: int = 10,
    min_masks: int = 2,
    require_same_masks: bool = True,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A (B, T) bool mask of the frames to mask.

    ``lengths`` are the real frames per utterance (default: all T); frames at or beyond them are never
    masked. ``rng`` makes the draw deterministic; None draws a generator from numpy's global RNG (which
    the training loop seeds per rank and checkpoints, so resumed runs repeat their masks).
    """
    batch, frames = shape
    lengths = np.full(batch, frames) if lengths is None else np.asarray(lengths, dtype=np.int64)
    if rng is None:
        rng = np.random.default_rng(np.random.randint(2**31))
    chosen = []
    for sz in lengths.tolist():
        num_mask = max(min_masks, int(mask_prob * sz / mask_length + rng.random()))
        reserved = mask_length  # starts leave room for a whole span ...
        if sz - reserved <= num_mask:  # ... unless that leaves too few starts (fairseq's fallback)
            reserved = sz - num_mask - 1
        starts = rng.choice(sz - reserved, num_mask, replace=False)
        idx = (starts[:, None] + np.arange(mask_length)[None, :]).reshape(-1)  # (num_mask * mask_length,)
        chosen.append(np.unique(idx[idx < sz]))
    mask = np.zeros(shape, dtype=bool)
    target = min(len(c) for c in chosen) if chosen else 0
    for i, idx in enumerate(chosen):
        if require_same_masks and len(idx) > target:
            idx = rng.choice(idx, target, replace=False)
        mask[i, idx] = True
    return mask


def expected_masked_fraction(num_frames: int, mask_prob: float = 0.65, mask_length: int = 10,
                             min_masks: int = 2) -> float:
    """The expected fraction of an utterance's ``num_frames`` that :func:`compute_mask_indices` masks
    (overlaps counted once), exactly: frame t stays unmasked iff none of the spans covering it is drawn.

    ``num_frames`` must leave room for the spans (more than ``mask_length + num_mask`` frames).
    """
    x = mask_prob * num_frames / mask_length
    starts = num_frames - mask_length  # the span starts fairseq draws from
    t = np.arange(num_frames)
    covering = np.minimum(t, starts - 1) - np.maximum(0, t - mask_length + 1) + 1  # starts whose span covers t
    covering = np.maximum(covering, 0)
    expected = 0.0
    for n, weight in ((int(x), 1 - (x - int(x))), (int(x) + 1, x - int(x))):
        n = max(min_masks, n)
        # P(no covering start among n distinct draws of `starts`) = C(starts - k, n) / C(starts, n)
        j = np.arange(n)[None, :]
        free = np.prod(np.clip((starts - covering[:, None] - j) / (starts - j), 0, None), axis=1)
        expected += weight * float(np.mean(1 - free))
    return expected
