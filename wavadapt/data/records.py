"""Audio held inside something else: a member of a tar shard, a span of a longer recording, a file behind a URL,
bytes already in memory (and, in `wavadapt.data.stores.hf_datasets`, a cell of an Arrow table).

A record is small and picklable (it names where its bytes are, it does not hold them, except :class:`InMemory`), so
DataLoader workers open it themselves. The audio gate (`wavadapt.data.audio`) decodes what :meth:`Record.open`
gives as it decodes a file, and names the record by :attr:`Record.name` in every message.
"""

import io
import re
from dataclasses import dataclass
from typing import BinaryIO


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL fsspec opens (``https://``, ``s3://``, ``file://`` ...) rather than a local path."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", path) is not None


class Record:
    """Where one utterance's encoded audio (a FLAC, WAV, MP3 ... file's bytes) lies."""

    name: str
    """How messages name it: ``shards/train-000003.tar:utt7.flac``."""
    span: tuple[float, float] | None = None
    """(offset, duration) in seconds when the utterance is a part of the audio, else None."""

    def open(self) -> BinaryIO:
        """A seekable binary file of the encoded audio (raises OSError or ValueError when it cannot)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TarMember(Record):
    """A member of a local tar file (WebDataset shards, Lhotse Shar), read by its byte offset."""

    tar: str
    member: str
    offset: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.tar}:{self.member}"

    def open(self) -> BinaryIO:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) < self.size:
            raise ValueError(f"the tar file ends {self.size - len(data)} bytes into this member (truncated shard)")
        return io.BytesIO(data)


@dataclass(frozen=True)
class FileSpan(Record):
    """A span of an audio file (a Lhotse cut of a longer recording)."""

    path: str
    offset: float
    duration: float

    @property
    def name(self) -> str:
        return f"{self.path}[{self.offset:.2f}s+{self.duration:.2f}s]"

    @property
    def span(self) -> tuple[float, float]:
        return self.offset, self.duration

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


@dataclass(frozen=True)
class Remote(Record):
    """A whole audio file behind an fsspec URL (``https://``, ``s3://`` ...), fetched when read."""

    url: str
    offset: float | None = None
    duration: float | None = None

    @property
    def name(self) -> str:
        return self.url

    @property
    def span(self) -> tuple[float, float] | None:
        return None if self.offset is None else (self.offset, self.duration)

    def open(self) -> BinaryIO:
        import fsspec

        with fsspec.open(self.url, "rb") as f:
            return io.BytesIO(f.read())


@dataclass(frozen=True, eq=False)
class InMemory(Record):
    """Encoded audio already read (a streamed shard's sample, a manifest's inline bytes)."""

    name: str
    data: bytes

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)
