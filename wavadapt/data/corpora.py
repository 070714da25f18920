"""Corpus readers: LibriSpeech, Common Voice, fairseq manifests and simple manifests -> list[Utterance], and
:func:`open_corpus`, which tells from a path which layout (or which store of `wavadapt.data.stores`) it is.

Readers only list files and transcripts (cheap even for 10^6 clips); durations that the layout does
not record stay None and are filled on demand from file headers (see batching.filter_by_length).
"""

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from wavadapt.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioSource, RawFormat, audio_info, is_headerless
from wavadapt.data.records import is_url
from wavadapt.data.stores.hf_datasets import hf_dataset, read_hf_dataset
from wavadapt.data.stores.lhotse_cuts import lhotse_manifests, read_lhotse
from wavadapt.data.stores.tar_shards import read_shards, shard_paths
from wavadapt.data.utterance import UNKNOWN_LANGUAGE, Utterance, path_id
from wavadapt.errors import CorpusError, WavadaptError


def samples_at_16k(path: AudioSource, raw_format: str | None = None) -> int:
    """Length of ``path`` in samples once resampled to 16 kHz, from its header."""
    frames, rate, _ = audio_info(path, raw_format)
    return round(frames * SAMPLE_RATE / rate)


def with_raw_format(utterances: list[Utterance], raw_format: str | None) -> list[Utterance]:
    """Give the headerless files (``.raw``, ``.pcm``) that have no format of their own ``raw_format``
    (--raw-format); the format is validated first, so a typo fails before any file is read."""
    if raw_format is None:
        return utterances
    spec = str(RawFormat.parse(raw_format))
    return [replace(u, raw_format=spec) if u.raw_format is None and is_headerless(u.path) else u for u in utterances]


# --- LibriSpeech: <split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac + <speaker>-<chapter>.trans.txt


def read_librispeech(root: str | Path, split: str | None = None, language: str = "en") -> list[Utterance]:
    """Read a LibriSpeech-layout split.

    ``root`` is the ``LibriSpeech`` directory (or its parent) with ``split`` naming a subdirectory such
    as ``train-clean-100``, or the split directory itself. ``split=None`` takes the only split, or
    ``train`` when there are several. Chapters without a ``.trans.txt`` are unlabeled.
    """
    split_dir = _librispeech_split_dir(Path(root), split)
    utterances = []
    for chapter in sorted(p for p in split_dir.glob("*/*") if p.is_dir()):
        texts = _read_trans(chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt")
        for f in sorted(chapter.glob("*.flac")):
            utterances.append(Utterance(f.stem, f, texts.get(f.stem), language, speaker=chapter.parent.name))
    return utterances


def _is_librispeech_split(d: Path) -> bool:
    return next(d.glob("*/*/*.flac"), None) is not None


def _librispeech_split_dir(root: Path, split: str | None) -> Path:
    _require_dir(root)
    if (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    if split is None and _is_librispeech_split(root):
        return root
    if split is not None and root.name == split and _is_librispeech_split(root):
        return root
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and _is_librispeech_split(d))
    if split is None and len(found) == 1:
        split = found[0]
    elif split is None and "train" in found:
        split = "train"
    if split is None:
        raise CorpusError(f"{root}: several splits ({', '.join(found)}); choose one")
    if split not in found:
        raise CorpusError(
            f"{root}: no split {split!r} with <speaker>/<chapter>/*.flac files; found: {', '.join(found) or 'none'}"
        )
    return root / split


def _read_trans(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    texts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        utt_id, _, text = line.strip().partition(" ")
        if utt_id:
            texts[utt_id] = text.strip()
    return texts


# --- Common Voice: <lang>/clips/*.mp3 + <split>.tsv


def read_common_voice(root: str | Path, split: str = "train", language: str | None = None) -> list[Utterance]:
    """Read one Common Voice split (``train``, ``dev``, ``test``, ``validated``, ``other`` ... ``.tsv``).

    ``root`` is the language directory holding ``clips/`` and the tsv files, or a release directory
    holding ``<language>/``. The language is ``language`` if given, else the ``locale`` column, else
    the directory name. Rows with an empty ``sentence`` are unlabeled.
    """
    root = Path(root)
    if language and not (root / "clips").is_dir() and (root / language / "clips").is_dir():
        root = root / language
    _require_dir(root)
    tsv = root / f"{split}.tsv"
    if not tsv.is_file():
        found = ", ".join(sorted(p.stem for p in root.glob("*.tsv"))) or "none"
        raise CorpusError(f"{tsv}: no such Common Voice split; found: {found}")
    with open(tsv, newline="", encoding="utf-8") as f:
        # Common Voice writes sentences unquoted, quotes included, so csv must not interpret them.
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if "path" not in (rows.fieldnames or []):
            raise CorpusError(f"{tsv}: expected a header with a 'path' column")
        utterances = []
        for row in rows:
            name = row["path"]
            if not Path(name).suffix:  # early releases listed clips without the extension
                name += ".mp3"
            utterances.append(
                Utterance(
                    id=Path(name).stem,
                    path=root / "clips" / name,
                    text=(row.get("sentence") or "").strip() or None,
                    language=language or row.get("locale") or root.name,
                    speaker=row.get("client_id") or None,
                )
            )
    return utterances


# --- fairseq: <split>.tsv (root dir, then relative/path<TAB>num_samples) + <split>.ltr / <split>.wrd


def read_fairseq_manifest(
    tsv_path: str | Path,
    labels: Literal["ltr", "wrd"] | None = None,
    language: str = UNKNOWN_LANGUAGE,
) -> list[Utterance]:
    """Read a fairseq wav2vec manifest and, with ``labels``, its sibling ``.ltr`` or ``.wrd`` file.

    The sample counts are taken as 16 kHz samples, as fairseq assumes 16 kHz audio; a relative root
    (line 1) is relative to the working directory, as in fairseq.
    """
    tsv_path = Path(tsv_path)
    lines = _read_lines(tsv_path)
    if not lines or not lines[0].strip():
        raise CorpusError(f"{tsv_path}: empty fairseq manifest (expected the audio root on line 1)")
    root = Path(lines[0].strip())
    entries = []
    for lineno, line in enumerate(lines[1:], start=2):
        rel, _, count = line.partition("\t")
        if not count.strip().isdigit():
            raise CorpusError(f"{tsv_path}:{lineno}: expected 'relative/path<TAB>num_samples', got {line!r}")
        entries.append((rel, int(count)))
    texts: list[str | None] = [None] * len(entries)
    if labels is not None:
        label_path = tsv_path.with_suffix(f".{labels}")
        label_lines = _read_lines(label_path)
        if len(label_lines) != len(entries):
            raise CorpusError(
                f"{label_path} has {len(label_lines)} lines but {tsv_path} lists {len(entries)} audio files"
            )
        convert = letters_to_words if labels == "ltr" else str.strip
        texts = [convert(line) or None for line in label_lines]
    utterances = [
        Utterance(path_id(rel), root / rel, text, language, num_samples=n)
        for (rel, n), text in zip(entries, texts, strict=True)
    ]
    _require_unique_ids(tsv_path, utterances, [i + 2 for i in range(len(utterances))])
    return utterances


def _require_unique_ids(manifest: Path, utterances: list[Utterance], lines: list[int]) -> None:
    """Refuse a manifest that gives two entries one id, naming both lines (ids key caches and outputs)."""
    seen: dict[str, int] = {}
    for u, line in zip(utterances, lines, strict=True):
        if (first := seen.setdefault(u.id, line)) != line:
            raise CorpusError(f"{manifest}:{line}: utterance id {u.id!r} ({u.path}) is already the id of line {first}")


def require_unique_ids(utterances: Sequence[Utterance]) -> None:
    """Refuse two utterances with one id (a list joined from several corpora, or one file listed twice), naming
    both files: ids key feature caches and match hypotheses to references."""
    seen: dict[str, Path] = {}
    for u in utterances:
        if u.id in seen:
            raise CorpusError(f"utterance id {u.id!r} is given to {seen[u.id]} and again to {u.path}")
        seen[u.id] = Path(u.path)


def letters_to_words(line: str) -> str:
    """fairseq letter labels ``"H I | T H E R E |"`` -> ``"HI THERE"``."""
    return " ".join("".join(line.split()).replace("|", " ").split())


def words_to_letters(text: str) -> str:
    """``"HI THERE"`` -> ``"H I | T H E R E |"``, as fairseq's examples/wav2vec/libri_labels.py writes."""
    return " ".join("|".join(text.split())) + " |"


def write_fairseq_manifest(utterances: list[Utterance], out_dir: str | Path, split: str) -> Path:
    """Write ``<split>.tsv`` (+ ``.wrd`` and ``.ltr`` when every utterance has a transcript).

    Returns the tsv path. The audio is referenced, not copied; lengths are 16 kHz samples, filled
    from file headers where unknown.
    """
    if not utterances:
        raise CorpusError(f"no utterances to write to {out_dir}/{split}.tsv")
    if inside := next((u for u in utterances if u.record is not None), None):
        raise CorpusError(f"{inside.audio}: a fairseq manifest lists audio files, and this audio lies inside another "
                          "file (write the corpus as shards with wavadapt shard instead)")
    labeled = sum(u.text is not None for u in utterances)
    if 0 < labeled < len(utterances):
        raise CorpusError(
            f"{len(utterances) - labeled} of {len(utterances)} utterances have no transcript; "
            "fairseq label files need one line per audio file"
        )
    paths = [Path(u.path).resolve() for u in utterances]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = out_dir / f"{split}.tsv"
    rows = [
        f"{p.relative_to(root)}\t{u.num_samples or samples_at_16k(p)}" for u, p in zip(utterances, paths, strict=True)
    ]
    tsv.write_text("\n".join([str(root), *rows]) + "\n", encoding="utf-8")
    if labeled:
        texts = [" ".join(u.text.split()) for u in utterances]
        (out_dir / f"{split}.wrd").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        (out_dir / f"{split}.ltr").write_text("".join(words_to_letters(t) + "\n" for t in texts), encoding="utf-8")
    return tsv


# --- simple manifests: TSV with a header (path, text, language, speaker, id) or JSONL with those keys


def read_manifest(path: str | Path, language: str | None = None) -> list[Utterance]:
    """Read a TSV (header with ``path`` and optionally ``text``, ``language``, ``speaker``, ``id``,
    ``raw_format``, ``task``) or JSONL manifest. Relative audio paths are relative to the manifest's directory; a row
    without a language gets ``language`` (default "und"), one without an id its :func:`path_id`. Two rows with one
    id are refused, naming both lines."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows, lines = [], []
        for lineno, line in enumerate(_read_lines(path), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                lines.append(lineno)
    else:
        rows = list(csv.DictReader(_read_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE))
        lines = [i + 2 for i in range(len(rows))]  # after the header
    utterances = []
    for row, lineno in zip(rows, lines, strict=True):
        if not isinstance(row, dict) or not row.get("path"):
            raise CorpusError(f"{path}:{lineno}: no 'path'")
        audio = path.parent / str(row["path"])
        raw_format = row.get("raw_format") or None
        if raw_format is not None:
            try:
                raw_format = str(RawFormat.parse(str(raw_format)))
            except WavadaptError as e:
                raise CorpusError(f"{path}:{lineno}: {e}") from None
        utterances.append(
            Utterance(
                id=str(row.get("id") or path_id(str(row["path"]))),
                path=audio,
                text=str(row.get("text") or "").strip() or None,
                language=str(row.get("language") or language or UNKNOWN_LANGUAGE),
                speaker=str(row.get("speaker") or "") or None,
                raw_format=raw_format,
                task=str(row.get("task") or "") or None,
            )
        )
    _require_unique_ids(path, utterances, lines)
    return utterances


# --- layout detection


def open_corpus(path: str | Path, split: str | None = None, language: str | None = None,
                raw_format: str | None = None) -> list[Utterance]:
    """Read whatever corpus ``path`` is: a LibriSpeech or Common Voice directory, a fairseq manifest
    (``.tsv``, or a directory holding ``<split>.tsv``), a ``.tsv``/``.jsonl`` manifest, a synthetic
    corpus root (``corpus.json``; ``language`` picks the language directory), or a store of the field's data
    libraries (`wavadapt.data.stores`): Lhotse cuts or Shar, a Hugging Face dataset, WebDataset shards (also
    behind a URL or a brace pattern).

    ``split=None`` means the only split, else ``train``. ``raw_format`` is the format of its headerless
    PCM files (see :func:`with_raw_format`).
    """
    if is_url(str(path)) or "{" in str(path):
        if (shards := shard_paths(str(path), split)) is None:
            raise CorpusError(f"{path}: a URL or a brace pattern names WebDataset shards: .tar files")
        return in_language(read_shards(shards), language, str(path))
    return with_raw_format(_open_layout(Path(path), split, language), raw_format)


def open_corpora(path: str | Path, split: str | None, languages: Sequence[str | None],
                 raw_format: str | None = None) -> list[Utterance]:
    """:func:`open_corpus` of each language in turn (a corpus with a folder per language), one list. With several
    languages each id becomes ``<language>/<id>``: corpora of one game or one text in several languages name their
    lines alike, and ids key labels, caches and hypotheses."""
    if len(languages) < 2:
        return [u for language in languages for u in open_corpus(path, split, language, raw_format)]
    return [replace(u, id=f"{language}/{u.id}") for language in languages
            for u in open_corpus(path, split, language, raw_format)]


def language_list(text: str) -> list[str]:
    """Comma-separated languages (``en,es``) as a list."""
    return [language.strip() for language in text.split(",") if language.strip()]


def _open_layout(path: Path, split: str | None, language: str | None) -> list[Utterance]:
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory (expected a corpus directory or manifest)")
    if path.is_file():
        found = _open_store(path, split, language)
        return found if found is not None else _open_manifest(path, language)
    if (path / "corpus.json").is_file():
        path = path / _corpus_language(path / "corpus.json", language)
    elif language and (path / language).is_dir():
        path = path / language
    if (path / "clips").is_dir():
        return read_common_voice(path, split or "train", language)
    for suffix in (".tsv", ".jsonl"):
        manifest = path / f"{split or 'train'}{suffix}"
        if manifest.is_file():
            return _open_manifest(manifest, language)
    if (found := _open_store(path, split, language)) is not None:
        return found
    if (
        (path / "LibriSpeech").is_dir()
        or _is_librispeech_split(path)
        or any(d.is_dir() and _is_librispeech_split(d) for d in path.iterdir())
    ):
        return read_librispeech(path, split, language or "en")
    if files := read_audio_folder(path, language):
        return files
    raise CorpusError(
        f"{path}: unknown corpus layout (expected LibriSpeech <split>/<speaker>/<chapter>/*.flac, "
        "Common Voice clips/ + <split>.tsv, a fairseq or manifest <split>.tsv/.jsonl, corpus.json, Lhotse cuts, "
        f"a Hugging Face dataset, WebDataset .tar shards, or a folder of audio files: {' '.join(AUDIO_SUFFIXES)})"
    )


def _open_store(path: Path, split: str | None, language: str | None) -> list[Utterance] | None:
    """The utterances of a Lhotse, Hugging Face datasets or WebDataset store at ``path``; None when it is none."""
    if (lhotse := lhotse_manifests(path, split)) is not None:
        utterances = read_lhotse(*lhotse)
    elif (dataset := hf_dataset(path, split)) is not None:
        utterances = read_hf_dataset(*dataset)
    elif (shards := shard_paths(str(path), split)) is not None:
        utterances = read_shards(shards)
    else:
        return None
    return in_language(utterances, language, str(path))


def in_language(utterances: list[Utterance], language: str | None, where: str) -> list[Utterance]:
    """A store's utterances of ``language``: those its records say are in it, or all of them when the records name
    no language."""
    if language is None:
        return utterances
    if all(u.language == UNKNOWN_LANGUAGE for u in utterances):
        return [replace(u, language=language) for u in utterances]
    chosen = [u for u in utterances if u.language == language]
    if not chosen:
        held = ", ".join(sorted({u.language for u in utterances}))
        raise CorpusError(f"{where}: no utterances in {language!r} (its records are in {held})")
    return chosen


def read_audio_folder(path: Path, language: str | None = None) -> list[Utterance]:
    """Every audio file below ``path`` (recursively, by :data:`AUDIO_SUFFIXES`), in name order, without
    transcripts; each file's id is its path below ``path`` without the suffix."""
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
    return [Utterance(path_id(f.relative_to(path)), f, None, language or UNKNOWN_LANGUAGE) for f in files]


def corpus_languages(path: str | Path) -> list[str]:
    """The languages of a corpus root that holds several (a synthetic corpus's corpus.json), else []."""
    corpus_json = Path(path) / "corpus.json"
    if not corpus_json.is_file():
        return []
    try:
        return list(json.loads(corpus_json.read_text(encoding="utf-8"))["languages"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"{corpus_json}: expected JSON with a 'languages' entry ({e})") from None


def _open_manifest(path: Path, language: str | None) -> list[Utterance]:
    if path.suffix == ".tsv":
        first = _read_lines(path)[:1]
        if first and "\t" not in first[0]:  # fairseq: line 1 is the audio root directory
            labels = next((s for s in ("wrd", "ltr") if path.with_suffix(f".{s}").is_file()), None)
            return read_fairseq_manifest(path, labels, language or UNKNOWN_LANGUAGE)
        return read_manifest(path, language)
    if path.suffix == ".jsonl":
        return read_manifest(path, language)
    raise CorpusError(f"{path}: not a manifest (expected a fairseq .tsv, or a .tsv/.jsonl with a 'path' column)")


def _corpus_language(corpus_json: Path, language: str | None) -> str:
    """The language directory of a synthetic corpus: ``language``, or the only one there is."""
    languages = corpus_languages(corpus_json.parent)
    if language is None and len(languages) == 1:
        return languages[0]
    if language is None or language not in languages:
        given = "several languages" if language is None else f"no language {language!r}"
        raise CorpusError(f"{corpus_json.parent}: {given} (holds {', '.join(languages)}); choose one")
    return language


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise CorpusError(f"{path}: no such directory")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror if isinstance(e, OSError) else e})") from None
