"""Batched transcription: length-sorted batches that mix tasks give each file the transcript it gets alone, in
input order, with word times; subtitles and JSON lines carry them; the command line takes manifests."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import run_cli
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.inference.engine import transcribe
from wavadapt.inference.formats import cues, subtitles
from wavadapt.inference.transcription import Request, Transcript, Word, transcribe_requests
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_backbone
from wavadapt.model.checkpoint import save_backbone, save_task
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

LAYER_NORM_CNN = {"feat_extract_norm": "layer", "conv_bias": True, "do_stable_layer_norm": True}


def _two_task_model(norm: str) -> CTCModel:
    """Two adapter tasks over different vocabularies, far from identity, so a row on the wrong task shows."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny", **(LAYER_NORM_CNN if norm == "layer" else {}))
    model = CTCModel(backbone).eval()
    for task, text in (("en", "the quick brown fox"), ("es", "el zorro marrón")):
        params = prepare(model, task, Vocabulary.build([text]), MethodConfig("adapters", adapter_size=16))
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def files(synth_corpus) -> list[Path]:
    return [u.path for split in ("train", "test") for lang in ("en", "es") for u in open_corpus(synth_corpus, split,
                                                                                                   lang)]


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_mixed_task_batches_give_each_file_its_own_transcript(files, norm):
    model = _two_task_model(norm)
    requests = [Request(f, "en" if i % 2 else "es") for i, f in enumerate(files)]
    batched = transcribe_requests(model, requests, max_seconds_per_batch=60)
    assert [t.path for t in batched] == [str(f) for f in files]  # input order, though run sorted by length
    for r, t in zip(requests, batched, strict=True):
        model.activate(r.task)
        assert t.error is None and t.task == r.task
        assert t.text == transcribe(model, read_audio(r.path)) and t.text
        assert t.duration == pytest.approx(len(read_audio(r.path)) / SAMPLE_RATE, abs=1e-3)
        assert all(0 <= w.start < w.end <= t.duration + 0.03 for w in t.words)
        assert " ".join(w.word for w in t.words) == t.text


def test_long_audio_is_windowed_and_its_word_times_run_on(files, tmp_path):
    model = _two_task_model("layer")
    x = np.concatenate([read_audio(f) for f in files[:4]])
    sf.write(tmp_path / "long.wav", x, SAMPLE_RATE, subtype="FLOAT")
    window = len(x) / SAMPLE_RATE / 2.5
    t, = transcribe_requests(model, [Request(tmp_path / "long.wav", "en")], chunk_seconds=window)
    model.activate("en")
    assert t.text == transcribe(model, x, chunk_seconds=window)
    starts = [w.start for w in t.words]
    assert starts == sorted(starts) and starts[-1] > window  # the later windows' words are placed after the first


def test_a_bad_file_keeps_its_place_and_says_why(files, tmp_path):
    model = _two_task_model("layer")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    results = transcribe_requests(model, [Request(files[0], "en"), Request(bad, "es"), Request(files[1], "en")])
    assert [t.error is None for t in results] == [True, False, True]
    assert str(bad) in results[1].error and results[1].text == ""
    with pytest.raises(WavadaptError, match="unknown task"):
        transcribe_requests(model, [Request(files[0], "fr")])


def test_subtitles_group_words_into_timed_cues():
    words = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.3) for i in range(14)] + [Word("late", 10.0, 10.4)]
    t = Transcript("a.wav", "en", " ".join(w.word for w in words), words, 11.0)
    assert [len(c) for c in cues(words)] == [12, 2, 1]  # at most 12 words, and a new cue after a pause
    srt = subtitles(t, "srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:05,800\nw0 w1") and "3\n00:00:10,000 --> 00:00:10,400\nlate" in srt
    vtt = subtitles(t, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:05.800\n")
    assert " ".join(re.findall(r"^w\d+.*$|^late$", vtt, re.M)) == t.text


def test_the_command_line_reads_a_manifest_with_a_task_per_file(files, tmp_path):
    model = _two_task_model("layer")
    tasks = [save_task(model, name, tmp_path / "tasks") for name in ("en", "es")]
    manifest = tmp_path / "list.tsv"
    manifest.write_text("path\ttask\n" + "".join(f"{f}\t{'en' if i % 2 else 'es'}\n" for i, f in enumerate(files)))
    backbone_dir = save_backbone(model.backbone, tmp_path / "backbone")  # the base weights the tasks trained on
    runner = CliRunner()
    result = runner.invoke(app, ["transcribe", str(manifest), "--model", str(backbone_dir), "--adapter", str(tasks[0]),
                                 "--adapter", str(tasks[1]), "--format", "jsonl", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    loaded = load_asr_model(backbone_dir, tasks)
    for i, (f, row) in enumerate(zip(files, rows, strict=True)):
        loaded.activate("en" if i % 2 else "es")
        assert row["path"] == str(f) and row["text"] == transcribe(loaded, read_audio(f)) and row["words"]
    result = runner.invoke(app, ["transcribe", str(files[0]), "--model", str(backbone_dir), "--adapter", str(tasks[0]),
                                 "--format", "srt", "--out", str(tmp_path / "subs")])
    assert result.exit_code == 0 and (tmp_path / "subs" / f"{files[0].stem}.srt").read_text().startswith("1\n")


def test_half_precision_is_a_gpu_option(files):
    model = _two_task_model("layer")
    with pytest.raises(WavadaptError, match="bf16 is autocast on a GPU"):
        transcribe_requests(model, [Request(files[0], "en")], precision="bf16")
    with pytest.raises(WavadaptError, match="choose from fp32, bf16, fp16"):
        transcribe_requests(model, [Request(files[0], "en")], precision="int8")


def test_the_device_is_chosen_or_refused_in_one_line(files, tmp_path, capsys, device):
    task = save_task(_two_task_model("group"), "en", tmp_path / "tasks")  # on the tiny preset's weights
    common = ["transcribe", files[0], "--model", "tiny", "--adapter", task, "--format", "jsonl"]
    code, out, err = run_cli(capsys, *common, "--device", device.type)
    assert code == 0 and json.loads(out)["text"] is not None
    code, out, err = run_cli(capsys, *common, "--device", "tpu")
    assert code == 1 and out == "" and err == "error: --device 'tpu': choose auto, cpu, cuda or cuda:N\n"
    code, out, err = run_cli(capsys, *common, "--device", f"cuda:{torch.cuda.device_count()}")  # one past the last
    assert code == 1 and out == "" and err.startswith(f"error: --device cuda:{torch.cuda.device_count()}: this machine "
                                                      f"has {torch.cuda.device_count()} CUDA device(s)")


def test_subtitles_of_same_named_files_mirror_their_folders_and_never_overwrite(files, tmp_path, capsys):
    model = _two_task_model("group")
    task = save_task(model, "en", tmp_path / "tasks")
    backbone = save_backbone(model.backbone, tmp_path / "backbone")
    inputs = []
    for folder, source in (("a", files[0]), ("b", files[1])):
        (tmp_path / "in" / folder).mkdir(parents=True)
        inputs.append(tmp_path / "in" / folder / "x.wav")
        sf.write(inputs[-1], read_audio(source), SAMPLE_RATE)
    code, out, err = run_cli(capsys, "transcribe", *inputs, "--model", backbone, "--adapter", task, "--format", "srt",
                             "--out", tmp_path / "subs")
    assert code == 0, err
    written = [tmp_path / "subs" / "a" / "x.srt", tmp_path / "subs" / "b" / "x.srt"]
    assert out.split() == [str(p) for p in written]
    loaded = load_asr_model(backbone, [task])
    for path, audio in zip(written, inputs, strict=True):
        [transcript] = transcribe_requests(loaded, [Request(audio, "en")])
        assert path.read_text() == subtitles(transcript, "srt")

    sf.write(tmp_path / "in" / "a" / "x.flac", read_audio(files[2]), SAMPLE_RATE)
    code, out, err = run_cli(capsys, "transcribe", inputs[0], tmp_path / "in" / "a" / "x.flac", "--model", backbone,
                             "--adapter", task, "--format", "vtt", "--out", tmp_path / "clash")
    assert code == 1 and not (tmp_path / "clash").exists()
    assert err.strip() == (f"error: {inputs[0]} and {tmp_path / 'in' / 'a' / 'x.flac'} would both be written to "
                           f"{tmp_path / 'clash' / 'x.vtt'}: rename one, or transcribe them apart")
