"""Bootstrap intervals of error rates: per-utterance counts sum to jiwer's corpus rates, the interval holds the
rate, a system against itself differs by exactly 0, and a paired difference tells noise from a real change."""

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wavadapt.evaluation.bootstrap import difference_interval, edit_counts, interval

REFERENCES = ["the quick brown fox", "jumps over the lazy dog", "a b c d e", "hello world", "one two three four"]
HYPOTHESES = ["the quick brown box", "jumps over lazy dog", "a b c d e", "hallo world there", "one too three"]


def test_counts_sum_to_jiwers_corpus_rates():
    counts = edit_counts(REFERENCES, HYPOTHESES)
    assert sum(c[0] for c in counts) / sum(c[1] for c in counts) == pytest.approx(jiwer.wer(REFERENCES, HYPOTHESES))
    assert sum(c[2] for c in counts) / sum(c[3] for c in counts) == pytest.approx(jiwer.cer(REFERENCES, HYPOTHESES))
    assert counts[2] == [0, 5, 0, 9]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 12)), min_size=2, max_size=40))
def test_the_interval_is_ordered_and_within_the_utterances_extremes(rows):
    counts = [[errors, words, errors, words] for errors, words in rows]
    low, high = interval(counts, "wer")
    per_utterance = [e / w for e, w in rows]
    assert min(per_utterance) - 1e-12 <= low <= high <= max(per_utterance) + 1e-12


def test_a_paired_difference_tells_noise_from_a_change():
    counts = edit_counts(REFERENCES * 20, HYPOTHESES * 20)
    assert difference_interval(counts, counts, "wer") == (0.0, 0.0)
    worse = [[c[0] + 2, c[1], c[2] + 5, c[3]] for c in counts]  # every utterance gets worse
    low, high = difference_interval(worse, counts, "cer")
    assert 0 < low <= high
    one_more = [list(c) for c in counts]
    one_more[0][0] += 1  # one word more wrong in one of 100 utterances: noise
    low, high = difference_interval(one_more, counts, "wer")
    assert low <= 0 <= high
    with pytest.raises(ValueError, match="same utterances"):
        difference_interval(counts[:-1], counts[1:], "wer")


def test_the_interval_holds_the_corpus_rate():
    counts = edit_counts(REFERENCES * 10, HYPOTHESES * 10)
    rate = jiwer.wer(REFERENCES, HYPOTHESES)
    low, high = interval(counts, "wer")
    assert low < rate < high


def test_score_gives_each_rate_its_interval():
    from wavadapt.evaluation.corpus import score

    result = score(REFERENCES * 10, HYPOTHESES * 10)
    assert result.wer_interval[0] < result.wer < result.wer_interval[1]
    assert result.cer_interval[0] < result.cer < result.cer_interval[1]
