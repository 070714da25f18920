"""Span masking as fairseq's compute_mask_indices: coverage, spans, padding, determinism."""

import numpy as np
import pytest

from wavadapt.objectives.masking import compute_mask_indices, expected_masked_fraction


def runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive masked frames."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def test_masked_fraction_matches_the_expected_coverage_with_overlaps():
    rng = np.random.default_rng(0)
    frames = 400
    fractions = [compute_mask_indices((1, frames), rng=rng).mean() for _ in range(300)]
    expected = expected_masked_fraction(frames)
    assert 0.45 < expected < 0.53  # the paper's "about 49%" (0.65 * 10 spans, minus overlaps)
    assert np.mean(fractions) == pytest.approx(expected, abs=0.01)


def test_spans_have_the_mask_length_stay_inside_the_utterance_and_are_at_least_two():
    rng = np.random.default_rng(1)
    lengths = [300, 120, 25, 21]
    for _ in range(50):
        mask = compute_mask_indices((4, 300), lengths, require_same_masks=False, rng=rng)
        for row, length in zip(mask, lengths, strict=True):
            assert not row[length:].any()  # padding never masked
            spans = runs(row)
            # Overlapping spans merge, so every run is a whole number of spans or more: never shorter than 10.
            assert all(r >= 10 for r in spans)
            assert row.sum() >= 11  # at least two distinct spans of 10 (min_masks = 2)
            assert row[:length].sum() < length  # some frames stay visible


def test_same_generator_same_mask_and_padding_never_masked_with_same_counts():
    lengths = [250, 180, 90]
    a = compute_mask_indices((3, 250), lengths, rng=np.random.default_rng(7))
    b = compute_mask_indices((3, 250), lengths, rng=np.random.default_rng(7))
    c = compute_mask_indices((3, 250), lengths, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # fairseq's require_same_masks: every utterance keeps the batch's smallest count.
    assert len(set(a.sum(1).tolist())) == 1
    assert all(not row[n:].any() for row, n in zip(a, lengths, strict=True))


def test_global_numpy_rng_is_used_without_a_generator():
    np.random.seed(3)
    a = compute_mask_indices((2, 100))
    np.random.seed(3)
    assert np.array_equal(a, compute_mask_indices((2, 100)))
