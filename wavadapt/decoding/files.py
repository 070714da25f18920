"""Checks and readers for the files a beam search takes: KenLM language models and lexicons.

flashlight's KenLM reports a bad file as a RuntimeError carrying a C++ source location (after printing progress
bars); these checks catch the usual mistakes first and name the file in one line.
"""

from collections.abc import Iterable
from pathlib import Path

from wavadapt.data.text import WORD_DELIMITER, Vocabulary
from wavadapt.errors import WavadaptError

_KENLM_BINARY_MAGIC = b"mmap lm "  # KenLM binaries open with "mmap lm http://kheafield.com/code format version"


class DecodingFileError(WavadaptError):
    """A language model or lexicon file for beam search is missing or malformed."""


class LanguageModelError(DecodingFileError):
    """A KenLM language model (ARPA or binary) cannot be used."""


class LexiconError(DecodingFileError):
    """A lexicon file cannot be used with the model's vocabulary."""


def arpa_unigrams(path: Path) -> list[str] | None:
    """The words of a KenLM language model: its 1-grams for an ARPA file, None for a KenLM binary (whose words are
    not listed without KenLM's own reader). Raises :class:`LanguageModelError` unless the file is one of the two."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_KENLM_BINARY_MAGIC))
    except OSError as e:
        raise LanguageModelError(f"{path}: cannot read language model ({e.strerror or e})") from None
    if head == _KENLM_BINARY_MAGIC:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return _read_arpa_unigrams(path, f)
    except UnicodeDecodeError:
        raise LanguageModelError(f"{path}: not an ARPA file or a KenLM binary (not UTF-8 text)") from None


def _read_arpa_unigrams(path: Path, lines: Iterable[str]) -> list[str]:
    """Check the ARPA header, read the 1-gram section, and check the file ends with ``\\end\\`` (not truncated)."""
    lines = (line.strip() for line in lines)
    first = next((line for line in lines if line), "")
    if first != "\\data\\":
        raise LanguageModelError(f"{path}: not an ARPA file or a KenLM binary (starts {first[:40]!r}, not \\data\\)")
    counts = {}
    for line in lines:
        if line.startswith("ngram "):
            order, _, count = line[6:].partition("=")
            if not (order.strip().isdigit() and count.strip().isdigit()):
                raise LanguageModelError(f"{path}: malformed ARPA header line {line!r}")
            counts[int(order)] = int(count)
        elif line:
            break
    if not counts.get(1) or line != "\\1-grams:":
        raise LanguageModelError(f"{path}: ARPA header lists no 1-grams or no \\1-grams: section follows it")
    words = []
    for line in lines:
        if not line:
            break
        fields = line.split()
        if len(fields) < 2:
            raise LanguageModelError(f"{path}: malformed 1-gram line {line!r}")
        words.append(fields[1])
    if len(words) != counts[1]:
        raise LanguageModelError(f"{path}: header promises {counts[1]} 1-grams, the section has {len(words)}")
    last = ""
    for line in lines:
        last = line or last
    if last != "\\end\\":
        raise LanguageModelError(f"{path}: ARPA file does not end with \\end\\ (truncated?)")
    return words


def read_lexicon(path: Path, vocab: Vocabulary) -> dict[str, list[list[str]]]:
    """``{word: [spelling, ...]}`` from a lexicon: one ``word<TAB or space>spelling`` per line, the spelling's tokens
    separated by spaces as torchaudio's and fairseq's lexicons (their trailing ``|`` left out here: the decoder ends
    every spelling with it); a line with the word alone is spelt by its characters. Spellings are in the
    vocabulary's case (a vocabulary of capitals spells ``the`` as ``T H E``); words keep the file's case."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LexiconError(f"{path}: cannot read lexicon ({e})") from None
    capitals = vocab._capitals
    tokens = set(vocab.tokens) - {vocab.blank, vocab.unk, WORD_DELIMITER}
    lexicon: dict[str, list[list[str]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        word, spelling = fields[0], fields[1:] or list(fields[0])
        if spelling[-1] == WORD_DELIMITER:
            spelling = spelling[:-1]
        spelling = [t.upper() for t in spelling] if capitals else spelling
        unknown = sorted(set(spelling) - tokens)
        if unknown or not spelling:
            raise LexiconError(f"{path}:{n}: {word!r} is spelt with {unknown or 'nothing'}, "
                               f"which the model's vocabulary does not have")
        lexicon.setdefault(word, []).append(spelling)
    if not lexicon:
        raise LexiconError(f"{path}: the lexicon has no words")
    return lexicon
