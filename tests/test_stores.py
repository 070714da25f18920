"""Corpora in the field's stores (Lhotse, Hugging Face datasets, WebDataset), written by those libraries' own
writers from the synthetic corpus, read as the folder layout is read: same utterances, same audio, same check, same
training batches; behind a URL too; a corrupt record skipped and counted."""

import http.server
import json
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from stores import STORES, write_store, write_webdataset
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.audio import read_audio
from wavadapt.data.batching import AudioDataset, filter_by_length, make_dataloader
from wavadapt.data.check import check_corpus
from wavadapt.data.corpora import open_corpus
from wavadapt.data.shard_stream import ShardStream, stream_batches
from wavadapt.data.stores.hf_datasets import TEXT_COLUMN_ENV
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CorpusError

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(synth_corpus):
    """The English train split as the folder layout (LibriSpeech) reads it."""
    return open_corpus(synth_corpus, "train", "en")


@pytest.fixture(scope="module")
def stores(folder, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    return {kind: write_store(kind, folder, root / kind) for kind in STORES}


def described(utterances):
    return [(u.id, u.text, u.language, u.speaker) for u in utterances]


@pytest.mark.parametrize("kind", STORES)
def test_a_store_reads_as_the_folder_layout(kind, folder, stores):
    got = open_corpus(stores[kind], "train", "en")
    assert described(got) == described(folder)
    for a, b in zip(got, folder, strict=True):
        assert np.array_equal(read_audio(a.audio), read_audio(b.audio))
    report, reference = check_corpus(got, progress=False), check_corpus(folder, progress=False)
    assert (report.num_files, report.rates, report.problems) == (reference.num_files, reference.rates, [])
    assert report.seconds == pytest.approx(reference.seconds)


@pytest.mark.parametrize("kind", STORES)
def test_training_batches_from_a_store_are_the_folder_layouts(kind, folder, stores):
    vocab = Vocabulary.build([u.text for u in folder], "en")

    def batches(utterances):
        dataset = AudioDataset(filter_by_length(utterances).kept, vocab)
        return list(make_dataloader(dataset, max_seconds_per_batch=12, seed=3))

    got, reference = batches(open_corpus(stores[kind], "train", "en")), batches(folder)
    assert len(got) == len(reference) > 1
    for a, b in zip(got, reference, strict=True):
        assert a["ids"] == b["ids"]
        assert torch.equal(a["waveforms"], b["waveforms"]) and torch.equal(a["labels"], b["labels"])


def test_fine_tuning_on_shards_trains_as_on_the_folder(synth_corpus, stores, tmp_path):
    runs = {}
    for name, data in (("folder", synth_corpus), ("shards", stores["webdataset"])):
        runs[name] = tmp_path / name
        result = runner.invoke(app, ["finetune", str(data), "--language", "en", "--model", "tiny", "--out",
                                     str(runs[name]), "--method", "top-n-adapters", "--top-n", "1", "--adapter-size",
                                     "8", "--max-updates", "3", "--max-seconds-per-batch", "8", "--valid-split", ""])
        assert result.exit_code == 0, result.output
    logs = [(run / "log.csv").read_text().splitlines() for run in runs.values()]
    losses = [[line.split(",")[1] for line in log[1:]] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) >= 1


def test_check_on_a_parquet_dataset_prints_the_folders_counts(synth_corpus, stores):
    reports = [runner.invoke(app, ["check", str(data), "--split", "train", "--language", "en", "--json"])
               for data in (synth_corpus, stores["hf-parquet"])]
    assert all(r.exit_code == 0 for r in reports), [r.output for r in reports]
    counts = [{k: v for k, v in json.loads(r.stdout).items() if k in ("num_files", "rates", "ok", "problems")}
              for r in reports]
    assert counts[0] == counts[1] and counts[0]["num_files"] > 1


def test_shards_stream_from_a_local_http_server(folder, stores):
    served = stores["webdataset"]
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        shards = sorted(p.name for p in served.glob("train-*.tar"))
        url = f"http://127.0.0.1:{server.server_port}/train-{{000000..{len(shards) - 1:06d}}}.tar"
        got = open_corpus(url, "train", "en")
        assert described(got) == described(folder)
        for a, b in zip(got, folder, strict=True):
            assert np.array_equal(read_audio(a.audio), read_audio(b.audio))
        urls = [f"http://127.0.0.1:{server.server_port}/{name}" for name in shards]  # training streams them too
        streamed = [i for item in stream_batches(ShardStream(urls, 30), 0) for i in item["batch"]["ids"]]
        assert sorted(streamed) == sorted(u.id for u in folder)
        with pytest.raises(CorpusError, match="cannot read the shard"):
            open_corpus(f"http://127.0.0.1:{server.server_port}/missing-000000.tar")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_corrupt_record_is_skipped_and_counted(folder, tmp_path, caplog):
    write_webdataset(folder, tmp_path, "train", per_shard=len(folder))
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard) as tar:
        audio = [m for m in tar.getmembers() if m.name.endswith(".flac")]
    with open(shard, "r+b") as f:  # the second sample's audio is overwritten by noise that is no FLAC
        f.seek(audio[1].offset_data)
        f.write(b"\x00not audio" * (audio[1].size // 10))
    got = open_corpus(tmp_path, "train", "en")
    assert len(got) == len(folder)
    report = check_corpus(got, progress=False)
    assert [(p.id, p.kind) for p in report.unusable] == [(folder[1].id, "unreadable")]
    assert report.unusable[0].path == f"{shard}:{audio[1].name}"
    kept = filter_by_length(got)
    assert kept.unreadable == [folder[1].id] and len(kept.kept) == len(folder) - 1
    dataset = AudioDataset(got)
    assert dataset[1] is None and dataset.stats.skipped == 1 and dataset[0] is not None

    cut = tmp_path / "cut"  # a shard cut off in its third sample's audio: the two before it are read
    cut.mkdir()
    data = shard.read_bytes()
    (cut / "train-000000.tar").write_bytes(data[: audio[2].offset_data + audio[2].size // 2])
    got = open_corpus(cut, "train", "en")
    assert [u.id for u in got][:2] == [folder[0].id, folder[1].id]
    assert not check_corpus(got[:1], progress=False).unusable
    assert all(p.kind in ("unreadable", "truncated") for p in check_corpus(got[2:], progress=False).unusable)


def test_the_shard_command_writes_what_reads_back(synth_corpus, tmp_path):
    for output_format in ("webdataset", "shar"):
        out = tmp_path / output_format
        result = runner.invoke(app, ["shard", str(synth_corpus), "--language", "en", "--split", "train,dev",
                                     "--format", output_format, "--shard-size", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        for split in ("train", "dev"):
            folder = open_corpus(synth_corpus, split, "en")
            got = open_corpus(out, split, "en")
            assert described(got) == described(folder)
            assert np.array_equal(read_audio(got[-1].audio), read_audio(folder[-1].audio))


def test_a_store_of_several_languages_gives_the_one_asked_for(synth_corpus, tmp_path):
    both = open_corpus(synth_corpus, "dev", "en") + open_corpus(synth_corpus, "dev", "es")  # Spanish is mp3
    write_store("hf-disk", both, tmp_path / "hf", split="dev")
    for language in ("en", "es"):
        got = open_corpus(tmp_path / "hf", "dev", language)
        assert described(got) == described([u for u in both if u.language == language])
    with pytest.raises(CorpusError, match="no utterances in 'it'.*en, es"):
        open_corpus(tmp_path / "hf", "dev", "it")


def test_the_text_column_is_chosen_by_option(folder, tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setenv(TEXT_COLUMN_ENV, "")  # the option sets it for the command's readers: restored after the test
    datasets.Dataset.from_dict({"audio": [str(u.path) for u in folder], "raw_transcription": [u.text for u in folder]}
                               ).cast_column("audio", datasets.Audio()).save_to_disk(tmp_path / "fleurs")
    unnamed = open_corpus(tmp_path / "fleurs")
    assert all(u.text is None for u in unnamed)  # no column of a known name
    assert [u.id for u in unnamed] == [u.id for u in folder]  # no id column: the audio file's name
    result = runner.invoke(app, ["--text-column", "raw_transcription", "check", str(tmp_path / "fleurs"),
                                 "--language", "en", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problems"] == []
    code, out, err = run_cli(capsys, "--text-column", "sentence", "check", tmp_path / "fleurs")
    assert code == 1 and out == "" and err == f"error: {tmp_path / 'fleurs'}: no text column 'sentence'; columns: " \
        "audio, raw_transcription\n"
