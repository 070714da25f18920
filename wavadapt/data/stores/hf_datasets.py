"""Hugging Face datasets as a corpus: a folder written by ``save_to_disk`` (a Dataset, or a DatasetDict with a folder
per split), or Parquet files (the hub's layout for Common Voice and most speech sets:
``data/<split>-NNNNN-of-NNNNN.parquet``).

The ``datasets`` library maps the Arrow files (Parquet is converted once into its cache, as ``load_dataset`` does);
the audio column is read undecoded (the encoded file's ``bytes``, or its ``path``) and decoded by wavadapt's gate,
so a bad row is named and skipped. The transcript is the column ``--text-column`` names, else the first of
``text``, ``sentence``, ``transcript``, ``transcription``, ``normalized_text``.
"""

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from wavadapt.data.records import Record
from wavadapt.data.stores.tar_shards import TEXT_KEYS
from wavadapt.data.utterance import UNKNOWN_LANGUAGE, Utterance
from wavadapt.errors import CorpusError

log = logging.getLogger("wavadapt.data")

TEXT_COLUMN_ENV = "WAVADAPT_TEXT_COLUMN"
"""Where ``wavadapt --text-column`` leaves its choice for every reader of the command."""
LANGUAGE_KEYS = ("language", "locale", "lang")
SPEAKER_KEYS = ("speaker_id", "speaker", "client_id")
ID_KEYS = ("id", "utt_id", "segment_id")


def hf_dataset(path: Path, split: str | None) -> tuple[str, str, str | None] | None:
    """``(kind, location, split)`` of the dataset ``path`` holds: ``disk`` (a ``save_to_disk`` folder) or
    ``parquet`` (a file, or a folder of files; the split picks ``<split>-*.parquet`` or ``<split>/``); None when
    it holds none."""
    if path.is_file():
        return ("parquet", str(path), None) if path.suffix == ".parquet" else None
    if not path.is_dir():
        return None
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "disk", str(path), None
    if (path / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in path.iterdir() if (d / "state.json").is_file())
        chosen = split or (splits[0] if len(splits) == 1 else "train")
        if chosen not in splits:
            raise CorpusError(f"{path}: no split {chosen!r} in this DatasetDict; found: {', '.join(splits)}")
        return "disk", str(path / chosen), None
    if not _parquet_files(path, None):
        return None
    if split is not None and not _parquet_files(path, split):
        raise CorpusError(f"{path}: no Parquet files of split {split!r} (<split>-*.parquet or <split>/*.parquet)")
    return "parquet", str(path), split


def _parquet_files(root: Path, split: str | None) -> list[Path]:
    """A folder's Parquet files, those of ``split`` (``<split>-*.parquet``, ``<split>/``) when it is given."""
    if root.is_file():
        return [root]
    return [f for f in sorted(root.rglob("*.parquet")) if split is None or f.name.startswith((f"{split}-", f"{split}."))
            or f.parent.name == split]


def read_hf_dataset(kind: str, location: str, split: str | None, text_column: str | None = None) -> list[Utterance]:
    """The utterances of a dataset :func:`hf_dataset` found, one per row, in row order."""
    ds = _dataset(kind, location, split)
    audio = audio_column(ds)
    text_column = text_column or os.environ.get(TEXT_COLUMN_ENV) or None
    if text_column is not None and text_column not in ds.column_names:
        raise CorpusError(f"{location}: no text column {text_column!r}; columns: {', '.join(ds.column_names)}")
    columns = {"text": (text_column,) if text_column else TEXT_KEYS, "language": LANGUAGE_KEYS,
               "speaker": SPEAKER_KEYS, "id": ID_KEYS}
    values = {role: _strings(ds, next((c for c in names if c in ds.column_names), None))
              for role, names in columns.items()}
    paths, name = _paths(ds, audio), _name(kind, location, split)
    utterances = []
    for i in range(len(ds)):
        utterance_id = values["id"][i] or (Path(paths[i]).stem if paths[i] else f"{Path(location).name}-{i:06d}")
        utterances.append(Utterance(utterance_id, Path(f"{name}[{i}]"), (values["text"][i] or "").strip() or None,
                                    values["language"][i] or UNKNOWN_LANGUAGE, values["speaker"][i],
                                    record=TableCell(kind, location, split, i, audio)))
    return utterances


def _strings(ds, column: str | None) -> list[str | None]:
    """A column's values as text, None where empty (or for every row when there is no such column)."""
    if column is None:
        return [None] * len(ds)
    return [None if v in (None, "") else str(v) for v in ds.select_columns([column])[column]]


def audio_column(ds) -> str:
    """The dataset's audio column: the one of the Audio type, else one named ``audio``."""
    from datasets import Audio

    found = [name for name, feature in ds.features.items() if isinstance(feature, Audio)]
    if not found and "audio" in ds.column_names:
        found = ["audio"]
    if len(found) != 1:
        raise CorpusError(f"{ds.info.dataset_name or 'dataset'}: expected one audio column, found "
                          f"{', '.join(found) or 'none'} among {', '.join(ds.column_names)}")
    return found[0]


def _paths(ds, audio: str) -> list[str | None]:
    """Each row's audio ``path`` (the original file name: its stem names the utterance), without the bytes."""
    try:
        return list(ds.select_columns([audio]).flatten().select_columns([f"{audio}.path"])[f"{audio}.path"])
    except (ValueError, KeyError):  # a column of plain bytes or paths
        return [None] * len(ds)


@dataclass(frozen=True)
class TableCell(Record):
    """The audio of one row of a dataset: the ``bytes`` of its audio column, or the file its ``path`` names."""

    kind: str
    location: str
    split: str | None
    row: int
    column: str

    @property
    def name(self) -> str:
        return f"{_name(self.kind, self.location, self.split)}[{self.row}]"

    def open(self) -> BinaryIO:
        import io

        cell = _dataset(self.kind, self.location, self.split)[self.row][self.column]
        if isinstance(cell, bytes):
            return io.BytesIO(cell)
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (None, cell)
        if data:
            return io.BytesIO(data)
        if path:  # relative to the dataset's folder when the file is there, as the hub's loaders resolve it
            beside = Path(self.location if Path(self.location).is_dir() else Path(self.location).parent) / path
            return open(beside if beside.is_file() else path, "rb")
        raise ValueError(f"column {self.column!r} holds neither audio bytes nor a path")


@lru_cache(maxsize=8)
def _dataset(kind: str, location: str, split: str | None):
    """The dataset, its audio columns undecoded; mapped once per process (each DataLoader worker maps its own)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if kind == "disk":
            ds = datasets.load_from_disk(location)
        else:
            files = [str(f) for f in _parquet_files(Path(location), split)]
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
    except (OSError, ValueError, FileNotFoundError) as e:
        raise CorpusError(f"{location}: not a dataset the datasets library can read ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise CorpusError(f"{location}: a DatasetDict; give one of its splits ({', '.join(ds)})")
    audio = audio_column(ds)
    if isinstance(ds.features[audio], datasets.Audio):
        ds = ds.cast_column(audio, datasets.Audio(decode=False))
    return ds


def _name(kind: str, location: str, split: str | None) -> str:
    return location if split is None else f"{location}:{split}"
