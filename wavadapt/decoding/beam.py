"""CTC decoding to words with frame spans: greedy, or flashlight-text's beam search with an optional KenLM and lexicon.

Both decoders return, per utterance, ``[(word, first frame, last frame + 1), ...]`` as ``Vocabulary.ctc_words``
does, so callers make timed words the same way for either (frames of ``prod(conv_stride) / 16000`` s).

Beam search runs on the log-softmax of the logits. Without a lexicon it spells characters, ``|`` being the
silence between words, and scores words with the LM when ``|`` or the end completes them (:mod:`word_lm`). With
a lexicon it emits only the lexicon's words (and, when ``unk_score`` is finite, unknown words, spelt out), and the
LM scores each word as the trie completes it; every spelling ends with ``|``, as fairseq's and torchaudio's lexicons
do, so a word ends only where the speech has a break (else a word bonus or the LM splits words freely: 40% WER
against 7% on the synthetic benchmark), and one ``|`` frame appended to the emissions ends the last word.

Case: a vocabulary of capitals (LibriSpeech's) decodes to lowercase, as ``Vocabulary`` does. Lexicon spellings are
read in the vocabulary's case whatever the file's; words go to the LM in the LM's case: uppercase for a vocabulary
of capitals (LibriSpeech's 4-gram.arpa, fairseq's lexicons) unless the ARPA's words are lowercase (an LM built from
normalised text), and as they are otherwise.

flashlight's ``decode`` holds the GIL (no ``gil_scoped_release`` in its bindings), so threads do not decode in
parallel; :func:`decode_in_processes` spreads a large evaluation over processes, each building its own decoder.
"""

import contextlib
import functools
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flashlight.lib.text.decoder import (
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    LexiconFreeDecoder,
    LexiconFreeDecoderOptions,
    SmearingMode,
    Trie,
    ZeroLM,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from wavadapt.data.text import SPECIAL_TOKENS, Vocabulary
from wavadapt.decoding.files import LanguageModelError, arpa_unigrams, read_lexicon
from wavadapt.decoding.word_lm import PrefixLM, WordScoringLM
from wavadapt.errors import WavadaptError
from wavadapt.model.ctc import CTCOutput

DecodedWords = list[tuple[str, int, int]]
"""``(word, first frame, last frame + 1)`` per word, in order."""

UNK_WORD = "<unk>"  # KenLM's unknown word
_IMPOSSIBLE = -1e10
"""A log-probability no hypothesis takes (flashlight's scores are floats: no -inf arithmetic)."""
LEXICON_FREE_UNK_SCORE = -10.0
"""pyctcdecode's ``unk_score_offset``: an unknown word must cost more than a word break (see :mod:`word_lm`)."""


@dataclass(frozen=True)  # hashable: decoders are kept per config (DecoderPool)
class DecoderConfig:
    """How to turn CTC logits into words. The defaults are torchaudio's ``ctc_decoder``'s except ``beam_threshold``
    (25, fairseq's: hypotheses 25 log-units behind the best are pruned; 50 decoded no better on our checks and is
    slower)."""

    kind: str = "greedy"
    """``greedy`` (best path) or ``beam``."""
    beam_size: int = 50
    """Hypotheses kept after each frame."""
    beam_size_token: int | None = None
    """Tokens tried per frame, the most likely first; None tries all."""
    beam_threshold: float = 25.0
    lm: Path | None = None
    """KenLM word n-gram model, ARPA or binary (binary only with a lexicon: its words are not listed otherwise)."""
    lm_weight: float = 1.0
    word_score: float = 2.0
    """The LM's weight (on its log10 probabilities, against the acoustic log-probabilities) and a bonus added per
    word (negative discourages splitting words). The defaults are the best of `benchmarks/beam_defaults.py`'s sweep
    (weights 0.5, 1, 2 x scores -1..2) on the demo's real Dutch dev split, over its full and adapter models: 93.6%
    WER against 98.0% at weight 2 and score 0, where the LM glued words together."""
    lexicon: Path | None = None
    """Restrict words to this lexicon (see :func:`files.read_lexicon`)."""
    unk_score: float | None = None
    """Added per word outside the lexicon (lexicon decoding; -inf emits none) or the LM's vocabulary (lexicon-free,
    where it is paid as soon as the letters leave every LM word's prefix). Default: -inf with a lexicon,
    ``LEXICON_FREE_UNK_SCORE`` without."""
    sil_score: float = 0.0
    """Added each time ``|`` (silence) is emitted."""
    log_add: bool = False
    """Merge equal hypotheses by log-sum-exp rather than max."""

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "beam"):
            raise WavadaptError(f"decoder kind {self.kind!r}: choose greedy or beam")
        if self.beam_size < 1 or (self.beam_size_token is not None and self.beam_size_token < 1):
            raise WavadaptError("the beam size (hypotheses kept, tokens tried per frame) must be at least 1")
        if self.kind == "greedy" and (self.lm or self.lexicon):
            raise WavadaptError("a language model or lexicon needs the beam search (--decoder beam), not greedy")
        for name in ("lm", "lexicon"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

    @property
    def unknown_word_score(self) -> float:
        """``unk_score``, or its default for the decoder's kind (left unresolved in the field, so ``replace`` that
        adds a lexicon gets the lexicon's default)."""
        if self.unk_score is not None:
            return self.unk_score
        return -math.inf if self.lexicon is not None else LEXICON_FREE_UNK_SCORE

    def describe(self) -> str:
        """One line for reports: ``greedy``, or the beam with its LM, weights and lexicon."""
        if self.kind == "greedy":
            return "greedy"
        lm = f" + {self.lm.name} (weight {self.lm_weight:g}, word score {self.word_score:g})" if self.lm else ""
        return f"beam {self.beam_size}{lm}" + (f", lexicon {self.lexicon.name}" if self.lexicon else "")


def log_probs(output: CTCOutput, vocab: Vocabulary) -> list[np.ndarray]:
    """Per utterance, the (frames, vocabulary) float32 log-probabilities the beam search reads (a row of a mixed
    batch is cut to its own vocabulary)."""
    scores = output.logits[..., : len(vocab)].detach().float().log_softmax(-1).cpu().numpy()
    return [np.ascontiguousarray(scores[i, : int(n)]) for i, n in enumerate(output.lengths)]


class GreedyDecoder:
    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab

    def decode(self, output: CTCOutput) -> list[DecodedWords]:
        best = output.logits[..., : len(self.vocab)].argmax(-1).cpu()
        return [self.vocab.ctc_words(best[i, : int(n)].tolist()) for i, n in enumerate(output.lengths)]

    def decode_emissions(self, emissions: np.ndarray) -> DecodedWords:
        return self.vocab.ctc_words(emissions.argmax(-1).tolist())


class BeamSearchDecoder:
    """flashlight-text's CTC beam search over ``vocab``'s tokens (see the module's docstring)."""

    def __init__(self, config: DecoderConfig, vocab: Vocabulary):
        self.config, self.vocab = config, vocab
        self._blank, self._sil = vocab.blank_id, vocab.word_delimiter_id
        lm_words = _unigrams(config.lm, _stamp(config.lm)) if config.lm else None
        lm_case = _lm_case(vocab, lm_words)
        # The output spelling of each token: lowercase for capitals, nothing for the blank and special tokens.
        specials = {*SPECIAL_TOKENS, vocab.blank, vocab.unk}
        self._spelling = ["" if t in specials else t.lower() if vocab._capitals else t for t in vocab.tokens]
        if config.lexicon is not None:
            self._decoder = self._lexicon_decoder(lm_case)
        else:
            self._decoder = self._lexicon_free_decoder(lm_words, lm_case)

    def _lexicon_decoder(self, lm_case: Callable[[str], str]) -> LexiconDecoder:
        config, vocab = self.config, self.vocab
        lexicon: dict[str, list[list[str]]] = {}
        for word, spellings in read_lexicon(config.lexicon, vocab).items():
            lexicon.setdefault(lm_case(word), []).extend(spellings)
        if config.lm:
            self._lm, self._words = _kenlm(config.lm, _stamp(config.lm), (*lexicon, UNK_WORD))
        else:
            self._lm, self._words = ZeroLM(), _dictionary((*lexicon, UNK_WORD))
        # Each word's unigram score sits in the trie so that partial words are ranked by their best completion.
        start = self._lm.start(False)
        trie = Trie(len(vocab), self._sil)
        for word, spellings in lexicon.items():
            index = self._words.get_index(word)
            _, score = self._lm.score(start, index)
            for spelling in spellings:  # ended by ``|``, as fairseq's and torchaudio's lexicons: words need a break
                trie.insert([vocab._ids[t] for t in spelling] + [self._sil], index, score)
        trie.smear(SmearingMode.MAX)
        self._trie = trie  # the decoder keeps a raw pointer into it
        self._unk_word = self._words.get_index(UNK_WORD)
        options = LexiconDecoderOptions(
            beam_size=config.beam_size, beam_size_token=config.beam_size_token or len(vocab),
            beam_threshold=config.beam_threshold, lm_weight=config.lm_weight, word_score=config.word_score,
            unk_score=config.unknown_word_score, sil_score=config.sil_score, log_add=config.log_add,
            criterion_type=CriterionType.CTC)
        return LexiconDecoder(options, trie, self._lm, self._sil, self._blank, self._unk_word, [], False)

    def _lexicon_free_decoder(self, lm_words: list[str] | None, lm_case: Callable[[str], str]) -> LexiconFreeDecoder:
        config, vocab = self.config, self.vocab
        self._unk_word = -1
        if config.lm is None:
            self._lm = PrefixLM()
        elif lm_words is None:
            raise LanguageModelError(f"{config.lm}: a KenLM binary does not list its words, which lexicon-free "
                                     f"decoding needs: give its ARPA file, or a lexicon")
        else:
            kenlm, words = _kenlm(config.lm, _stamp(config.lm), tuple(dict.fromkeys([*lm_words, UNK_WORD])))
            word_ids = {w: words.get_index(w) for w in lm_words}
            letters = [lm_case(s) for s in self._spelling]
            # flashlight weighs what the LM returns by lm_weight; these two are meant unweighted.
            bonus, penalty = ((config.word_score / config.lm_weight, config.unknown_word_score / config.lm_weight)
                              if config.lm_weight else (0.0, 0.0))
            self._lm = WordScoringLM(kenlm, word_ids, words.get_index(UNK_WORD), letters,
                                     self._sil, bonus, penalty)
        options = LexiconFreeDecoderOptions(
            beam_size=config.beam_size, beam_size_token=config.beam_size_token or len(vocab),
            beam_threshold=config.beam_threshold, lm_weight=config.lm_weight, sil_score=config.sil_score,
            log_add=config.log_add, criterion_type=CriterionType.CTC)
        return LexiconFreeDecoder(options, self._lm, self._sil, self._blank, [])

    def decode(self, output: CTCOutput) -> list[DecodedWords]:
        return [self.decode_emissions(e) for e in log_probs(output, self.vocab)]

    def decode_emissions(self, emissions: np.ndarray) -> DecodedWords:
        """The best hypothesis for one utterance's (frames, vocabulary) float32 C-contiguous log-probabilities."""
        frames, size = emissions.shape
        if size != len(self.vocab) or emissions.dtype != np.float32 or not emissions.flags.c_contiguous:
            raise WavadaptError(f"emissions must be C-contiguous float32 (frames, {len(self.vocab)}), "
                                f"got {emissions.dtype} {emissions.shape}")
        if frames == 0:
            return []
        if self.config.lexicon is not None:  # one more frame, all ``|``: the last word's spelling can end
            end = np.full((1, size), _IMPOSSIBLE, np.float32)
            end[0, self._sil] = 0.0
            emissions = np.ascontiguousarray(np.concatenate([emissions, end]))
        steps = len(emissions)
        best = self._decoder.decode(emissions.ctypes.data, steps, size)[0]
        # tokens and words hold one entry per frame between the initial and final silence flashlight adds.
        return self._words_of(best.tokens[1 : steps + 1], best.words[1 : steps + 1])

    def _words_of(self, tokens: Sequence[int], labels: Sequence[int]) -> DecodedWords:
        """The words of a decoded path: letters from their first frame to their last, ended by ``|`` (lexicon-free)
        or by the frame the lexicon decoder names the word at, the ``|`` its spelling ends with (letters it leaves
        unnamed are no word)."""
        lexicon = self.config.lexicon is not None
        words, letters, start, end, previous = [], [], 0, 0, self._blank
        for frame, (token, label) in enumerate(zip(tokens, labels, strict=True)):
            if token == self._sil:
                if letters and not lexicon:
                    words.append(("".join(letters), start, end))
                    letters = []
            elif self._spelling[token]:  # a letter (the blank and special tokens spell nothing)
                if token != previous:  # flashlight's path repeats a token over the frames it lasts
                    if not letters:
                        start = frame
                    letters.append(self._spelling[token])
                end = frame + 1
            if label >= 0:
                words.append((self._word_text(label, letters), start, end))
                letters = []
            previous = token
        if letters and not lexicon:
            words.append(("".join(letters), start, end))
        return [w for w in words if w[0]]

    def _word_text(self, label: int, letters: list[str]) -> str:
        if label == self._unk_word:
            return "".join(letters)
        word = self._words.get_entry(label)
        return word.lower() if self.vocab._capitals else word


def make_decoder(config: DecoderConfig, vocab: Vocabulary) -> GreedyDecoder | BeamSearchDecoder:
    return GreedyDecoder(vocab) if config.kind == "greedy" else BeamSearchDecoder(config, vocab)


class DecoderPool:
    """Decoders kept per (config, vocabulary), so a KenLM loads once however many batches use it; the least recently
    used go beyond ``size``."""

    def __init__(self, size: int = 16):
        self.size = size
        self._decoders: OrderedDict[tuple, tuple[Vocabulary, GreedyDecoder | BeamSearchDecoder]] = OrderedDict()

    def get(self, config: DecoderConfig, vocab: Vocabulary) -> GreedyDecoder | BeamSearchDecoder:
        key = (config, id(vocab))  # the entry holds the vocabulary, so its id is not reused while kept
        if key not in self._decoders:
            self._decoders[key] = (vocab, make_decoder(config, vocab))
            while len(self._decoders) > self.size:
                self._decoders.popitem(last=False)
        self._decoders.move_to_end(key)
        return self._decoders[key][1]

    def decode_row(self, config: DecoderConfig | None, vocab: Vocabulary, logits: torch.Tensor) -> DecodedWords:
        """The words of one utterance's (frames, >= vocabulary) logits: greedy on the argmax, beam search on the
        log-softmax of the vocabulary's own columns."""
        logits = logits[:, : len(vocab)]
        if config is None or config.kind == "greedy":
            return vocab.ctc_words(logits.argmax(-1).tolist())
        emissions = np.ascontiguousarray(logits.detach().float().log_softmax(-1).cpu().numpy())
        return self.get(config, vocab).decode_emissions(emissions)


def texts(decoded: Sequence[DecodedWords]) -> list[str]:
    """The transcript of each utterance: its words joined by spaces."""
    return [" ".join(w for w, _, _ in words) for words in decoded]


_worker_decoder: GreedyDecoder | BeamSearchDecoder | None = None


def _start_worker(config: DecoderConfig, vocab: Vocabulary) -> None:
    global _worker_decoder
    torch.set_num_threads(1)
    _worker_decoder = make_decoder(config, vocab)


def _decode_in_worker(emissions: np.ndarray) -> DecodedWords:
    return _worker_decoder.decode_emissions(emissions)


def decode_in_processes(config: DecoderConfig, vocab: Vocabulary, emissions: Sequence[np.ndarray],
                        workers: int) -> list[DecodedWords]:
    """Decode many utterances' log-probabilities (:func:`log_probs`) in ``workers`` processes, in order; with one
    worker, here. Each process loads the LM once: worth it for an evaluation, not for a batch."""
    if workers <= 1 or len(emissions) <= 1:
        decoder = make_decoder(config, vocab)
        return [decoder.decode_emissions(e) for e in emissions]
    make_decoder(config, vocab)  # bad files fail here, in one line, rather than in every worker
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(config, vocab)) as pool:
        return list(pool.map(_decode_in_worker, emissions, chunksize=max(1, len(emissions) // (4 * workers))))


def _lm_case(vocab: Vocabulary, lm_words: list[str] | None) -> Callable[[str], str]:
    """How a word is cased for the LM (see the module's docstring)."""
    if not vocab._capitals:
        return str
    cased = [w for w in lm_words or () if w.lower() != w.upper() and not w.startswith("<")]  # not <s>, <unk>
    lowercase = sum(w == w.lower() for w in cased)
    return str.lower if cased and lowercase * 2 > len(cased) else str.upper


def _stamp(path: Path) -> tuple[int, int] | None:
    """What the caches below key a file by besides its path: a file rewritten in place is read again."""
    try:
        stat = path.stat()
    except OSError:
        return None  # the reader names the problem
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _unigrams(path: Path, stamp: tuple[int, int] | None) -> list[str] | None:
    """:func:`arpa_unigrams`, read once per file (decoders of other weights share it)."""
    return arpa_unigrams(path)


def _dictionary(words: Sequence[str]) -> Dictionary:
    dictionary = Dictionary()
    for word in words:
        dictionary.add_entry(word)
    return dictionary


@functools.lru_cache(maxsize=4)
def _kenlm(path: Path, stamp: tuple[int, int] | None, words: tuple[str, ...]) -> tuple[KenLM, Dictionary]:
    """A KenLM over ``words`` (its ids are their positions), loaded once per file and words: decoders that differ only
    in weights or beam share it (scoring keeps no state in the model), so a server's requests load nothing."""
    dictionary = _dictionary(words)
    return _load_kenlm(path, dictionary), dictionary


def _load_kenlm(path: Path, words: Dictionary) -> KenLM:
    try:
        with _stderr_silenced():  # KenLM draws progress bars and a tip on the process's stderr while it reads
            return KenLM(str(path), words)
    except RuntimeError as e:  # KenLM's message ends with its reason, after a C++ source location
        reason = str(e).strip().splitlines()[-1]
        raise LanguageModelError(f"{path}: KenLM cannot load it ({reason})") from None


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 pointed at /dev/null (C++ code writes there directly, around Python's sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
