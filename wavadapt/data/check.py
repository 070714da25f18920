"""Corpus check: decode every file and name each one that would break or quietly hurt training."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from wavadapt.data.audio import SAMPLE_RATE, decode
from wavadapt.data.corpora import Utterance
from wavadapt.data.text import normalize
from wavadapt.errors import AudioError, TruncatedAudioError

# Files the readers refuse (AudioError): training skips them, so the corpus is smaller than it looks.
UNUSABLE = ("unreadable", "truncated", "empty", "non-finite")
# Files that train, but not as stored or not well: mis-sized, filtered by length, band-limited, downmixed,
# silent, clipped; transcripts that are missing (skipped by fine-tuning) or mislabeled.
WARNINGS = ("too short", "too long", "sample rate", "stereo", "silent", "clipped",
            "no transcript", "empty transcript", "foreign letters", "dropped characters", "oov characters")
SILENCE_DBFS = -60.0
"""A file whose peak is below this is reported as silent."""
CLIPPED_FRACTION = 0.01
"""A file with more of its samples at full scale than this is reported as clipped."""
FULL_SCALE = 1.0 - 2.0**-15  # the largest 16-bit sample; decoded int16 never reaches 1.0


class CharVocabulary(Protocol):
    """What the check needs from a vocabulary (wavadapt.data.text.Vocabulary)."""

    def oov_chars(self, text: str) -> set[str]: ...


@dataclass(frozen=True)
class Problem:
    """One problem of one file; ``kind`` is one of UNUSABLE or WARNINGS."""

    id: str
    path: str
    kind: str
    detail: str

    @property
    def unusable(self) -> bool:
        return self.kind in UNUSABLE


@dataclass
class CheckReport:
    """Result of :func:`check_corpus`: files checked, seconds of decodable audio, files per sample
    rate, and the problems by file."""

    num_files: int
    seconds: float
    rates: dict[int, int]
    problems: list[Problem]

    @property
    def unusable(self) -> list[Problem]:
        return [p for p in self.problems if p.unusable]

    @property
    def ok(self) -> bool:
        """True when every file can be read (warnings allowed)."""
        return not self.unusable

    def summary(self) -> str:
        """A headline, counts per kind, then one line per problem file: file, then its problems."""
        bad_files = len({p.path for p in self.unusable})
        rates = ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(self.rates.items()))
        lines = [
            f"{self.num_files} files, {self.seconds / 3600:.2f} h of audio: "
            f"{bad_files} unusable, {len(self.problems) - len(self.unusable)} warnings",
            f"  decoded: {rates or 'none'}",
        ]
        counts = Counter(p.kind for p in self.problems)
        lines += [f"  {kind}: {counts[kind]}" for kind in (*UNUSABLE, *WARNINGS) if counts[kind]]
        by_file: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_file.setdefault(p.path, []).append(p)
        lines += [f"{path}\t" + "; ".join(f"{p.kind}: {p.detail}" for p in found) for path, found in by_file.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "num_files": self.num_files,
            "seconds": self.seconds,
            "rates": self.rates,
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
        }


def check_corpus(
    utterances: Sequence[Utterance],
    vocab: CharVocabulary | None = None,
    min_seconds: float = 0.5,
    max_seconds: float = 30.0,
    expected_rate: int = SAMPLE_RATE,
    progress: bool = False,
) -> CheckReport:
    """Decode every file and report unreadable, empty, NaN/Inf, truncated, too short/long,
    multi-channel, silent and clipped audio, audio below ``expected_rate`` (higher rates lose nothing the
    model hears when resampled, so they are only counted), and transcripts that are missing in a labeled
    split, normalise to nothing or (with ``vocab``) hold characters outside the vocabulary. A bad file costs
    its own lines only: the check never stops early."""
    problems: list[Problem] = []
    seconds = 0.0
    rates: Counter[int] = Counter()
    labeled = any(u.text is not None for u in utterances)
    for u in tqdm(utterances, desc="checking", unit="file", disable=None if progress else True):
        duration, rate, found = _check_audio(u, min_seconds, max_seconds, expected_rate)
        seconds += duration
        if rate:
            rates[rate] += 1
        found += _check_text(u, vocab, labeled)
        problems += [Problem(u.id, str(u.audio), kind, detail) for kind, detail in found]
    return CheckReport(len(utterances), seconds, dict(rates), problems)


def _check_audio(
    u: Utterance, min_seconds: float, max_seconds: float, expected_rate: int
) -> tuple[float, int | None, list[tuple[str, str]]]:
    """Seconds of usable audio, sample rate, and the (kind, detail) problems of ``u``'s file."""
    try:
        x, rate = decode(u.audio, u.raw_format)
    except AudioError as e:
        kind = "truncated" if isinstance(e, TruncatedAudioError) else "unreadable"
        return 0.0, None, [(kind, str(e).removeprefix(f"{u.audio}: ").removeprefix("truncated: "))]
    if x.size == 0:
        return 0.0, rate, [("empty", "no audio samples")]
    if not np.isfinite(x).all():
        return 0.0, rate, [("non-finite", f"{int((~np.isfinite(x)).sum())} NaN/Inf samples")]
    duration = len(x) / rate
    found = []
    if duration < min_seconds:
        found.append(("too short", f"{duration:.2f} s < {min_seconds} s"))
    if duration > max_seconds:
        found.append(("too long", f"{duration:.2f} s > {max_seconds} s"))
    if rate < expected_rate:
        found.append(("sample rate", f"{rate} Hz < {expected_rate} Hz: upsampled, nothing above {rate // 2} Hz"))
    if x.shape[1] > 1:
        found.append(("stereo", f"{x.shape[1]} channels (averaged to mono on read)"))
    peak = float(np.abs(x).max())
    if peak < 10 ** (SILENCE_DBFS / 20):
        found.append(("silent", f"peak {20 * np.log10(peak) if peak else -np.inf:.0f} dBFS < {SILENCE_DBFS:.0f} dBFS"))
    clipped = float((np.abs(x) >= FULL_SCALE).mean())
    if clipped > CLIPPED_FRACTION:
        found.append(("clipped", f"{clipped:.1%} of the samples at full scale"))
    return duration, rate, found


def _check_text(u: Utterance, vocab: CharVocabulary | None, labeled: bool) -> list[tuple[str, str]]:
    """Transcript problems: missing in a labeled split, nothing left after normalisation, letters outside the
    language's alphabet, characters normalisation drops (no spoken form), or characters the vocabulary lacks."""
    if u.text is None:
        return [("no transcript", "the split is labeled but this file has no transcript")] if labeled else []
    normalized = normalize(u.text, u.language)
    if not normalized.text:
        return [("empty transcript", f"{u.text!r} has no {u.language} letters")]
    found = []
    if normalized.foreign:
        found.append(("foreign letters", f"{' '.join(normalized.foreign)} outside the {u.language} alphabet: "
                                         "fine-tuning skips this transcript (--keep-foreign-letters keeps it)"))
    if normalized.dropped:
        found.append(("dropped characters", f"{' '.join(normalized.dropped)} have no spoken form here and are "
                                            "removed from the transcript"))
    if vocab is not None and (oov := vocab.oov_chars(normalized.text)):
        found.append(("oov characters", " ".join(sorted(oov)) + " become <unk>"))
    return found
