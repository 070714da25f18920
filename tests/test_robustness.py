"""No input crashes a command: the bad-file set (tests/bad_files.py) mixed with good files, run through check,
transcribe, evaluate and fine-tuning, and user mistakes at the command line. Every bad file is named exactly
once, every good one still processed, and the user sees one ``error:`` line, never a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bad_files import BAD_TRANSCRIPTS, TRANSCRIPT_KINDS, UNUSABLE, WARNED, write_bad_files
from cli_runner import run_cli

from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.check import check_corpus
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.evaluation.corpus import evaluate
from wavadapt.inference.engine import cut_at_pauses, transcribe
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_backbone
from wavadapt.model.checkpoint import save_task
from wavadapt.model.ctc import CTCModel


def bad_id(name: str) -> str:
    """The manifest's id of a bad file (its path, ``bad/<name>``, without the suffix)."""
    return f"bad/{Path(name).stem}"


GOOD_IDS = {f"good/{utt_id}" for utt_id in BAD_TRANSCRIPTS}


@pytest.fixture(scope="module")
def mixed(synth_corpus, tmp_path_factory) -> SimpleNamespace:
    """A TSV manifest of the synthetic corpus's English files, the bad-file set and the bad transcripts, and a
    task file for the ``tiny`` preset (the weights load_asr_model("tiny") draws)."""
    root = tmp_path_factory.mktemp("mixed")
    good = [u for split in ("train", "dev", "test") for u in open_corpus(synth_corpus, split, "en")]
    (root / "good").mkdir()
    rows = []
    for u in good:
        shutil.copy(u.path, root / "good" / u.path.name)
        rows.append((f"good/{u.path.name}", u.text))
    bad = write_bad_files(root / "bad", read_audio(good[0].path))
    rows += [(f"bad/{name}", good[0].text) for name in bad]
    for utt_id, text in BAD_TRANSCRIPTS.items():
        shutil.copy(good[0].path, root / "good" / f"{utt_id}.flac")
        rows.append((f"good/{utt_id}.flac", text))
    manifest = root / "train.tsv"
    manifest.write_text("path\ttext\tlanguage\n" + "".join(f"{p}\t{t}\ten\n" for p, t in rows), encoding="utf-8")

    asr = load_asr_model("tiny", [])
    asr.add_task("en", Vocabulary.build([u.text for u in good], "en"))
    task_file = save_task(asr, "en", root / "task")
    return SimpleNamespace(root=root, manifest=manifest, good=[root / "good" / u.path.name for u in good],
                           bad=bad, task_file=task_file, speech=read_audio(good[0].path))


def test_the_bad_set_holds_every_class_of_the_issue(mixed):
    assert len(mixed.bad) == 20 and len(mixed.good) >= 5
    assert mixed.bad["dangling.wav"].is_symlink() and not mixed.bad["dangling.wav"].exists()
    assert not mixed.bad["missing.wav"].exists() and mixed.bad["directory.wav"].is_dir()


def test_check_names_every_bad_file_once_and_exits_1(mixed, capsys):
    code, out, err = run_cli(capsys, "check", mixed.manifest)
    assert code == 1 and "Traceback" not in err
    problem_lines = [line for line in out.splitlines() if "\t" in line]  # path<TAB>problems
    expected = {**{f"bad/{n}": kind for n, kind in {**UNUSABLE, **WARNED}.items()},
                **{f"good/{i}.flac": kind for i, kind in TRANSCRIPT_KINDS.items()}}
    for path, kind in expected.items():
        lines = [line for line in problem_lines if line.startswith(str(mixed.root / path) + "\t")]
        assert len(lines) == 1, (path, lines)
        assert lines[0].split("\t")[1].startswith(kind + ":"), (path, lines[0])
    assert len(problem_lines) == len(expected)  # and not a word about the good files
    assert out.splitlines()[0].endswith(f"{len(UNUSABLE)} unusable, {len(WARNED) + len(TRANSCRIPT_KINDS)} warnings")


def test_check_gives_causes_in_plain_words(mixed):
    report = check_corpus(open_corpus(mixed.manifest))
    detail = {Path(p.path).name: p.detail for p in report.problems}
    assert "headerless PCM" in detail["headerless.raw"] and "--raw-format" in detail["headerless.raw"]
    assert detail["directory.wav"] == "is a directory, not an audio file"
    whole = f"{len(mixed.speech) / SAMPLE_RATE:.2f} s"
    assert detail["cut-copy.wav"] == f"its header declares {whole} of audio, the file holds 0.09 s"
    assert detail["huge-header.wav"] == "its header declares 18.6 h of audio, the file holds 0.03 s"
    assert detail["dangling.wav"].startswith("broken symbolic link")
    assert detail["missing.wav"] == "no such file" and detail["zero-length.wav"] == "empty file (0 bytes)"
    assert "lost sync" in detail["truncated.flac"] and "Format not recognised" in detail["text.wav"]
    assert "dBFS" in detail["silent.wav"] and "full scale" in detail["clipped.wav"]


def test_headerless_pcm_reads_only_with_an_explicit_format(mixed, capsys, tmp_path):
    raw = mixed.bad["headerless.raw"]
    x = read_audio(raw, raw="s16le:16000")
    np.testing.assert_allclose(x, np.clip(mixed.speech, -1, 1), atol=1 / 32767)
    manifest = tmp_path / "raw.tsv"
    manifest.write_text(f"path\ttext\n{raw}\thello\n", encoding="utf-8")
    assert run_cli(capsys, "check", manifest)[0] == 1
    code, out, _ = run_cli(capsys, "check", manifest, "--raw-format", "s16le:16000")
    assert code == 0 and str(raw) not in out
    manifest.write_text(f"path\ttext\traw_format\n{raw}\thello\ts16le:16000\n", encoding="utf-8")  # per file
    assert run_cli(capsys, "check", manifest)[0] == 0
    # Big-endian is a different signal: the format is taken as given, never guessed.
    assert not np.allclose(read_audio(raw, raw="s16be:16000"), x, atol=1e-3)


def test_check_accepts_a_task_file_as_vocabulary(mixed, capsys):
    for vocab in (mixed.task_file, mixed.task_file.with_suffix(".safetensors")):
        code, out, err = run_cli(capsys, "check", mixed.manifest, "--vocab", vocab)
        assert code == 1 and "error:" not in err and "oov characters" not in out


def test_transcribe_prints_every_readable_file_and_names_each_bad_one(mixed, capsys):
    files = [*mixed.good, *mixed.bad.values()]
    code, out, err = run_cli(capsys, "transcribe", "--model", "tiny", "--adapter", mixed.task_file, *files)
    assert code == 1 and "Traceback" not in err
    readable = [*mixed.good, *(mixed.bad[n] for n in WARNED)]
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(f) for f in readable]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(UNUSABLE)
    for name in UNUSABLE:
        assert sum(str(mixed.bad[name]) in line for line in errors) == 1, name
    asr = load_asr_model("tiny", [mixed.task_file])
    texts = dict(line.split("\t") for line in out.splitlines())
    for f in [*mixed.good, mixed.bad["stereo.wav"], mixed.bad["8khz.wav"]]:
        assert texts[str(f)] == transcribe(asr, read_audio(f))


def test_long_audio_is_decoded_in_windows_cut_in_pauses(mixed):
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    x = np.concatenate([mixed.speech, pause, mixed.speech])
    window = (len(mixed.speech) + len(pause)) / SAMPLE_RATE
    pieces = cut_at_pauses(x, window, search_seconds=1.0)
    assert len(pieces) == 2 and len(mixed.speech) <= len(pieces[0]) <= len(mixed.speech) + len(pause)  # in the pause
    np.testing.assert_array_equal(np.concatenate(pieces), x)
    assert all(len(p) <= window * SAMPLE_RATE for p in cut_at_pauses(np.tile(x, 5), window))
    asr = load_asr_model("tiny", [mixed.task_file])
    texts = [transcribe(asr, p, chunk_seconds=None) for p in pieces]
    assert transcribe(asr, x, chunk_seconds=window) == " ".join(t for t in texts if t)


def test_evaluate_scores_the_readable_files_and_lists_the_rest(mixed, caplog):
    asr = load_asr_model("tiny", [mixed.task_file])
    with caplog.at_level("WARNING", logger="wavadapt"):
        result = evaluate(asr, open_corpus(mixed.manifest))
    assert sorted(result.skipped) == sorted(bad_id(n) for n in UNUSABLE)
    assert sorted(result.no_transcript) == sorted(GOOD_IDS)
    assert result.utterances == len(mixed.good) + len(WARNED)
    for name in UNUSABLE:  # named once, by the reader that found it
        assert sum(str(mixed.bad[name]) in r.getMessage() for r in caplog.records) == 1, name


def test_finetuning_completes_with_the_bad_files_skipped(mixed, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "finetune", mixed.manifest, "--language", "en", "--model", "tiny",
                             "--method", "adapters", "--adapter-size", "16", "--out", out_dir, "--max-updates", "2",
                             "--valid-split", "", "--max-seconds-per-batch", "200", "--lr", "1e-3")  # an epoch a batch
    assert code == 0 and "Traceback" not in err, err[-2000:]
    run = json.loads((out_dir / "run.json").read_text())
    header_unreadable = {bad_id(n) for n, kind in UNUSABLE.items() if kind in ("unreadable", "truncated")} - {
        "bad/truncated"}  # a cut-off WAV is found by its header, a cut-off FLAC only when decoded
    assert set(run["skipped"]["unreadable"]) == header_unreadable
    assert set(run["skipped"]["no_transcript"]) == GOOD_IDS
    assert set(run["skipped"]["outside_length"]) == {"bad/header-only", "bad/ten-minutes", "bad/100-samples"}
    # Files whose header reads but whose samples do not are skipped while training, named once each.
    at_decode = ["truncated.flac", "nan.wav", "inf.wav"]
    for name in at_decode:
        assert sum(str(mixed.bad[name]) in line for line in err.splitlines() if line.startswith("warning: ")) == 1
    last = list(csv_rows(out_dir / "log.csv"))[-1]
    assert int(last["skipped_files"]) >= len(at_decode)
    assert (out_dir / "adapter.en.safetensors").is_file()


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


@pytest.fixture(scope="module")
def other_task(tmp_path_factory) -> Path:
    """A task file trained on another backbone (different weights) than the tiny preset's."""
    torch.manual_seed(1)
    asr = CTCModel(build_backbone("tiny"))
    asr.add_task("en", Vocabulary.build(["hello"], "en"))
    return save_task(asr, "en", tmp_path_factory.mktemp("other"))


@pytest.mark.parametrize("case", ["bad path", "flags", "not a model", "other backbone", "raw format", "vocab",
                                  "not a corpus", "no adapter", "output folder", "tiny text"])
def test_a_user_mistake_is_one_error_line_naming_the_file(case, mixed, other_task, capsys, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    wav = mixed.good[0]
    args, named = {
        "bad path": (["check", tmp_path / "no-corpus"], tmp_path / "no-corpus"),
        "flags": (["params", "tiny", "--all", "--method", "full"], "--all"),
        "not a model": (["transcribe", "--model", empty, wav], empty),
        "other backbone": (["transcribe", "--model", "tiny", "--adapter", other_task, wav], other_task),
        "raw format": (["transcribe", "--model", "tiny", "--raw-format", "s17le:16000", wav], "s17le:16000"),
        "vocab": (["check", mixed.manifest, "--vocab", tmp_path / "vocab.json"], tmp_path / "vocab.json"),
        "not a corpus": (["evaluate", empty, "--model", "tiny", "--adapter", mixed.task_file], empty),
        "no adapter": (["transcribe", "--model", "tiny", wav], "--adapter"),
        "output folder": (["vocab", mixed.manifest, "--language", "en", "--out", tmp_path / "no" / "vocab.json"],
                          f"{tmp_path / 'no' / 'vocab.json'}: No such file or directory"),
        "tiny text": (["lm", mixed.manifest, "--language", "en", "--order", "4"], "wavadapt lm --discount-fallback"),
    }[case]
    code, out, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in out + err
    assert lines[-1].startswith("error: ") and str(named) in lines[-1], lines
    assert code == 1  # a user's mistake; 2 is for what wavadapt does not know yet
    if case == "other backbone":  # both fingerprints, so the user can tell which backbone the task needs
        assert lines[-1].count("sha256:") == 2


def test_the_console_entry_point_prints_no_traceback_unless_debugging(mixed, tmp_path):
    def run(*args, debug: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "WAVADAPT_DEBUG"} | ({"WAVADAPT_DEBUG": debug} if debug
                                                                                  else {})
        return subprocess.run([sys.executable, "-m", "wavadapt", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env)

    result = run("check", mixed.manifest)  # in its own process, as a user runs it
    assert result.returncode == 1 and "Traceback" not in result.stderr
    not_a_model = ["transcribe", "--model", tmp_path / "nothing-here", mixed.good[0]]
    quiet = run(*not_a_model)
    assert quiet.returncode == 1 and quiet.stderr.startswith("error: ") and "Traceback" not in quiet.stderr
    assert "Traceback" in run("--debug", *not_a_model).stderr
    assert "Traceback" in run(*not_a_model, debug="1").stderr


def test_a_plain_folder_of_audio_files_is_a_corpus_and_an_input(mixed, tmp_path, capsys):
    folder = tmp_path / "recordings"
    (folder / "day2").mkdir(parents=True)
    for i, source in enumerate(mixed.good[:3]):
        shutil.copy(source, folder / ("day2" if i else ".") / f"take{i}.flac")
    (folder / "notes.txt").write_text("not audio")
    code, out, err = run_cli(capsys, "check", folder)
    assert code == 0 and out.startswith("3 files,"), out + err
    code, out, err = run_cli(capsys, "transcribe", folder, "--model", "tiny", "--adapter", mixed.task_file)
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(folder / "day2" / "take1.flac"),
                                                                    str(folder / "day2" / "take2.flac"),
                                                                    str(folder / "take0.flac")]


def test_check_of_a_corpus_root_checks_every_language(synth_corpus, capsys):
    code, out, err = run_cli(capsys, "check", synth_corpus, "--split", "test")
    both = sum(len(open_corpus(synth_corpus, "test", lang)) for lang in ("en", "es"))
    assert code == 0 and out.startswith(f"{both} files,"), out + err
