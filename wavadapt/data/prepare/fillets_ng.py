"""Fish Fillets NG's voice acting (Debian main, GPL-2): the game's dialogue, recorded by actors per language.

``fillets-ng-data`` holds the scripts (``script/<level>/dialogs_<lang>.lua``: ``dialogId("<id>", "<font>",
"<english>")`` then ``dialogStr("<text>")``; lines shared by levels in ``script/share/*_dialogs_<lang>.lua``)
and the English recordings; ``fillets-ng-data-<lang>`` holds another language's (``sound/<level>/<lang>/
<id>.ogg``, shared lines in ``sound/share/<sub>/<lang>/``). The speaker is the line's font (``small`` and
``big`` are the two fish, the main voices); ids tagged ``x`` are sound effects.
"""

import random
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from wavadapt.data.corpora import Utterance
from wavadapt.data.prepare.debian import unpack_packages
from wavadapt.data.prepare.manifests import write_corpus
from wavadapt.data.text import normalize_text
from wavadapt.errors import CorpusError

GAME = Path("usr/share/games/fillets-ng")
SHARED_LEVEL = "share"
_STRING = r'"((?:[^"\\]|\\.)*)"'
_LINE = re.compile(rf"dialogId\(\s*{_STRING}\s*,\s*{_STRING}\s*,\s*{_STRING}\s*\)(?:\s*dialogStr\(\s*{_STRING}\s*\))?")
_ESCAPES = re.compile(r"\\(.)")


def packages(language: str) -> list[str]:
    """The Debian packages a language's corpus needs: English is recorded in the main data package."""
    return ["fillets-ng-data"] + ([] if language == "en" else [f"fillets-ng-data-{language}"])


def prepare_fillets_ng(out: Path, language: str, packages_dir: Path | None = None, seed: int = 0,
                       test_utterances: int = 150, dev_utterances: int = 75) -> dict:
    """Fetch the packages, pair each recording of ``language`` with its line, drop effects and untranscribed
    clips, split by level and write ``out/{train,dev,test}.tsv`` with the audio in ``out/audio/<level>/``.

    Levels that share a transcript (a line repeated in two levels, or a shared line) stay in one split, so no
    scene or repeated line is in two splits. Whole level groups go, in a seeded order, to test until it holds
    ``test_utterances``, then to dev until ``dev_utterances``; the rest is train.
    """
    with tempfile.TemporaryDirectory(prefix="wavadapt-fillets-") as tmp:
        versions = unpack_packages(packages(language), Path(tmp), packages_dir)
        game = Path(tmp) / GAME
        clips, dropped = _pair(game, language)
        if not clips:
            raise CorpusError(f"fillets-ng: no recordings in language {language!r} in {', '.join(versions)}")
        splits = {name: [_copied(u, out) for u in utterances]
                  for name, utterances in _split(clips, language, seed, test_utterances, dev_utterances).items()}
    source = {"corpus": "fillets-ng", "license": "GPL-2 (Fish Fillets NG, Debian main)", "packages": versions,
              "split": "by level (levels sharing a line together), seed " + str(seed)}
    return write_corpus(out, splits, language, source, dropped)


def _copied(u: Utterance, out: Path) -> Utterance:
    """``u`` with its recording copied out of the unpacked package into ``out/audio/<level>/``."""
    target = out / "audio" / (u.id + u.path.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(u.path, target)
    return Utterance(u.id, target, u.text, u.language, u.speaker)


def _pair(game: Path, language: str) -> tuple[list[Utterance], dict[str, list[str]]]:
    """Every recording of ``language`` with its script line; the dropped ones by reason."""
    shared = {}
    for script in sorted((game / "script" / SHARED_LEVEL).glob(f"*_dialogs_{language}.lua")):
        shared.update(_lines(script, language))
    clips, dropped, levels = [], defaultdict(list), {}
    recordings = sorted(game.glob(f"sound/*/{language}/*.ogg")) + sorted(game.glob(f"sound/{SHARED_LEVEL}/*/"
                                                                                   f"{language}/*.ogg"))
    for audio in recordings:
        level = audio.parent.parent.relative_to(game / "sound").as_posix()  # a level, or share/<sub>
        if level not in levels:  # each script read once
            levels[level] = shared if level.startswith(SHARED_LEVEL + "/") else _level_lines(game, level, language)
        lines = levels[level]
        name = f"{level}/{audio.stem}"
        tag = audio.stem.split("-")[1] if audio.stem.count("-") >= 2 else ""
        if tag == "x":
            dropped["sound effect"].append(name)
        elif audio.stem not in lines or not lines[audio.stem][1].strip():
            dropped["no transcript"].append(name)
        else:
            font, text = lines[audio.stem]
            clips.append(Utterance(name, audio, text, language, speaker=font.removeprefix("font_")))
    return clips, dict(dropped)


def _level_lines(game: Path, level: str, language: str) -> dict[str, tuple[str, str]]:
    script = game / "script" / level / f"dialogs_{language}.lua"
    return _lines(script, language) if script.is_file() else {}


def _lines(script: Path, language: str) -> dict[str, tuple[str, str]]:
    """``{id: (font, text)}`` of a dialogue script: the ``dialogStr`` translation, or for English the
    ``dialogId``'s own text."""
    try:
        source = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{script}: cannot read ({e})") from None
    lines = {}
    for line_id, font, english, text in _LINE.findall(source):
        text = english if language == "en" else text
        lines[_unescape(line_id)] = (_unescape(font), " ".join(_unescape(text).split()))
    return lines


def _unescape(s: str) -> str:
    return _ESCAPES.sub(lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), s)


def _level(u: Utterance) -> str:
    return u.id.rsplit("/", 1)[0]


def _split(clips: list[Utterance], language: str, seed: int, test_utterances: int,
           dev_utterances: int) -> dict[str, list[Utterance]]:
    """Whole groups of levels that share a transcript, test first, then dev, then train."""
    parent = {}

    def root(level: str) -> str:
        while parent.setdefault(level, level) != level:
            level = parent[level] = parent[parent[level]]
        return level

    first_level_of = {}
    for u in clips:
        text = normalize_text(u.text, language)
        other = first_level_of.setdefault(text, _level(u))
        parent[root(_level(u))] = root(other)
    groups = defaultdict(list)
    for u in clips:
        groups[root(_level(u))].append(u)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    splits = {"test": [], "dev": [], "train": []}
    for key in order:
        name = next((s for s, want in (("test", test_utterances), ("dev", dev_utterances))
                     if len(splits[s]) < want), "train")
        splits[name].extend(groups[key])
    return splits
