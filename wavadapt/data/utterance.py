"""One utterance of a corpus, whatever layout it came from (`wavadapt.data.corpora`, `wavadapt.data.stores`)."""

from dataclasses import dataclass
from pathlib import Path

from wavadapt.data.records import Record

UNKNOWN_LANGUAGE = "und"  # ISO 639-2 "undetermined", for manifests that do not say


@dataclass(frozen=True)
class Utterance:
    """One recording and what the corpus says about it.

    ``num_samples`` is the length at 16 kHz when the layout records it (fairseq manifests), else None.
    ``text`` is None for unlabeled audio (pre-training splits, Common Voice rows without a sentence).
    ``raw_format`` says how to read a headerless PCM file (``s16le:16000``, see audio.RawFormat).
    """

    id: str
    path: Path
    text: str | None
    language: str
    speaker: str | None = None
    num_samples: int | None = None
    raw_format: str | None = None
    task: str | None = None
    """The task to transcribe it with, where a manifest names one (a ``task`` column)."""
    record: Record | None = None
    """Where the audio lies when it is not the file ``path`` (a tar shard's member, a dataset's row, a span of a
    recording); ``path`` then only names it."""

    @property
    def audio(self) -> "Path | Record":
        """What the audio gate reads: the record, else the file."""
        return self.record or self.path


def path_id(path: str) -> str:
    """The id of an utterance that its corpus does not name: its path as the manifest writes it, without the
    suffix (``cabin1/nl/k1-pap.ogg`` -> ``cabin1/nl/k1-pap``), unique where file names repeat across folders."""
    return Path(path).with_suffix("").as_posix()
