"""Transcripts as the files people use: TSV, JSON lines, SubRip (.srt) and WebVTT (.vtt) subtitles."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from wavadapt.errors import WavadaptError
from wavadapt.inference.transcription import Transcript, Word

FORMATS = ("tsv", "jsonl", "srt", "vtt")
SUBTITLES = ("srt", "vtt")
CUE_WORDS = 12
"""Most words in one subtitle cue."""
CUE_GAP = 0.8
"""A pause this long (seconds) between words starts a new cue."""


def tsv_line(t: Transcript, with_task: bool = False) -> str:
    """``path TAB text``, or with ``with_task`` ``path TAB task TAB text`` (where rows were routed)."""
    return f"{t.path}\t{t.task}\t{t.text}" if with_task else f"{t.path}\t{t.text}"


def jsonl_line(t: Transcript) -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False)


def cues(words: list[Word]) -> list[list[Word]]:
    """Words grouped into subtitle cues: at most CUE_WORDS each, a new one after a pause of CUE_GAP."""
    groups: list[list[Word]] = []
    for w in words:
        if not groups or len(groups[-1]) == CUE_WORDS or w.start - groups[-1][-1].end >= CUE_GAP:
            groups.append([])
        groups[-1].append(w)
    return groups


def subtitles(t: Transcript, kind: str) -> str:
    """The transcript as an .srt or .vtt document, one cue per group of words."""
    sep = "," if kind == "srt" else "."
    blocks = [f"{_clock(c[0].start, sep)} --> {_clock(c[-1].end, sep)}\n" + " ".join(w.word for w in c)
              for c in cues(t.words)]
    if kind == "srt":
        return "".join(f"{i}\n{block}\n\n" for i, block in enumerate(blocks, 1))
    return "WEBVTT\n\n" + "".join(f"{block}\n\n" for block in blocks)


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitle_paths(inputs: Sequence[str | Path], out: Path, kind: str) -> dict[str, Path]:
    """Where each input's subtitles go (by ``str(input)``): below ``out``, the inputs' folders mirrored from their
    common parent, so ``a/x.wav`` and ``b/x.wav`` give ``a/x.srt`` and ``b/x.srt`` and one folder's files sit in
    ``out`` itself. Two inputs that would share a file (``x.wav`` and ``x.flac``) are refused, naming both."""
    resolved = {str(p): Path(p).resolve() for p in inputs}
    if not resolved:
        return {}
    root = Path(os.path.commonpath([p.parent for p in resolved.values()]))
    targets, owners = {}, {}
    for given, path in resolved.items():
        target = out / path.relative_to(root).with_suffix(f".{kind}")
        if owners.setdefault(target, path) != path:
            raise WavadaptError(f"{owners[target]} and {path} would both be written to {target}: rename one, or "
                                "transcribe them apart")
        targets[given] = target
    return targets
