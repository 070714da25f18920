"""Per-language text normalisation and CTC character vocabularies (HF vocab.json, fairseq dict.ltr.txt)."""

import functools
import json
import logging
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from wavadapt.data.verbalize import verbalize
from wavadapt.errors import WavadaptError

_LATIN = string.ascii_lowercase

# Lowercase characters a transcript may keep per language. Languages not listed keep every unicode letter.
ALPHABETS: dict[str, str] = {
    "en": _LATIN + "'",
    "es": _LATIN + "ñáéíóúü",
    "de": _LATIN + "äöüß",
    "it": _LATIN + "àèéìòù'",
    "fr": _LATIN + "àâæçéèêëîïôœùûüÿ'",
    "nl": _LATIN + "'",  # Dutch accents (één, ideeën, ruïne) only stress or split vowels: as their base letter
    "cs": _LATIN + "áčďéěíňóřšťúůýž",
    "pt": _LATIN + "áâãàçéêíóôõú",
    "pl": _LATIN + "ąćęłńóśźż",
}

# Typographic variants of the apostrophe (right/left quote, grave, acute, prime).
_APOSTROPHES = "’‘`´′"

MINORITY_SCRIPT = 0.01
"""A script holding less than this share of a corpus's letters is foreign to a language without a known alphabet."""
log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
WORD_DELIMITER = "|"


class VocabularyError(WavadaptError):
    """A vocabulary file is malformed or a vocabulary cannot be built."""


@dataclass(frozen=True)
class Normalized:
    """A transcript as a CTC model of one language predicts it, and what normalisation took from it.

    ``dropped``: characters removed without a spoken form (digits in a language whose numbers wavadapt cannot
    spell, symbols without a word); ``foreign``: letters outside the language's alphabet that are no accented
    form of one of its letters (Cyrillic in a Dutch line). Punctuation, which is not spoken, is neither.
    """

    text: str
    dropped: str = ""
    foreign: str = ""


def normalize(text: str, language: str) -> Normalized:
    """Spell out numbers and symbols (:func:`~wavadapt.data.verbalize.verbalize`), lowercase ``text`` and reduce it to
    the characters a CTC model of ``language`` predicts, saying what was lost.

    NFC, lowercase, typographic apostrophes to ``'``; accented letters outside the alphabet lose their
    accent when the base letter is in it (``café`` -> ``cafe`` in English); punctuation (ellipses, quotes,
    dashes), symbols and hyphens become spaces; other characters are removed and reported. An apostrophe is
    kept only between two letters of an alphabet that has one (``don't``, ``zo'n``), since elsewhere it is a
    quotation mark. Languages without an entry in :data:`ALPHABETS` keep every letter.
    """
    text = verbalize(unicodedata.normalize("NFC", text), language).lower()
    table = _char_map(language)
    lost = {c for c in set(text) if not table[ord(c)].strip() and unicodedata.category(c)[0] not in "PZC"}
    keep_apostrophe = "'" in ALPHABETS.get(language, "'")
    normalized = " ".join(w for w in (_clean_apostrophes(w, keep_apostrophe) for w in text.translate(table).split())
                          if w)
    foreign = "".join(sorted(c for c in lost if _is_letter(c)))
    return Normalized(normalized, "".join(sorted(lost - set(foreign))), foreign)


def normalize_text(text: str, language: str) -> str:
    """The normalised text of :func:`normalize`."""
    return normalize(text, language).text


def _is_letter(c: str) -> bool:
    return c.isalpha() or unicodedata.category(c)[0] == "M"


class _CharMap(dict):
    """``str.translate`` table of one language, filled on first sight of each character (C-speed after)."""

    def __init__(self, alphabet: str | None):
        super().__init__()
        self.alphabet = alphabet

    def __missing__(self, code: int) -> str:
        self[code] = value = _map_char(chr(code), self.alphabet)
        return value


@functools.cache
def _char_map(language: str) -> _CharMap:
    return _CharMap(ALPHABETS.get(language))


def _map_char(c: str, alphabet: str | None) -> str:
    """What one lowercase character becomes: itself, its unaccented base letter, a space, or nothing."""
    if c in _APOSTROPHES or c == "'":
        return "'"
    if c in alphabet if alphabet is not None else _is_letter(c):
        return c  # combining marks count as letters without an alphabet: Indic vowel signs are marks
    if unicodedata.category(c)[0] in "PSZ" or c.isspace():
        return " "
    base = unicodedata.normalize("NFD", c)[0]
    return base if alphabet is not None and base in alphabet else ""


def _clean_apostrophes(word: str, keep: bool) -> str:
    """Keep apostrophes between two letters (when the language has them), drop the others."""
    if "'" not in word:
        return word
    if not keep:
        return word.replace("'", "")
    chars = [
        c
        for i, c in enumerate(word)
        if c != "'" or (0 < i < len(word) - 1 and word[i - 1] != "'" and word[i + 1] != "'")
    ]
    return "".join(chars)


@dataclass
class Vocabulary:
    """CTC character vocabulary: a CTC blank, an unknown token, ``|`` (the word delimiter) and the letters.

    wavadapt builds them in the order of the HF Wav2Vec2CTCTokenizer vocab.json converted from fairseq's
    dictionary (``<pad>`` = blank at id 0, ``<s>``, ``</s>``, ``<unk>``, ``|``, letters), so ids agree with
    fine-tuned checkpoints from either library; checkpoints in other orders keep theirs, naming their own
    ``blank`` (fairseq's ``<s>``, a community model's ``[PAD]``) and ``unk``. ``counts`` holds the character
    counts of the transcripts it was built from (written to dict.ltr.txt); empty when unknown.

    Normalised text is lowercase; a vocabulary whose letters are all capitals (LibriSpeech's, in
    wav2vec2-base-960h and fairseq's dict.ltr.txt) encodes it in capitals and decodes to lowercase, so its
    transcripts compare with normalised references.
    """

    tokens: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    blank: str = "<pad>"
    unk: str = "<unk>"
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _special_ids: frozenset[int] = field(init=False, repr=False, compare=False)
    _capitals: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            dupes = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise VocabularyError(f"vocabulary has duplicate tokens {dupes}")
        for what, token in (("blank", self.blank), ("unknown token", self.unk), ("word delimiter", WORD_DELIMITER)):
            if token not in self._ids:
                raise VocabularyError(f"vocabulary has no {what} {token!r}")
        # Never spelt out: the blank, <unk>, and the sentence markers a tokenizer carries.
        self._special_ids = frozenset(self._ids[t] for t in {*SPECIAL_TOKENS, self.blank, self.unk} if t in self._ids)
        letters = [t for i, t in enumerate(self.tokens) if i not in self._special_ids and t.isalpha()]
        self._capitals = bool(letters) and all(t == t.upper() != t.lower() for t in letters)

    @classmethod
    def build(cls, transcripts: Iterable[str], language: str | None = None) -> "Vocabulary":
        """Count the characters of ``transcripts`` (normalised first when ``language`` is given).

        A transcript with letters outside the language's alphabet (or, for a language without one in
        :data:`ALPHABETS`, letters of a script that holds under 1% of the letters) is left out with a warning:
        one mixed line never adds a script to the vocabulary.

        Letters are ordered by descending count, ties alphabetically, as fairseq's dict.ltr.txt.
        ``|`` counts word boundaries including the one that ends every fairseq .ltr line.
        """
        texts = [normalize(t, language) if language is not None else Normalized(" ".join(t.split()))
                 for t in transcripts]
        foreign = {i: t.foreign for i, t in enumerate(texts) if t.foreign} | _minority_script(texts, language)
        if foreign:
            log.warning("vocabulary%s: %d transcripts with letters outside the language's %s (%s) left out",
                        f" of {language}" if language else "", len(foreign),
                        "alphabet" if language in ALPHABETS else "main scripts", "".join(sorted(set(
                            "".join(foreign.values())))))
        counts: Counter[str] = Counter()
        for i, t in enumerate(texts):
            if t.text and i not in foreign:
                counts.update(t.text.replace(" ", WORD_DELIMITER) + WORD_DELIMITER)
        if not counts:
            raise VocabularyError("no transcripts to build a vocabulary from")
        delimiter = counts.pop(WORD_DELIMITER)
        letters = sorted(counts, key=lambda c: (-counts[c], c))
        return cls([*SPECIAL_TOKENS, WORD_DELIMITER, *letters], {WORD_DELIMITER: delimiter, **counts})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank_id(self) -> int:
        """Id of the CTC blank."""
        return self._ids[self.blank]

    @property
    def unk_id(self) -> int:
        return self._ids[self.unk]

    @property
    def word_delimiter_id(self) -> int:
        return self._ids[WORD_DELIMITER]

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of (normalised) ``text``: spaces -> ``|``, unknown characters -> ``<unk>``."""
        unk = self.unk_id
        text = text.upper() if self._capitals else text
        return [self._ids.get(c, unk) for c in " ".join(text.split()).replace(" ", WORD_DELIMITER)]

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of :meth:`encode` for normalised text: ``|`` -> space, special tokens skipped."""
        chars = [self.tokens[i] for i in ids if i not in self._special_ids]
        text = " ".join("".join(chars).replace(WORD_DELIMITER, " ").split())
        return text.lower() if self._capitals else text

    def ctc_decode(self, ids: Iterable[int]) -> str:
        """Greedy CTC output to text: collapse repeated ids, then drop blanks (and other specials)."""
        return self.decode(i for i, _ in groupby(ids))

    def ctc_words(self, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """The words of the greedy CTC path ``ids`` (one id per frame) with the frames they span:
        ``(word, first frame, last frame + 1)``, from a word's first letter to its last; the words joined by
        spaces are :meth:`ctc_decode`'s text."""
        words, letters, start, end = [], [], 0, 0
        for frame, (i, run) in _runs(ids):
            token = self.tokens[i]
            if i in self._special_ids:
                continue
            if token == WORD_DELIMITER:
                if letters:
                    words.append(("".join(letters), start, end))
                letters = []
                continue
            if not letters:
                start = frame
            letters.append(token.lower() if self._capitals else token)
            end = frame + run
        if letters:
            words.append(("".join(letters), start, end))
        return words

    def oov_chars(self, text: str) -> set[str]:
        """Characters of ``text`` (other than spaces) that the vocabulary cannot encode."""
        text = text.upper() if self._capitals else text
        return {c.lower() if self._capitals else c for c in text if c not in self._ids and not c.isspace()}

    def save_json(self, path: str | Path) -> None:
        """Write HF's vocab.json: ``{token: id}`` in id order (Wav2Vec2CTCTokenizer(vocab_file=path))."""
        vocab = {t: i for i, t in enumerate(self.tokens)}
        Path(path).write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read whichever a user holds: an HF ``vocab.json``, fairseq's ``dict.ltr.txt``, or a task file
        (``adapter.<task>.json`` or its ``.safetensors``), whose JSON carries the task's vocabulary."""
        path = Path(path)
        if path.suffix == ".safetensors":
            path = path.with_suffix(".json")
        if path.suffix != ".json":
            return cls.from_fairseq_dict(path)
        data = _read_json(path, "vocab.json or task file")
        if isinstance(data, dict) and "format" in data and "vocabulary" in data:  # a task file
            try:
                vocab = cls.from_task_info(data)
            except (TypeError, VocabularyError) as e:
                raise VocabularyError(f"{path}: invalid vocabulary in the task file ({e})") from None
            if vocab is None:
                raise VocabularyError(f"{path}: this task file holds an adapter without a head, so no vocabulary")
            return vocab
        return cls.from_token_ids(path, data)

    @classmethod
    def from_task_info(cls, info: dict) -> "Vocabulary | None":
        """The vocabulary a task file's JSON describes (None for a head-less adapter set). Files from before
        ``special_tokens`` existed used wavadapt's own ``<pad>`` blank and ``<unk>``."""
        if info["vocabulary"] is None:
            return None
        return cls(info["vocabulary"], **info.get("special_tokens", {}))

    @classmethod
    def load_json(cls, path: str | Path, blank: str = "<pad>", unk: str = "<unk>") -> "Vocabulary":
        """Read an HF vocab.json ``{token: id}``; ids must be 0..n-1. ``blank`` and ``unk`` are the tokenizer's pad
        and unknown tokens (tokenizer_config.json)."""
        return cls.from_token_ids(path, _read_json(path, "vocab.json"), blank, unk)

    @classmethod
    def from_token_ids(cls, where: str | Path, vocab, blank: str = "<pad>", unk: str = "<unk>") -> "Vocabulary":
        """A vocab.json's ``{token: id}`` (read from ``where``, which errors name) in id order."""
        if not isinstance(vocab, dict) or not all(isinstance(t, str) and isinstance(i, int) for t, i in vocab.items()):
            raise VocabularyError(f"{where}: vocab.json must be an object {{token: integer id}}")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise VocabularyError(f"{where}: ids must be 0..{len(vocab) - 1}, each used once")
        try:
            return cls(sorted(vocab, key=vocab.__getitem__), blank=blank, unk=unk)
        except VocabularyError as e:
            raise VocabularyError(f"{where}: {e}") from None

    def save_fairseq_dict(self, path: str | Path) -> None:
        """Write fairseq's dict.ltr.txt: ``<token> <count>`` for ``|`` and the letters, in id order.

        fairseq's Dictionary adds its four special symbols itself. Counts are 0 when unknown (a
        vocabulary loaded from vocab.json); fairseq keeps the file order, so ids are unaffected.
        """
        if set(self.tokens[:4]) != set(SPECIAL_TOKENS):
            raise VocabularyError(f"a fairseq dictionary needs {list(SPECIAL_TOKENS)} at ids 0-3 (fairseq adds them "
                                  f"itself); this vocabulary starts {self.tokens[:4]}")
        lines = [f"{t} {self.counts.get(t, 0)}\n" for t in self.tokens[len(SPECIAL_TOKENS) :]]
        Path(path).write_text("".join(lines), encoding="utf-8")

    @classmethod
    def from_fairseq_dict(cls, path: str | Path) -> "Vocabulary":
        """Read fairseq's dict.ltr.txt (``<token> <count> [#fairseq:overwrite]`` lines), keeping its order."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise VocabularyError(f"{path}: cannot read fairseq dictionary ({e})") from None
        tokens, counts = [], {}
        for n, line in enumerate(lines, 1):
            fields = line.split()
            if fields[2:] == ["#fairseq:overwrite"]:
                fields = fields[:2]
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise VocabularyError(f"{path}:{n}: expected '<token> <count>', got {line!r}")
            tokens.append(fields[0])
            counts[fields[0]] = int(fields[1])
        try:
            return cls([*SPECIAL_TOKENS, *tokens], counts)
        except VocabularyError as e:
            raise VocabularyError(f"{path}: {e}") from None


def _minority_script(texts: list[Normalized], language: str | None) -> dict[int, str]:
    """For a language without a known alphabet: ``{index: letters}`` of the transcripts holding letters of a
    script that has under 1% of all their letters."""
    if language in ALPHABETS:
        return {}
    scripts = Counter(_script(c) for t in texts for c in t.text if _is_letter(c))
    rare = {s for s, n in scripts.items() if n < MINORITY_SCRIPT * sum(scripts.values())}
    found = {i: {c for c in t.text if _is_letter(c) and _script(c) in rare} for i, t in enumerate(texts)}
    return {i: "".join(sorted(letters)) for i, letters in found.items() if letters}


def _script(c: str) -> str:
    """A letter's script as Unicode names it (LATIN, CYRILLIC, DEVANAGARI, CJK ...)."""
    return unicodedata.name(c, "UNKNOWN").split(" ")[0]


def _read_json(path: str | Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VocabularyError(f"{path}: cannot read {what} ({e})") from None


def _runs(ids: Sequence[int]):
    """``(first frame, (id, length))`` of each run of equal ids."""
    frame = 0
    for i, group in groupby(ids):
        run = sum(1 for _ in group)
        yield frame, (i, run)
        frame += run
