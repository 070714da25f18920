"""Lhotse manifests as a corpus (k2/icefall's and NeMo's loaders keep speech this way), and any corpus as Lhotse Shar.

Read: a CutSet (``cuts.jsonl.gz``, or a recipe's ``<corpus>_cuts_<split>.jsonl.gz``), a recordings + supervisions
pair (cut to the supervisions' spans), or a Shar directory (``cuts.NNNNNN.jsonl.gz`` beside
``recording.NNNNNN.tar``). Lhotse's own readers parse the manifests; the audio passes wavadapt's gate: a cut that
covers a whole file reads the file, one that covers part of it reads its span, a Shar cut reads its tar member.
"""

import gzip
import logging
import tarfile
from pathlib import Path

from wavadapt.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE
from wavadapt.data.records import FileSpan, InMemory, Record, Remote, TarMember
from wavadapt.data.stores.audio_bytes import encoded_audio
from wavadapt.data.utterance import UNKNOWN_LANGUAGE, Utterance
from wavadapt.errors import AudioError, CorpusError

log = logging.getLogger("wavadapt.data")

MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl")


def lhotse_manifests(path: Path, split: str | None) -> tuple[str, list[Path]] | None:
    """What Lhotse manifests ``path`` names: ``("cuts", [file])``, ``("manifests", [recordings, supervisions])`` or
    ``("shar", [directory])``; None when it names none. A folder holds them for ``split`` (``cuts_<split>`` or
    ``<prefix>_cuts_<split>``), or holds only one set."""
    if path.is_file():
        return ("cuts", [path]) if _is_manifest(path) and "cuts" in path.name else None
    if not path.is_dir():
        return None
    if (path / "cuts.000000.jsonl.gz").is_file():
        return "shar", [path]
    if split and (path / split / "cuts.000000.jsonl.gz").is_file():
        return "shar", [path / split]
    manifests = sorted(f for f in path.iterdir() if _is_manifest(f))

    def named(kind: str) -> list[Path]:
        return [f for f in manifests if kind in f.name
                and (split is None or _stem(f).endswith(f"_{split}") or _stem(f).startswith(f"{split}_"))]

    cuts, recordings, supervisions = named("cuts"), named("recordings"), named("supervisions")
    if len(cuts) == 1:
        return "cuts", cuts
    if len(recordings) == 1 and len(supervisions) == 1:
        return "manifests", recordings + supervisions
    if len(cuts) > 1 or len(recordings) > 1:
        found = ", ".join(f.name for f in cuts or recordings)
        raise CorpusError(f"{path}: several Lhotse manifests ({found}); name the split with --split or give the file")
    return None


def read_lhotse(kind: str, paths: list[Path]) -> list[Utterance]:
    """The utterances of what :func:`lhotse_manifests` found, in manifest order."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    try:
        if kind == "shar":
            return _read_shar(paths[0])
        if kind == "cuts":
            cuts = CutSet.from_file(paths[0])
        else:
            cuts = CutSet.from_manifests(recordings=RecordingSet.from_file(paths[0]),
                                         supervisions=SupervisionSet.from_file(paths[1])).trim_to_supervisions()
        found = [(cut, _audio(cut)) for cut in cuts]
    except (ValueError, KeyError, TypeError, OSError) as e:  # Lhotse's own errors for a manifest it cannot parse
        raise CorpusError(f"{paths[0]}: not a Lhotse manifest Lhotse can read ({type(e).__name__}: {e})") from None
    return [_utterance(cut, audio) for cut, audio in found if audio is not None]


def _audio(cut) -> Path | Record | None:
    """Where a cut's audio is: its recording's file (the whole of it) or a span of it, a URL, inline bytes."""
    recording = getattr(cut, "recording", None)
    if recording is None or len(recording.sources) != 1:
        log.warning("skipping cut %s: %s", cut.id, "no recording" if recording is None else
                    "a recording with one source per channel (not read yet)")
        return None
    source = recording.sources[0]
    whole = cut.start == 0 and abs(cut.duration - recording.duration) < 1e-3
    if source.type == "file":
        return Path(source.source) if whole else FileSpan(source.source, cut.start, cut.duration)
    if source.type == "url":
        return Remote(source.source, None if whole else cut.start, None if whole else cut.duration)
    if source.type == "memory" and whole:
        return InMemory(f"{recording.id} (in the manifest)", source.source)
    log.warning("skipping cut %s: audio from a %r source (not read yet)", cut.id, source.type)
    return None


def _utterance(cut, audio: Path | Record) -> Utterance:
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    text = " ".join(s.text.strip() for s in supervisions if s.text and s.text.strip()) or None
    language = next((s.language for s in supervisions if s.language), None) or UNKNOWN_LANGUAGE
    speaker = next((s.speaker for s in supervisions if s.speaker), None)
    return Utterance(cut.id, audio if isinstance(audio, Path) else Path(audio.name), text, language, speaker,
                     num_samples=round(cut.duration * SAMPLE_RATE), record=None if isinstance(audio, Path) else audio)


def _read_shar(folder: Path) -> list[Utterance]:
    """Shar: each shard's cuts in order, each with its audio member of ``recording.NNNNNN.tar``."""
    from lhotse import CutSet

    utterances = []
    for manifest in sorted(folder.glob("cuts.*.jsonl.gz")):
        tar = folder / manifest.name.replace("cuts.", "recording.").replace(".jsonl.gz", ".tar")
        if not tar.is_file():
            raise CorpusError(f"{folder}: Shar shard {manifest.name} has no {tar.name} (audio written as another "
                              "field, or missing)")
        members = _audio_members(tar)
        for cut in CutSet.from_file(manifest):
            member = members.get(cut.id)
            if member is None:
                log.warning("skipping cut %s: no audio in %s", cut.id, tar)
                continue
            utterances.append(_utterance(cut, member))
    return utterances


def _audio_members(tar: Path) -> dict[str, TarMember]:
    members = {}
    try:
        with tarfile.open(tar, "r:") as t:
            for m in t:
                stem, suffix = m.name.rsplit(".", 1) if "." in m.name else (m.name, "")
                if m.isfile() and f".{suffix.lower()}" in AUDIO_SUFFIXES:
                    members[stem] = TarMember(str(tar), m.name, m.offset_data, m.size)
    except (tarfile.TarError, OSError) as e:  # a cut-off shard: its cuts past the cut are skipped, by name
        log.warning("%s: %s after %d members", tar, e, len(members))
    return members


def write_shar(utterances: list[Utterance], out: Path, per_shard: int) -> tuple[list[Path], int]:
    """Write ``utterances`` as a Lhotse Shar directory (``cuts`` and ``recording`` fields, the audio as FLAC in
    shards of ``per_shard`` cuts), through Lhotse's own writer. An unreadable file is skipped and named. Returns the
    files and the number of utterances written."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    cuts = []
    for u in utterances:
        try:
            data, _ = encoded_audio(u)
            recording = Recording.from_bytes(data, u.id)
        except (AudioError, RuntimeError, ValueError) as e:
            log.warning("skipping %s: %s", u.id, e)
            continue
        supervision = SupervisionSegment(u.id, u.id, 0.0, recording.duration, text=u.text, language=u.language,
                                         speaker=u.speaker)
        cuts.append(MonoCut(u.id, 0.0, recording.duration, 0, supervisions=[supervision], recording=recording))
    out.mkdir(parents=True, exist_ok=True)
    written = CutSet.from_cuts(cuts).to_shar(out, fields={"recording": "flac"}, shard_size=per_shard)
    return [Path(p) for p in written["cuts"] + written["recording"]], len(cuts)


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.name.endswith(MANIFEST_SUFFIXES) and _first_line_is_json(path)


def _first_line_is_json(path: Path) -> bool:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return f.readline().lstrip().startswith("{")
    except (OSError, UnicodeDecodeError, EOFError):
        return False


def _stem(path: Path) -> str:
    return next(path.name[: -len(s)] for s in MANIFEST_SUFFIXES if path.name.endswith(s))
