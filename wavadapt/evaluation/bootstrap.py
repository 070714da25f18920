"""How sure an error rate is: 95% bootstrap intervals over the test utterances (Bisani & Ney, ICASSP 2004).

A corpus error rate is edits over reference words (characters), so a resample of the utterances, drawn with
replacement, gives another such rate; the 2.5th and 97.5th percentiles of many resamples bound the rate. Two
systems scored on the same utterances are compared by resampling the utterances once for both (a paired
bootstrap): the interval of the difference says whether it is more than the test set's noise.
"""

import jiwer
import numpy as np

RESAMPLES = 1000
SEED = 0


def edit_counts(references: list[str], hypotheses: list[str]) -> list[list[int]]:
    """Per utterance ``[word edits, reference words, character edits, reference characters]``, as jiwer counts
    them (its corpus WER is the sum of the edits over the sum of the words)."""
    counts = []
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        words = jiwer.process_words(reference, hypothesis)
        chars = jiwer.process_characters(reference, hypothesis)
        counts.append([words.substitutions + words.deletions + words.insertions,
                       words.hits + words.substitutions + words.deletions,
                       chars.substitutions + chars.deletions + chars.insertions,
                       chars.hits + chars.substitutions + chars.deletions])
    return counts


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) utterance indices drawn with replacement, the same for every system of one test set."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


COLUMNS = {"wer": (0, 1), "cer": (2, 3)}
"""Where a metric's edits and reference lengths are in a row of :func:`edit_counts`."""


def rate(counts: list[list[int]], metric: str) -> float:
    """The corpus ``metric`` of :func:`edit_counts`: all edits over all reference words (characters)."""
    errors, total = COLUMNS[metric]
    return sum(c[errors] for c in counts) / max(sum(c[total] for c in counts), 1)


def _rates(counts: np.ndarray, picks: np.ndarray, metric: str) -> np.ndarray:
    errors, total = COLUMNS[metric]
    return counts[picks, errors].sum(axis=1) / np.maximum(counts[picks, total].sum(axis=1), 1)


def interval(counts: list[list[int]], metric: str, resamples: int = RESAMPLES, seed: int = SEED
             ) -> tuple[float, float]:
    """The 95% bootstrap interval of the corpus ``metric`` (``wer`` or ``cer``) of :func:`edit_counts`."""
    table = np.asarray(counts, dtype=np.int64)
    rates = _rates(table, _resamples(len(table), resamples, seed), metric)
    return float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


def difference_interval(a: list[list[int]], b: list[list[int]], metric: str, resamples: int = RESAMPLES,
                        seed: int = SEED) -> tuple[float, float]:
    """The 95% paired bootstrap interval of ``metric``(a) - ``metric``(b), two systems' :func:`edit_counts` of the
    same utterances in the same order: an interval that holds 0 is a difference within the test set's noise."""
    left, right = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if left.shape != right.shape or not np.array_equal(left[:, [1, 3]], right[:, [1, 3]]):
        raise ValueError("a paired bootstrap needs both systems' counts of the same utterances")
    picks = _resamples(len(left), resamples, seed)
    differences = _rates(left, picks, metric) - _rates(right, picks, metric)
    return float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))


def paired(a: dict[str, list[int]], b: dict[str, list[int]], metric: str
           ) -> tuple[float, tuple[float, float]] | None:
    """``metric`` of ``a`` minus that of ``b`` (counts by utterance id) over the utterances both scored, with the
    difference's paired interval (:func:`difference_interval`); None when they share none."""
    shared = [i for i in a if i in b]
    if not shared:
        return None
    left, right = [a[i] for i in shared], [b[i] for i in shared]
    return rate(left, metric) - rate(right, metric), difference_interval(left, right, metric)
