"""Training from streamed WebDataset shards: every record once per epoch across readers (data-loader worker
processes and ranks), exact resume from the saved position, a bad record skipped and counted, and fine-tuning that
streams and resumes bit for bit."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from stores import write_webdataset
from test_train import make_run, snapshot
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.corpora import open_corpus
from wavadapt.data.shard_stream import Shards, ShardStream, stream_batches
from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.training.finetune import ctc_objective
from wavadapt.training.loop import Trainer


@pytest.fixture(scope="module")
def corpus(synth_corpus):
    return [u for split in ("train", "dev", "test") for u in open_corpus(synth_corpus, split, "en")]


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_webdataset(corpus, root, "train", per_shard=2)
    return sorted(str(p) for p in root.glob("train-*.tar"))


def epoch(stream: ShardStream, workers: int) -> list[dict]:
    return list(stream_batches(stream, workers))


def test_every_record_is_read_once_per_epoch_across_workers_and_ranks(corpus, shards):
    assert len(shards) >= 4
    seen = Counter()
    readers = set()
    for rank in (0, 1):
        stream = ShardStream(shards, 8, rank=rank, world_size=2, seed=5)
        for item in epoch(stream, workers=2):  # two worker processes per rank: four readers
            seen.update(item["batch"]["ids"])
            readers.add(item["reader"])
    assert readers == {0, 1, 2, 3}
    assert seen == Counter(u.id for u in corpus)  # each once: disjoint, and together the whole epoch
    stream = ShardStream(shards, 8, seed=5)
    stream.set_epoch(1)
    assert sorted(i for item in epoch(stream, 0) for i in item["batch"]["ids"]) == sorted(seen)
    with pytest.raises(WavadaptError, match=f"{len(shards)} shards for {2 * len(shards)} readers"):
        epoch(ShardStream(shards, 8, world_size=len(shards)), workers=2)


def test_a_resumed_epoch_gives_each_reader_the_batches_it_had_left(shards):
    stream = ShardStream(shards, 6, seed=1, buffer_size=3)
    whole = epoch(stream, workers=2)
    consumed = whole[: len(whole) // 2]
    position = {}
    for item in consumed:
        position[item["reader"]] = item["number"] + 1
    stream.resume_at(position)
    rest = epoch(stream, workers=2)

    def by_reader(items):
        return {(i["reader"], i["number"]): (i["batch"]["ids"], i["batch"]["waveforms"]) for i in items}

    expected = by_reader(whole[len(whole) // 2:])
    got = by_reader(rest)
    assert got.keys() == expected.keys() and rest
    assert all(got[k][0] == expected[k][0] and torch.equal(got[k][1], expected[k][1]) for k in got)


def test_a_bad_record_is_skipped_and_counted(corpus, tmp_path):
    write_webdataset(corpus[:4], tmp_path, "train", per_shard=4)
    shard = tmp_path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"fLaC", data.index(b"fLaC") + 4)  # the second sample's FLAC stream
    data[start + 200 : start + 4000] = bytes(3800)  # its frames zeroed: the header reads, decoding fails
    shard.write_bytes(bytes(data))
    batches = [item["batch"] for item in epoch(ShardStream([str(shard)], 30, seed=0), 0)]
    assert sum(len(b["ids"]) for b in batches if b) == 3
    assert sum(b["num_skipped"] for b in batches if b) == 1


def test_fine_tuning_streams_and_resumes_bit_for_bit(synth_corpus, corpus, shards, tmp_path):
    model, params, _, config = make_run(synth_corpus, "adapters", max_updates=6, max_seconds_per_batch=6)
    vocab = Vocabulary.build([u.text for u in corpus], "en")

    def stream():
        return ShardStream(shards, 6, vocab, "en", buffer_size=4, seed=0)

    Trainer(model, params, ctc_objective(model), stream(), config, tmp_path / "straight").train()
    straight = snapshot(model)
    model, params, _, config = make_run(synth_corpus, "adapters", max_updates=6, max_seconds_per_batch=6)
    Trainer(model, params, ctc_objective(model), stream(), config, tmp_path / "split").train(until=4)  # "crash"
    model, params, _, config = make_run(synth_corpus, "adapters", max_updates=6, max_seconds_per_batch=6)
    trainer = Trainer(model, params, ctc_objective(model), stream(), config, tmp_path / "split")
    trainer.resume(tmp_path / "split" / "checkpoints" / "last.pt")
    assert [r["update"] for r in trainer.train()] == [5, 6]
    assert all(torch.equal(straight[k], v) for k, v in model.state_dict().items())


def test_finetune_stream_on_the_command_line(synth_corpus, shards, tmp_path, capsys):
    code, out, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en", "--model", "tiny", "--out",
                             tmp_path / "x", "--stream", "--valid-split", "")
    assert code == 1 and err == f"error: --stream reads WebDataset shards: {synth_corpus} holds none of split train " \
        "(write them with wavadapt shard)\n"
    data = str(Path(shards[0]).parent)
    result = CliRunner().invoke(app, ["finetune", data, "--language", "en", "--model", "tiny", "--out",
                                      str(tmp_path / "run"), "--stream", "--method", "top-n-adapters", "--top-n", "1",
                                      "--max-updates", "2", "--max-seconds-per-batch", "8", "--valid-split", ""])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["streamed"] is True and run["train_utterances"] == len(Shards(shards).listing())
    assert (tmp_path / "run" / "adapter.en.safetensors").is_file()


def test_pretrain_streams_too(shards, tmp_path):
    result = CliRunner().invoke(app, ["pretrain", str(Path(shards[0]).parent), "--language", "en", "--split", "train",
                                      "--model", "tiny", "--out", str(tmp_path / "run"), "--stream",
                                      "--max-updates", "2", "--crop-seconds", "2", "--max-seconds-per-batch", "8"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["streamed"] is True


def test_two_torchrun_processes_stream_their_own_shards(shards, tmp_path):
    """Two CPU processes (gloo) fine-tune from one folder of shards; the checkpoint keeps each rank's readers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                    "wavadapt", "finetune", str(Path(shards[0]).parent), "--language", "en", "--model", "tiny",
                    "--out", str(tmp_path / "run"), "--stream", "--method", "top-n-adapters", "--top-n", "1",
                    "--max-updates", "3", "--max-seconds-per-batch", "6", "--valid-split", "", "--no-progress"],
                   check=True, env=env, timeout=300, capture_output=True)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    readers = [set(s["position"]) for s in state["streams"]]
    assert len(readers) == 2 and readers[0] and readers[1] and not readers[0] & readers[1]
    assert (tmp_path / "run" / "adapter.en.safetensors").is_file()


def test_a_stream_with_nothing_usable_is_refused_not_awaited(synth_corpus, shards, tmp_path):
    model, params, _, config = make_run(synth_corpus, "adapters", max_updates=2)
    stream = ShardStream(shards, 6, language="xx", seed=0)  # every record is English
    with pytest.raises(WavadaptError, match="gave this process no usable utterance"):
        Trainer(model, params, ctc_objective(model), stream, config, tmp_path).train()
