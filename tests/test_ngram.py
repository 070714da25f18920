"""Kneser-Ney ARPA estimation: hand-computed probabilities, normalisation, and KenLM (flashlight's) loading the file.

(Compared by hand with KenLM's own lmplz, built from the kenlm sdist: every n-gram, probability and backoff agreed
to 1e-4 for orders 1-5; lmplz is not installable from the registries, so that comparison is not in the suite.)
"""

import math
import random
from pathlib import Path

import pytest

from wavadapt.decoding.ngram import arpa_stats, build_arpa
from wavadapt.errors import WavadaptError

TINY = ["the cat sat", "the dog sat", "the cat ran", "a dog ran"]


def _random_text(sentences: int = 400, seed: int = 0) -> list[str]:
    """Zipf-like words in random sentences: enough repetition for the closed-form discounts up to 4-grams."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(300)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 9))) for _ in range(sentences)]


def _read_arpa(path: Path) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """log10 probabilities and backoffs of each n-gram."""
    probs, backoffs = {}, {}
    section = 0
    for line in path.read_text().splitlines():
        if line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        elif section and line and not line.startswith("\\"):
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == section
            probs[gram] = float(fields[0])
            backoffs[gram] = float(fields[2]) if len(fields) > 2 else 0.0
    return probs, backoffs


def _backoff_log10(probs, backoffs, context: tuple[str, ...], word: str) -> float:
    """log10 p(word | context) from the ARPA, as a backoff model."""
    if (*context, word) in probs:
        return probs[(*context, word)]
    return backoffs.get(context, 0.0) + _backoff_log10(probs, backoffs, context[1:], word)


def test_bigram_by_hand(tmp_path):
    probs, backoffs = _read_arpa(build_arpa(TINY, 2, tmp_path / "lm.arpa", discount_fallback=True))
    # Unigram adjusted counts = continuation counts (distinct words before): the 1 (<s>), a 1 (<s>), cat 1 (the),
    # sat 2 (cat, dog), dog 2 (the, a), ran 2 (cat, dog), </s> 2 (sat, ran); total 11. n3 = 0: fallback discounts.
    d1, d2 = 0.5, 1.0
    total = 11
    gamma = (d1 * 3 + d2 * 4) / total  # three words of count 1, four of count 2
    uniform = 1 / 8  # 6 words, </s>, <unk>
    p_sat = (2 - d2) / total + gamma * uniform
    p_the = (1 - d1) / total + gamma * uniform
    p_cat = p_the
    assert probs[("sat",)] == pytest.approx(math.log10(p_sat), abs=1e-6)
    assert probs[("the",)] == pytest.approx(math.log10(p_the), abs=1e-6)
    assert probs[("<unk>",)] == pytest.approx(math.log10(gamma * uniform), abs=1e-6)
    assert probs[("<s>",)] == -99
    # Bigram raw counts: <s> the 3, the cat 2, sat </s> 2, ran </s> 2, seven of 1; n1..n4 = 7, 3, 1, 0.
    y = 7 / (7 + 2 * 3)
    b1, b2, b3 = 1 - 2 * y * 3 / 7, 2 - 3 * y * 1 / 3, 3 - 4 * y * 0 / 1
    gamma_the = (b2 * 1 + b1 * 1) / 3  # the cat 2, the dog 1
    assert backoffs[("the",)] == pytest.approx(math.log10(gamma_the), abs=1e-6)
    assert probs[("the", "cat")] == pytest.approx(math.log10((2 - b2) / 3 + gamma_the * p_cat), abs=1e-6)
    gamma_bos = (b3 * 1 + b1 * 1) / 4  # <s> the 3, <s> a 1
    assert backoffs[("<s>",)] == pytest.approx(math.log10(gamma_bos), abs=1e-6)
    assert probs[("<s>", "the")] == pytest.approx(math.log10((3 - b3) / 4 + gamma_bos * p_the), abs=1e-6)
    # Unseen "a cat": a's weight (a dog 1) times p(cat).
    assert _backoff_log10(probs, backoffs, ("a",), "cat") == pytest.approx(math.log10(b1 / 1 * p_cat), abs=1e-6)


def test_trigram_by_hand(tmp_path):
    probs, backoffs = _read_arpa(build_arpa(TINY, 3, tmp_path / "lm.arpa", discount_fallback=True))
    # Unigrams as in the bigram model.
    p_sat = (2 - 1.0) / 11 + (0.5 * 3 + 1.0 * 4) / 11 / 8
    # Bigram adjusted counts: raw for <s> the 3, <s> a 1; continuation counts else: sat </s> 2, ran </s> 2 (cat and
    # dog before), the other six 1. n1..n4 = 8, 2, 1, 0.
    y = 8 / (8 + 2 * 2)
    b1 = 1 - 2 * y * 2 / 8
    gamma_cat = b1 * 2 / 2  # cat sat 1, cat ran 1
    p_sat_cat = (1 - b1) / 2 + gamma_cat * p_sat
    assert probs[("cat", "sat")] == pytest.approx(math.log10(p_sat_cat), abs=1e-6)
    assert backoffs[("cat",)] == pytest.approx(math.log10(gamma_cat), abs=1e-6)
    # Trigram raw counts: <s> the cat 2, ten of 1; n2 = 1, n3 = 0: fallback D1 = 0.5.
    gamma_the_cat = 0.5 * 2 / 2  # the cat sat 1, the cat ran 1
    assert backoffs[("the", "cat")] == pytest.approx(math.log10(gamma_the_cat), abs=1e-6)
    assert probs[("the", "cat", "sat")] == pytest.approx(math.log10((1 - 0.5) / 2 + gamma_the_cat * p_sat_cat),
                                                         abs=1e-6)
    assert arpa_stats(tmp_path / "lm.arpa") == {1: 9, 2: 11, 3: 11}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one(tmp_path, order):
    probs, backoffs = _read_arpa(build_arpa(_random_text(), order, tmp_path / "lm.arpa"))
    vocabulary = [g[0] for g in probs if len(g) == 1 and g != ("<s>",)]  # the words, </s>, <unk>
    contexts = [()] + [g for g in probs if len(g) < order and g[-1] != "</s>"]
    assert len(contexts) > 100 or order == 1
    for context in contexts:
        total = sum(10 ** _backoff_log10(probs, backoffs, context, w) for w in vocabulary)
        assert total == pytest.approx(1, abs=1e-5), context


def test_words_or_strings(tmp_path):
    built = build_arpa([s.split() for s in TINY], 2, tmp_path / "a.arpa", discount_fallback=True)
    assert built.read_text() == build_arpa(TINY + [""], 2, tmp_path / "b.arpa", discount_fallback=True).read_text()


@pytest.mark.parametrize("order", [2, 3])
def test_kenlm_scores_equal_the_arpa(tmp_path, order):
    from flashlight.lib.text.decoder import kenlm
    from flashlight.lib.text.dictionary import Dictionary

    text = _random_text()
    path = build_arpa(text, order, tmp_path / "lm.arpa")
    probs, backoffs = _read_arpa(path)
    words = Dictionary()
    for w in ("w0", "w1", "w3", "w7", "w29", "zebra", "<unk>"):  # zebra: not in the LM, so <unk>
        words.add_entry(w)
    lm = kenlm.KenLM(str(path), words)
    for sentence in [text[0], text[1], "w7 w7 w0 w29", "zebra w1 w3", "w0"]:
        sentence = [w for w in sentence.split() if words.contains(w)]
        state, score, expected = lm.start(False), 0.0, 0.0
        history = ("<s>",)
        for w in sentence:
            state, s = lm.score(state, words.get_index(w))
            score += s
            token = w if (w,) in probs else "<unk>"
            expected += _backoff_log10(probs, backoffs, history[-(order - 1):], token)
            history += (token,)
        _, s = lm.finish(state)
        score += s
        expected += _backoff_log10(probs, backoffs, history[-(order - 1):], "</s>")
        assert score == pytest.approx(expected, abs=1e-4), sentence  # KenLM scores in log10


@pytest.mark.parametrize(("text", "order", "message"), [
    (TINY, 0, "at least 1"),
    ([], 2, "no words"),
    (["", "  "], 2, "no words"),
    (TINY, 6, "order 5 or less"),
    (TINY, 2, "order-2 LM: the 1-grams' counts of counts"),
    (["the <s> cat"], 2, "contains <s>"),
])
def test_refusals(tmp_path, text, order, message):
    with pytest.raises(WavadaptError, match=message):
        build_arpa(text, order, tmp_path / "lm.arpa")
    assert not (tmp_path / "lm.arpa").exists()


def test_the_lm_command_normalises_the_text_it_counts(tmp_path):
    from typer.testing import CliRunner

    from wavadapt.cli import app

    (tmp_path / "train.txt").write_text("The quick, brown fox!\nThe lazy dog.\nA fox and a dog...\nthe dog\n")
    out = tmp_path / "lm.arpa"
    result = CliRunner().invoke(app, ["lm", str(tmp_path / "train.txt"), "--language", "en", "--order", "2",
                                      "--out", str(out), "--discount-fallback"])
    assert result.exit_code == 0, result.output
    probs, _ = _read_arpa(out)
    unigrams = {gram[0] for gram in probs if len(gram) == 1}
    assert unigrams == {"<s>", "</s>", "<unk>", "the", "quick", "brown", "fox", "lazy", "dog", "a", "and"}
    assert arpa_stats(out) == {1: len(unigrams), 2: len([g for g in probs if len(g) == 2])}


def test_the_lm_command_reads_a_corpus_splits_transcripts(synth_corpus, tmp_path):
    """--corpus DIR --split train counts the same sentences as a text file of that split's transcripts."""
    from typer.testing import CliRunner

    from wavadapt.cli import app
    from wavadapt.data.corpora import open_corpus

    text = tmp_path / "train.txt"
    text.write_text("".join(u.text + "\n" for u in open_corpus(synth_corpus, "train", "en")))
    runner = CliRunner()
    for name, source in (("text", [str(text)]), ("corpus", ["--corpus", str(synth_corpus), "--split", "train"])):
        result = runner.invoke(app, ["lm", *source, "--language", "en", "--order", "2", "--discount-fallback",
                                     "--out", str(tmp_path / f"{name}.arpa")])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "text.arpa").read_text() == (tmp_path / "corpus.arpa").read_text()
    nothing = runner.invoke(app, ["lm", "--language", "en"])
    assert nothing.exit_code != 0 and "no text" in str(nothing.exception)
