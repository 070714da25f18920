"""Word n-gram language models for the beam search: interpolated modified Kneser-Ney as KenLM's ``lmplz`` estimates
it (Chen & Goodman 1998; Heafield et al. 2013), written as an ARPA file.

``lmplz`` needs a C++ build with Boost; this is its estimator for a text that fits in memory (training transcripts:
about 1.4 GB and 20 s per million words at order 4), with its default conventions (no pruning, interpolated unigrams):

- each sentence is ``<s> w1 .. wn </s>``; n-grams never cross sentences;
- adjusted counts ``a``: the highest order and the n-grams that begin with ``<s>`` (which nothing precedes) keep
  their counts; other n-grams get their continuation count, the number of different words seen before them;
- per order, discounts ``D1, D2, D3+`` from the counts of adjusted counts ``n1..n4``:
  ``Y = n1 / (n1 + 2 n2)``, ``Dk = k - (k+1) Y n(k+1) / nk``;
- ``p(w | h) = (a(h w) - D(a(h w))) / sum_v a(h v) + gamma(h) p(w | h')`` where ``h'`` drops h's first word and
  ``gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_v a(h v)`` (Nk(h): the words after h with adjusted count k);
- the unigrams interpolate with the uniform distribution over the words, ``</s>`` and ``<unk>`` (not ``<s>``), so
  ``<unk>`` gets that uniform share alone;
- each context's ARPA backoff is its ``gamma``: backing off from ``h`` to ``h'`` is then the interpolated model.

Differences from ``lmplz``: ``<s>`` gets log10 probability -99 (SRILM's convention; ``lmplz`` writes 0; both mean
"only a context", no decoder asks for it); empty sentences are skipped (``lmplz`` counts ``<s> </s>``); the
arithmetic is in double precision (``lmplz``'s floats differ by ~1e-7).
"""

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from wavadapt.errors import WavadaptError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
"""D1, D2, D3+ where the closed form fails: lmplz's ``--discount_fallback`` defaults."""

Gram = tuple[str, ...]


def build_arpa(sentences: Iterable[str | Sequence[str]], order: int, path: Path,
               discount_fallback: bool = False) -> Path:
    """Estimate an ``order``-gram model of ``sentences`` (normalised text, a string or a list of words each) and write
    it to ``path`` as ARPA. ``discount_fallback``: use ``FALLBACK_DISCOUNTS`` for an order whose counts of counts
    give no valid discounts (tiny or duplicated text) instead of refusing."""
    if order < 1:
        raise WavadaptError(f"The n-gram order must be at least 1, not {order}.")
    counts = _adjusted_counts(sentences, order)
    uniform = 1 / (len(counts[0]) - 1)  # all unigrams but <s>
    probs: list[dict[Gram, float]] = []
    gammas: list[dict[Gram, float]] = []  # gammas[n]: the interpolation weight of each context of n words
    for n, grams in enumerate(counts):
        d = _discounts(grams, n + 1, order, discount_fallback)
        totals: dict[Gram, float] = defaultdict(float)
        discounted: dict[Gram, float] = defaultdict(float)
        for gram, a in grams.items():
            totals[gram[:-1]] += a
            discounted[gram[:-1]] += d[min(a, 3)]
        gamma = {h: discounted[h] / totals[h] for h in totals}
        probs.append({gram: (a - d[min(a, 3)]) / totals[gram[:-1]]
                      + gamma[gram[:-1]] * (probs[-1][gram[1:]] if n else uniform) for gram, a in grams.items()})
        gammas.append(gamma)
    _write_arpa(path, probs, gammas)
    return path


def corpus_sentences(corpus: Path, split: str, language: str) -> list[str]:
    """The normalised transcripts of a corpus split (``open_corpus``), the text an LM for that corpus learns from."""
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import normalize_text

    return [normalize_text(u.text, language) for u in open_corpus(corpus, split, language) if u.text]


def arpa_stats(path: Path) -> dict[int, int]:
    """The number of n-grams of each order, from an ARPA file's ``\\data\\`` header."""
    stats = {}
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("ngram "):
                n, count = line[6:].split("=")
                stats[int(n)] = int(count)
            elif line.startswith("\\") and line.strip() != "\\data\\":
                break
    if not stats:
        raise WavadaptError(f"{path}: not an ARPA language model (no \\data\\ counts).")
    return stats


def _adjusted_counts(sentences: Iterable[str | Sequence[str]], order: int) -> list[dict[Gram, int]]:
    """counts[n - 1]: the adjusted count of each n-gram seen; the unigrams begin with <unk>, <s>, </s> as lmplz's."""
    top: Counter[Gram] = Counter()
    starts: list[Counter[Gram]] = [Counter() for _ in range(order)]  # lower-order n-grams that begin with <s>
    longest = 0
    for sentence in sentences:
        words = (sentence if isinstance(sentence, str) else " ".join(sentence)).split()
        if not words:
            continue
        if marker := next((w for w in words if w in (BOS, EOS, UNK)), None):
            raise WavadaptError(f"The LM text contains {marker}, which the LM reserves for itself: {' '.join(words)}")
        longest = max(longest, len(words))
        tokens = (BOS, *words, EOS)
        start = 1 if order == 1 else 0  # a unigram model does not count <s>
        top.update(tokens[i:i + order] for i in range(start, len(tokens) - order + 1))
        for n in range(2, min(order - 1, len(tokens)) + 1):
            starts[n - 1][tokens[:n]] += 1
    if not longest:
        raise WavadaptError("The LM text has no words.")
    if order > longest + 2:
        raise WavadaptError(f"An order-{order} LM needs a sentence of at least {order - 2} words (with <s> and </s> "
                            f"that make {order} tokens); the longest has {longest}: use order {longest + 2} or less.")
    counts = [dict(top)]
    for n in range(order - 1, 0, -1):
        lower = starts[n - 1]
        for gram in counts[0]:
            lower[gram[1:]] += 1
        counts.insert(0, dict(lower))
    counts[0] = {(UNK,): 0, (BOS,): 0, (EOS,): counts[0][(EOS,)]} | counts[0]
    return counts


def _discounts(grams: dict[Gram, int], n: int, order: int, fallback: bool) -> tuple[float, float, float, float]:
    """(0, D1, D2, D3+) of the ``n``-grams, indexed by adjusted count (capped at 3)."""
    nk = Counter(a for a in grams.values() if 1 <= a <= 4)
    if nk[1] and nk[2] and nk[3]:
        y = nk[1] / (nk[1] + 2 * nk[2])
        d = [k - (k + 1) * y * nk[k + 1] / nk[k] for k in (1, 2, 3)]
        if all(0 <= d[k - 1] <= k for k in (1, 2, 3)):
            return 0.0, *d
    if fallback:
        return 0.0, *FALLBACK_DISCOUNTS
    raise WavadaptError(f"Too little (or artificial) text for an order-{order} LM: the {n}-grams' counts of counts "
                        f"n1..n4 = {[nk[k] for k in (1, 2, 3, 4)]} give no Kneser-Ney discounts; use a lower order, "
                        "more text, or the fixed discounts of `wavadapt lm --discount-fallback`.")


def _write_arpa(path: Path, probs: list[dict[Gram, float]], gammas: list[dict[Gram, float]]) -> None:
    order = len(probs)
    with Path(path).open("w", encoding="utf-8") as out:
        out.write("\\data\\\n" + "".join(f"ngram {n}={len(p)}\n" for n, p in enumerate(probs, 1)) + "\n")
        for n, grams in enumerate(probs, 1):
            out.write(f"\\{n}-grams:\n")
            for gram, p in grams.items():
                line = f"{-99 if gram == (BOS,) else min(0.0, math.log10(p)):.8g}\t{' '.join(gram)}"
                # A context's backoff is its interpolation weight; other n-grams (ending in </s>) back off by 1.
                out.write(line + (f"\t{math.log10(gammas[n].get(gram, 1.0)):.8g}\n" if n < order else "\n"))
            out.write("\n")
        out.write("\\end\\\n")
