"""A corpus written into the field's data libraries' formats by those libraries' own writers: Lhotse's CutSet and
Shar writers, datasets' save_to_disk and Parquet (with the audio embedded, as the hub holds it), WebDataset's
TarWriter."""

import json
from pathlib import Path

from wavadapt.data.utterance import Utterance

STORES = ("lhotse-cuts", "lhotse-manifests", "lhotse-shar", "hf-disk", "hf-parquet", "webdataset")


def write_store(kind: str, utterances: list[Utterance], root: Path, split: str = "train") -> Path:
    """Write ``utterances`` (audio files with transcripts) as ``kind``; returns the path to give wavadapt."""
    root.mkdir(parents=True, exist_ok=True)
    if kind.startswith("lhotse"):
        return _lhotse(kind, utterances, root, split)
    if kind.startswith("hf"):
        return _hf(kind, utterances, root, split)
    if kind == "webdataset":
        return write_webdataset(utterances, root, split, per_shard=3)
    raise ValueError(kind)


def _lhotse(kind: str, utterances: list[Utterance], root: Path, split: str) -> Path:
    from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings = [Recording.from_file(u.path, recording_id=u.id) for u in utterances]
    supervisions = [SupervisionSegment(u.id, u.id, 0.0, r.duration, text=u.text, language=u.language,
                                       speaker=u.speaker) for u, r in zip(utterances, recordings, strict=True)]
    if kind == "lhotse-manifests":
        RecordingSet.from_recordings(recordings).to_file(root / f"corpus_recordings_{split}.jsonl.gz")
        SupervisionSet.from_segments(supervisions).to_file(root / f"corpus_supervisions_{split}.jsonl.gz")
        return root
    cuts = CutSet.from_cuts(MonoCut(u.id, 0.0, r.duration, 0, recording=r, supervisions=[s])
                            for u, r, s in zip(utterances, recordings, supervisions, strict=True))
    if kind == "lhotse-shar":
        (root / split).mkdir()
        cuts.to_shar(root / split, fields={"recording": "flac"}, shard_size=3)
        return root
    cuts.to_file(root / f"corpus_cuts_{split}.jsonl.gz")
    return root


def _hf(kind: str, utterances: list[Utterance], root: Path, split: str) -> Path:
    import datasets
    from datasets.table import embed_table_storage

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({
        "audio": [str(u.path) for u in utterances], "text": [u.text for u in utterances],
        "id": [u.id for u in utterances], "language": [u.language for u in utterances],
        "speaker_id": [u.speaker for u in utterances],
    }).cast_column("audio", datasets.Audio())
    if kind == "hf-disk":
        datasets.DatasetDict({split: ds}).save_to_disk(root)
        return root
    # The hub's Parquet holds the audio's bytes: embedded as push_to_hub embeds them.
    embedded = ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    (root / "data").mkdir()
    embedded.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def write_webdataset(utterances: list[Utterance], root: Path, split: str, per_shard: int) -> Path:
    """Shards ``root/<split>-NNNNNN.tar`` by webdataset.TarWriter: each sample a .flac (or the file's own
    container), a .txt transcript and a .json of the rest."""
    from webdataset import TarWriter

    for start in range(0, len(utterances), per_shard):
        with TarWriter(str(root / f"{split}-{start // per_shard:06d}.tar")) as sink:
            for u in utterances[start : start + per_shard]:
                meta = {"id": u.id, "language": u.language, "speaker": u.speaker}
                sink.write({"__key__": f"sample{start:04d}-{u.id.replace('.', '_')}", Path(u.path).suffix[1:]:
                            Path(u.path).read_bytes(), "txt": u.text, "json": json.dumps(meta)})
    return root
