"""A run folder holds one run and says how it was made: a new run never overwrites a finished one without
--overwrite, --resume continues it, run.json records the backbone, data, languages, command and version, and a
fine-tuning run's folder loads as a model. Through the real entry point, as a user types it."""

import csv
import json
import re

import pytest
from cli_runner import exit_status, run_cli

import wavadapt
from wavadapt.data.corpora import open_corpus
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.checkpoint import backbone_fingerprint
from wavadapt.training.finetune import AugmentConfig
from wavadapt.training.methods import default_adapter_size, default_lr

FINETUNE = ("--method", "adapters", "--adapter-size", "16", "--valid-split", "", "--max-seconds-per-batch", "8",
            "--lr", "1e-3", "--checkpoint-every", "1")


def finetune(capsys, corpus, out, *extra, updates=2):
    return run_cli(capsys, "finetune", corpus, "--language", "en", "--model", "tiny", "--out", out,
                   "--max-updates", updates, *FINETUNE, *extra)


@pytest.fixture(scope="module")
def finished(synth_corpus, tmp_path_factory):
    """A finished 2-update fine-tuning run."""
    out = tmp_path_factory.mktemp("runs") / "en"
    assert exit_status("finetune", synth_corpus, "--language", "en", "--model", "tiny", "--out", out,
                       "--max-updates", 2, *FINETUNE) == 0
    return out


def test_a_finished_run_is_never_overwritten_without_overwrite(synth_corpus, finished, tmp_path, capsys):
    out = tmp_path / "en"
    assert finetune(capsys, synth_corpus, out, updates=3)[0] == 0
    before = {p.name: p.read_bytes() for p in (out / "run.json", out / "log.csv", out / "checkpoints" / "last.pt")}
    code, _, err = finetune(capsys, synth_corpus, out, updates=1)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: {out} holds a run already (run.json, checkpoints): --resume "
                                        "continues it, --overwrite replaces it, or choose another folder"]
    assert {p.name: p.read_bytes() for p in (out / "run.json", out / "log.csv", out / "checkpoints" / "last.pt")
            } == before
    code, _, err = finetune(capsys, synth_corpus, out, "--resume", "--overwrite", updates=1)
    assert code == 1 and "give one" in err

    code, _, err = finetune(capsys, synth_corpus, out, "--overwrite", updates=1)
    assert code == 0, err
    with (out / "log.csv").open() as f:
        updates = [int(row["update"]) for row in csv.DictReader(f) if row.get("loss")]
    assert updates == [1]  # the new run's log alone, not both runs' curves one after the other
    assert json.loads((out / "run.json").read_text())["train"]["max_updates"] == 1


def test_resume_continues_the_run_in_the_folder(synth_corpus, tmp_path, capsys):
    out = tmp_path / "en"
    assert finetune(capsys, synth_corpus, out, updates=1)[0] == 0
    code, _, err = finetune(capsys, synth_corpus, out, "--resume", updates=2)
    assert code == 0, err
    with (out / "log.csv").open() as f:
        assert [int(row["update"]) for row in csv.DictReader(f) if row.get("loss")] == [1, 2]


def test_run_json_records_how_the_run_was_made(synth_corpus, finished):
    info = json.loads((finished / "run.json").read_text())
    fresh = load_asr_model("tiny", [])
    assert info["backbone"] == {"model": "tiny", "family": "wav2vec2", "seed": 0, "adapters": [],
                                "fingerprint": backbone_fingerprint(fresh.backbone)}
    assert info["data"] == {"corpus": str(synth_corpus.resolve()), "split": "train", "language": "en"}
    assert info["languages"] == ["en"] and info["wavadapt"] == wavadapt.__version__
    assert info["command"].startswith("wavadapt finetune ") and f"--out {finished}" in info["command"]


def test_a_fine_tuning_run_folder_is_a_model(synth_corpus, finished, tmp_path, capsys):
    clip = open_corpus(synth_corpus, "test", "en")[0].path
    by_folder = run_cli(capsys, "transcribe", clip, "--model", finished)
    by_parts = run_cli(capsys, "transcribe", clip, "--model", "tiny", "--adapter",
                       finished / "adapter.en.json")
    assert by_folder[0] == by_parts[0] == 0, by_folder[2]
    assert by_folder[1] == by_parts[1] and by_folder[1].startswith(f"{clip}\t")
    model = load_asr_model(finished, [])
    assert model.active == "en" and model.source["adapters"] == [str((finished / "adapter.en.json").resolve())]

    unfinished = tmp_path / "cut"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"task": "en", "method": {}}))
    code, _, err = run_cli(capsys, "transcribe", clip, "--model", unfinished)
    assert code == 1 and f"error: {unfinished}: the run has no task file adapter.en.json (it did not finish)" in err
    for suffix in (".json", ".safetensors"):  # an older run: finished, but its run.json names no backbone
        (unfinished / f"adapter.en{suffix}").write_bytes((finished / f"adapter.en{suffix}").read_bytes())
    code, _, err = run_cli(capsys, "transcribe", clip, "--model", unfinished)
    assert code == 1 and "does not say which backbone" in err and f"--adapter {unfinished / 'adapter.en.json'}" in err


def test_training_needs_a_model_and_a_preset_is_called_untrained(synth_corpus, tmp_path, capsys):
    code, _, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en", "--out", tmp_path / "a")
    assert code == 2 and "Missing option '--model'" in err
    code, _, err = finetune(capsys, synth_corpus, tmp_path / "b", updates=1)
    assert code == 0 and "warning: tiny is a preset: random weights (seed 0), not a trained model" in err


def test_pretrain_and_evaluate_continual_refuse_a_used_folder(synth_corpus, tmp_path, capsys):
    args = ("pretrain", synth_corpus, "--language", "en", "--model", "tiny", "--preset", "tiny", "--max-updates", "1",
            "--max-seconds-per-batch", "8", "--crop-seconds", "2", "--out", tmp_path / "pt")
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "holds a run already" in err
    assert run_cli(capsys, *args, "--overwrite")[0] == 0

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "forgetting.json").write_text("{}")
    code, _, err = run_cli(capsys, "evaluate-continual", tmp_path / "pt", "--data", synth_corpus, "--out",
                           evaluation)
    assert code == 1 and err.strip() == (f"error: {evaluation} holds a run already (forgetting.json): --overwrite "
                                         "replaces it, or choose another folder")
    assert (evaluation / "forgetting.json").read_text() == "{}"


def test_the_feature_cache_outlives_an_overwrite(synth_corpus, tmp_path, capsys):
    out = tmp_path / "en"
    assert finetune(capsys, synth_corpus, out, "--feature-cache", updates=1)[0] == 0

    def cache():
        return sorted((str(p.relative_to(out)), p.stat().st_mtime_ns) for p in (out / "feature_cache").rglob("*")
                      if p.suffix != ".lock")

    before = cache()
    (out / "log.csv").write_text("update,loss\n7,1.0\n")  # a stale row an overwrite must not keep
    assert before and finetune(capsys, synth_corpus, out, "--feature-cache", "--overwrite", updates=1)[0] == 0
    assert cache() == before  # kept and reused, not rebuilt
    assert "7,1.0" not in (out / "log.csv").read_text()


def test_a_run_into_a_log_draws_no_bars_and_says_each_validation(synth_corpus, tmp_path, capsys):
    """stderr is no terminal here (pytest captures it), as in a redirected log."""
    code, out, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en", "--model", "tiny", "--out",
                             tmp_path / "en", "--max-updates", 2, "--method", "head-only", "--validate-every", 1,
                             "--max-seconds-per-batch", 8, "--lr", "1e-3")
    assert code == 0, err
    assert "\r" not in err and "upd/s" not in err and "train:" not in err  # no progress bar
    validations = [line for line in err.splitlines() if line.startswith("update ")]
    assert [line.split(":")[0] for line in validations] == ["update 1", "update 2"]
    assert re.fullmatch(r"update 1: validation wer \d+\.\d\d%, cer \d+\.\d\d%", validations[0])
    assert re.fullmatch(r"update 2, loss [\d.e+]+ per utterance, validation wer \d+\.\d\d%, validation cer "
                        r"\d+\.\d\d%", out.strip())


def test_fine_tuning_defaults_by_method_and_model_size(synth_corpus, tmp_path, capsys):
    """The papers' Base settings left the shipped tiny model at 100% CER: tiny models get the demo's."""
    assert [default_lr(m, 192) for m in ("full", "top-n-full", "adapters", "head-only")] == [1e-3, 1e-3, 1e-2, 1e-2]
    assert [default_lr(m, 768) for m in ("full", "adapters")] == [5e-5, 1e-3]  # Base: fairseq's, MMS's
    assert (default_adapter_size(192), default_adapter_size(768)) == (64, 256)
    assert AugmentConfig.for_size(768) == AugmentConfig()  # fairseq's base_10h
    code, _, err = run_cli(capsys, "finetune", synth_corpus, "--language", "en", "--model", "tiny", "--out",
                           tmp_path / "en", "--max-updates", 1, "--method", "head-only", "--valid-split", "",
                           "--max-seconds-per-batch", 8)
    assert code == 0, err
    run = json.loads((tmp_path / "en" / "run.json").read_text())
    assert run["train"]["lr"] == 1e-2 and run["method"]["adapter_size"] == 64
    assert (run["augment"]["mask_time_prob"], run["augment"]["mask_feature_prob"], run["augment"]["layerdrop"]) == (
        0.1, 0.0, 0.0)
