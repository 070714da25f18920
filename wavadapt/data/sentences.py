"""Real sentences for the synthetic corpus, taken from the Debian fortune packages.

Only sentences a speech synthesiser reads exactly as written survive: no digits, symbols, quotes,
abbreviations or acronyms (espeak-ng would say words the transcript does not contain), 3..20 words.
"""

import functools
import re
from pathlib import Path

from wavadapt.data.text import normalize_text
from wavadapt.errors import CorpusError

FORTUNES_DIR = Path("/usr/share/games/fortunes")

# language -> (sub-directory, file-name glob, Debian package)
SOURCES: dict[str, tuple[str, str, str]] = {
    "en": ("", "*", "fortunes"),
    "es": ("es", "*.fortunes", "fortunes-es"),
    "de": ("de", "*", "fortunes-de"),
    "it": ("it", "*", "fortunes-it"),
}
# Pictures, banners, and files in other languages than their directory's.
_SKIP_FILES = {"ascii-art", "asciiart", "banner", "translate-me", "translations"}

MIN_WORDS, MAX_WORDS = 3, 20

_ATTRIBUTION = re.compile(r"^\s*(?:--|—|―)\s*(\S?)")
# Column layout (tabs or wide gaps inside a line), list items "(1)" "a)" "- " "* ", speakers "Kirk: ".
_LAYOUT = re.compile(r"\S(\t| {3,})\S|^\s*(\(\w{1,3}\)|\w{1,2}\)|[-*•+>|]\s)|^\s*[A-Z][\w .']{0,20}:(\s|$)", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LETTER = re.compile(r"[^\W\d_]")
_SPACE = re.compile(r"\s")
# Anything but letters, spaces and the punctuation espeak-ng reads as pauses: digits, symbols, quotes.
_FOREIGN = re.compile(r"[^\w\s.,;:!?¿¡'’\-–—]|[\d_]")
_ABBREVIATION_END = re.compile(r"\b[A-Z][a-z]{0,3}\.$")  # "Mr.", "Dr.", "St.": the split cut a sentence
_DOTTED = re.compile(r"\.\w")  # "e.g.", "www.debian.org", "wait...what"
_ACRONYM = re.compile(r"[A-Z]{2}")  # espeak-ng spells "IBM", "NASA": not what the transcript says
_REPEATED_LETTER = re.compile(r"(\w)\1\1")  # "zzzz", "aaaah": jokes, not words


def load_sentences(language: str) -> list[str]:
    """Clean sentences in ``language`` from the installed fortune files, deduplicated, in file order.

    The sentences keep their case and punctuation (as Common Voice's); normalise them with
    :func:`wavadapt.data.text.normalize_text`. Raises CorpusError naming the Debian package to
    install when the fortune files are missing.
    """
    return list(_load(language))


@functools.cache
def _load(language: str) -> tuple[str, ...]:
    if language not in SOURCES:
        raise CorpusError(f"no sentence source for language {language!r} (known: {', '.join(SOURCES)})")
    subdir, pattern, package = SOURCES[language]
    directory = FORTUNES_DIR / subdir
    # Plain files only: .dat indexes, .u8 links and symlinks into other languages' directories are skipped.
    files = sorted(
        p
        for p in directory.glob(pattern)
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.name not in _SKIP_FILES
    )
    if not files:
        raise CorpusError(f"no fortune files in {directory}: install them with `apt-get install {package}`")
    seen: set[str] = set()
    sentences = []
    for path in files:
        for sentence in fortune_sentences(path.read_text(encoding="utf-8", errors="replace"), language):
            key = normalize_text(sentence, language)
            if key not in seen:
                seen.add(key)
                sentences.append(sentence)
    return tuple(sentences)


def fortune_sentences(text: str, language: str) -> list[str]:
    """Split the text of one fortune file (entries separated by ``%`` lines) into clean sentences."""
    sentences = []
    for entry in re.split(r"^%\s*$", text, flags=re.M):
        sentences += _entry_sentences(entry, language)
    return sentences


def _entry_sentences(entry: str, language: str) -> list[str]:
    lines = entry.strip("\n").splitlines()
    # An attribution ends the entry. An unindented line starting with a dash continues the text unless
    # it is the last line and not lowercase ("-- he hates critics." vs "-- Mark Twain").
    for i, line in enumerate(lines):
        dash = _ATTRIBUTION.match(line)
        if dash and (line[:1].isspace() or (i == len(lines) - 1 and not dash.group(1).islower())):
            lines = lines[:i]
            break
    body = "\n".join(lines)
    if not body.strip() or _LAYOUT.search(body) or any(_is_art(line) for line in lines):
        return []
    if language == "it":
        body = _italian_accents(body)
    pieces = _SENTENCE_END.split(" ".join(body.split()))
    sentences = []
    for i, piece in enumerate(pieces):
        # An abbreviation at the end of a piece means the split cut a sentence: drop both halves.
        if _ABBREVIATION_END.search(piece) or (i > 0 and _ABBREVIATION_END.search(pieces[i - 1])):
            continue
        if _DOTTED.search(piece):
            continue
        if _is_clean(piece, language):
            sentences.append(piece)
    return sentences


def _is_art(line: str) -> bool:
    """Lines drawn with symbols (ascii art, underlines, boxes) rather than written with letters."""
    visible = len(line) - len(_SPACE.findall(line))
    return visible >= 3 and len(_LETTER.findall(line)) < 0.6 * visible


def _is_clean(sentence: str, language: str) -> bool:
    """A complete sentence of 3..20 words that normalisation keeps letter for letter."""
    first = sentence.lstrip("¿¡")[:1]
    if not (first.isupper() and sentence[-1] in ".!?"):
        return False
    if _FOREIGN.search(sentence) or _ACRONYM.search(sentence) or _REPEATED_LETTER.search(sentence.lower()):
        return False
    normalized = normalize_text(sentence, language)
    if not MIN_WORDS <= len(normalized.split()) <= MAX_WORDS:
        return False
    # Every letter must survive normalisation (none outside the language's alphabet).
    kept = len(normalized) - normalized.count(" ") - normalized.count("'")
    return kept == len(_LETTER.findall(sentence))


def _italian_accents(text: str) -> str:
    """The Italian fortunes type accents as apostrophes (``e'``, ``piu'``, ``perche'``): restore them."""
    end = r"(?=\s|$|[.,;:!?])"
    text = re.sub(r"\bE'" + end, "È", text)
    text = re.sub(r"(\Bch|\bn|\bs)e'" + end, r"\1é", text)  # perché, né, sé
    # "po'" (poco) is a real apostrophe.
    return re.sub(r"(?<!\bp)([aeiou])'" + end, lambda m: "àèìòù"["aeiou".index(m.group(1))], text)
