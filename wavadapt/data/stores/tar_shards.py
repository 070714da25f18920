"""WebDataset tar shards as a corpus, and any corpus written as shards.

A sample is the tar members that share a key (the member's name up to the first dot of its file name, as
WebDataset groups them): one audio member (``.flac``, ``.wav`` ...) and its transcript in a ``.txt`` member or in a
``.json`` one (``text``, ``language``, ``speaker``, ``id``), as SpeechBrain's and NeMo's tarred sets hold them.

Local shards are indexed, not read: each utterance's record is its audio member's byte offset, so training reads
samples in any order. Shards behind a URL (``https://``, ``s3://`` ... through fsspec) are read once, in order,
by WebDataset's tar iterator, their audio kept in memory.
"""

import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from braceexpand import braceexpand

from wavadapt.data.audio import AUDIO_SUFFIXES
from wavadapt.data.records import InMemory, Record, TarMember, is_url
from wavadapt.data.stores.audio_bytes import encoded_audio
from wavadapt.data.utterance import UNKNOWN_LANGUAGE, Utterance
from wavadapt.errors import AudioError, CorpusError

log = logging.getLogger("wavadapt.data")

TEXT_KEYS = ("text", "sentence", "transcript", "transcription", "normalized_text")
"""Where a sample's ``.json`` (or a dataset's row) holds its transcript, first match wins."""


def shard_paths(path: str, split: str | None) -> list[str] | None:
    """The shards ``path`` names: a ``.tar`` file, a brace pattern (``train-{000000..000009}.tar``) or URL, a folder
    of ``.tar`` files, or a folder holding ``<split>/*.tar`` or ``<split>-*.tar``; None when it names no shards."""
    if "{" in path or is_url(path):
        return list(braceexpand(path)) if path.endswith(".tar") or "{" in path else None
    p = Path(path)
    if p.is_file():
        return [path] if p.suffix == ".tar" else None
    if not p.is_dir():
        return None
    if split and (p / split).is_dir() and (found := sorted((p / split).glob("*.tar"))):
        return [str(f) for f in found]
    found = sorted(p.glob("*.tar"))
    if split and (named := [f for f in found if f.name.startswith(f"{split}-") or f.name.startswith(f"{split}.")]):
        return [str(f) for f in named]
    if found and not any(f.name.startswith(("cuts.", "recording.")) for f in found):  # not Lhotse Shar's tars
        return [str(f) for f in found]
    return None


def read_shards(shards: list[str]) -> list[Utterance]:
    """The utterances of WebDataset shards: local ones indexed, remote ones read once."""
    utterances = []
    for shard in shards:
        samples = _remote_samples(shard) if is_url(shard) else _local_samples(shard)
        for key, audio, meta in samples:
            utterances.append(_utterance(key, audio, meta))
    return utterances


def _utterance(key: str, audio: Record, meta: dict) -> Utterance:
    text = next((str(meta[k]) for k in TEXT_KEYS if meta.get(k) not in (None, "")), None)
    return Utterance(id=str(meta.get("id") or key), path=Path(audio.name), text=text.strip() if text else None,
                     language=str(meta.get("language") or UNKNOWN_LANGUAGE), speaker=meta.get("speaker") or None,
                     record=audio)


def _local_samples(shard: str) -> Iterator[tuple[str, Record, dict]]:
    """(key, audio member, metadata) of each sample of a local shard, from its tar headers and small members."""
    from webdataset.tariterators import base_plus_ext  # a second to import: only where shards are read

    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            try:
                for member in tar:
                    key, suffix = base_plus_ext(member.name)  # WebDataset's own grouping rule
                    if member.isfile() and key is not None:
                        groups.setdefault(key, {})[suffix.lower()] = member
            except (tarfile.TarError, OSError) as e:  # a cut-off shard: what came before it still counts
                log.warning("%s: read %d samples, then %s: the rest of the shard is skipped", shard, len(groups), e)
            for key, members in groups.items():
                audio = next((m for suffix, m in members.items() if f".{suffix}" in AUDIO_SUFFIXES), None)
                if audio is None:
                    log.warning("skipping %s:%s: no audio member (%s)", shard, key, ", ".join(members))
                    continue
                meta = _metadata(shard, key, {s: tar.extractfile(m).read() for s, m in members.items()
                                              if s in ("txt", "json")})
                yield key, TarMember(shard, audio.name, audio.offset_data, audio.size), meta
    except (tarfile.TarError, OSError) as e:
        raise CorpusError(f"{shard}: not a readable tar file ({e})") from None


def _remote_samples(url: str) -> Iterator[tuple[str, Record, dict]]:
    """(key, audio bytes, metadata) of each sample of a shard behind an fsspec URL, read once in order."""
    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    read = 0
    try:
        with fsspec.open(url, "rb") as stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                key, read = sample["__key__"], read + 1
                audio = next((s for s in sample if f".{s}" in AUDIO_SUFFIXES), None)
                if audio is None:
                    log.warning("skipping %s:%s: no audio member", url, key)
                    continue
                yield key, InMemory(f"{url}:{key}.{audio}", sample[audio]), _metadata(url, key, sample)
    except (OSError, ValueError, tarfile.TarError) as e:  # fsspec's HTTP errors are OSErrors, aiohttp's ValueErrors
        if not read:
            raise CorpusError(f"{url}: cannot read the shard ({e})") from None
        log.warning("%s: read %d samples, then %s: the rest of the shard is skipped", url, read, e)


def _metadata(shard: str, key: str, members: dict) -> dict:
    """A sample's ``.json`` fields, with its ``.txt`` as the text where there is one."""
    meta = {}
    if members.get("json"):
        try:
            meta = json.loads(members["json"])
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("%s:%s.json: not JSON (%s); the sample has no metadata", shard, key, e)
        meta = meta if isinstance(meta, dict) else {}
    if members.get("txt") is not None:
        meta["text"] = members["txt"].decode("utf-8", errors="replace")
    return meta


def write_shards(utterances: Iterable[Utterance], out: Path, split: str, per_shard: int) -> tuple[list[Path], int]:
    """Write ``utterances`` as WebDataset shards ``out/<split>-NNNNNN.tar`` of ``per_shard`` samples: each one's audio
    as stored (or, for a span of a recording, that span as FLAC) with a ``.json`` of its id, text, language and
    speaker. An unreadable file is skipped and named. Returns the shards and the number of utterances written."""
    from webdataset import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    pattern, written = str(out / f"{split}-%06d.tar"), 0
    with ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for u in utterances:
            try:
                data, suffix = encoded_audio(u)
            except AudioError as e:
                log.warning("skipping %s: %s", u.id, e)
                continue
            meta = {"id": u.id, "text": u.text, "language": u.language, "speaker": u.speaker}
            sink.write({"__key__": _safe_key(u.id), suffix: data, "json": json.dumps(meta, ensure_ascii=False)})
            written += 1
        shards = sink.shard
    return [Path(pattern % i) for i in range(shards)], written


def _safe_key(utterance_id: str) -> str:
    """A WebDataset key: no dots (they start the extension) and no leading slash."""
    return utterance_id.replace(".", "_").lstrip("/")
