"""The packaged recipes (wavadapt/experiments/recipes/): each loads strictly into an Experiment and runs end to end
at toy scale."""

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import wavadapt
from wavadapt.cli import app
from wavadapt.errors import WavadaptError
from wavadapt.experiments.grid import RECIPES as RECIPE_DIR
from wavadapt.experiments.grid import Experiment, load_experiment, plan, recipe_path, run_experiment, toy

RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))


def test_there_are_the_papers_recipes_and_the_demo():
    assert {r.name for r in RECIPES} >= {"thomas2022_adapters.yaml", "kessler2022_cwav2vec.yaml", "demo.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(recipe):
    exp = load_experiment(recipe)
    assert isinstance(exp, Experiment)
    assert exp.report


def test_thomas_recipe_sweeps_n_1_to_12():
    exp = load_experiment(recipe_path("thomas2022_adapters"))
    assert exp.finetune.methods[-1].top_n == list(range(1, 13))
    assert exp.finetune.train["lr"] == 5e-5
    assert any("2 languages x 26 runs = 52 runs" in line for line in plan(exp))


def test_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("finetune: {train: {lr: 5e-5}}\ncorpus: {root: data}\n")
    assert load_experiment(path).finetune.train["lr"] == 5e-5  # plain PyYAML (YAML 1.1) gives the string "5e-5"


@pytest.mark.parametrize("text, key", [
    ("finetun: {}\n", "finetun"),
    ("finetune: {languages: [en], methods: [{method: full, topn: 3}]}\n", "finetune.methods[0].topn"),
    ("finetune: {train: {max_update: 3}}\n", "finetune.train.max_update"),
    ("corpus: {synth: {languages: [en], minute: {}}}\n", "corpus.synth.minute"),
    ("continual: {language: es}\nevaluate_continual: {probe: {augment: {mask: 1}}}\n",
     "evaluate_continual.probe.augment.mask"),
])
def test_unknown_key_is_refused_naming_it_and_the_file(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(WavadaptError, match=re.escape(f"{path}: unknown key {key} ")):
        load_experiment(path)


def _assert_report_layout(out: Path, exp: Experiment) -> None:
    """What `wavadapt report` reads exists for every section the recipe has."""
    if exp.params:
        assert json.loads((out / "params.json").read_text())["accounts"]
    if exp.finetune:
        evals = list((out / "finetune").glob("*/*/eval.json"))
        assert evals and all((e.parent / "run.json").is_file() for e in evals)
        assert "wer" in json.loads(evals[0].read_text())
    if exp.continual:
        for method in exp.continual.methods:
            assert (out / "continual" / method / "run.json").is_file()
    if exp.evaluate_continual:
        for table in ("forgetting", "efficiency"):
            assert (out / "evaluate-continual" / f"{table}.json").is_file()
    for m in exp.finetune.methods if exp.finetune else ():
        if m.from_scratch:  # fresh weights of the same architecture, recorded for the report's label
            runs = list((out / "finetune").glob(f"*/{m.method}*-scratch/run.json"))
            assert runs and all(json.loads(r.read_text())["train"]["extra"] == {"from_scratch": True} for r in runs)
    if exp.decoding and exp.finetune:  # every test scored with the beam search and its train-text LM, greedy beside
        result = json.loads(evals[0].read_text())
        assert result["decoder"].startswith(f"beam {exp.decoding.beam_size} + ") and result["greedy_wer"] is not None
        assert (out / "lm" / f"{evals[0].parent.parent.name}.arpa").is_file()
    if exp.decoding and exp.evaluate_continual:  # the probes beam-searched too, unless decoding.probes is false
        rows = json.loads((out / "evaluate-continual" / "forgetting.json").read_text())["rows"]
        assert any(key.startswith("greedy_wer_") for key in rows[0]) == exp.decoding.probes
    if exp.language_id:  # tested on every language it names, its confusion matrix in the report
        result = json.loads((out / "language-id" / "eval.json").read_text())
        assert result["utterances"] == sum(map(sum, result["confusion"])) > 0
        assert (out / "language-id" / "adapter.lid.json").is_file()
        assert (out / "report" / "language_id_confusion.png").is_file()
        assert "## Language identification" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "report.md").is_file()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_dry_run_writes_the_report_layout(recipe, tmp_path):
    lines = []
    exp = load_experiment(recipe)
    run_experiment(exp, tmp_path, dry_run=True, echo=lines.append)
    assert lines[0].startswith("would run corpus")
    _assert_report_layout(tmp_path, exp)


def test_runs_in_worker_processes_equal_runs_one_after_another(tmp_path):
    """The demo's grid at toy scale with 2 jobs (spawned single-thread workers) scores every run and probe exactly as
    running them here in order does (this process runs one thread too)."""
    exp = load_experiment(recipe_path("demo"))
    lines = []
    for jobs in (1, 2):
        run_experiment(exp, tmp_path / f"jobs{jobs}", dry_run=True, echo=lines.append, jobs=jobs)
    _assert_report_layout(tmp_path / "jobs2", toy(exp))
    evals = sorted(p.relative_to(tmp_path / "jobs1") for p in (tmp_path / "jobs1").glob("finetune/*/*/eval.json"))
    assert len(evals) == len(exp.finetune.languages) * sum(len(m.top_ns()) for m in exp.finetune.methods) == 3
    for path in evals:
        one, two = (json.loads((tmp_path / f"jobs{j}" / path).read_text()) for j in (1, 2))
        assert {k: v for k, v in one.items() if k != "elapsed"} == {k: v for k, v in two.items() if k != "elapsed"}
    for table in ("forgetting", "continual_learning"):
        one, two = (json.loads((tmp_path / f"jobs{j}" / "evaluate-continual" / f"{table}.json").read_text())["rows"]
                    for j in (1, 2))
        assert one == two
    assert any(line.endswith(": done") for line in lines)  # workers report each run as it ends
    # the runs and probes trained on shared feature caches, removed once their stage was done
    runs = [json.loads(p.read_text()) for p in (tmp_path / "jobs2").glob("*/**/run.json")]
    cached = [run["feature_cache"] for run in runs if run.get("feature_cache")]
    assert len(cached) == len([run for run in runs if "augment" in run])  # every fine-tuning run and probe
    assert len({c["path"] for c in cached}) < len(cached) and all(c["dtype"] == "float32" for c in cached)
    assert not list(tmp_path.glob("*/**/feature_cache.json"))


def test_run_command_dry_run_and_resume(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text("corpus: {root: nowhere}\nfinetune: {languages: [en], methods: [{method: adapters}]}\n"
                      "report: true\n")
    runner = CliRunner()
    out = tmp_path / "out"
    first = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run"])
    assert first.exit_code == 0, first.output
    assert "finetune: 1 languages x 1 runs = 1 runs" in first.output
    assert (out / "finetune" / "en" / "adapters" / "eval.json").is_file()
    recorded = json.loads((out / "experiment.json").read_text())
    assert recorded["experiment"]["finetune"]["languages"] == ["en"] and recorded["wavadapt"] == wavadapt.__version__
    # the folder holds an experiment: refused unless resumed or replaced
    refused = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run"])
    assert refused.exit_code == 1 and "--resume" in str(refused.exception) and "--overwrite" in str(refused.exception)
    again = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run", "--resume"])
    assert "done, kept" in again.output
    # cut after training, before the test split was scored: the run continues from its checkpoint
    (out / "finetune" / "en" / "adapters" / "eval.json").unlink()
    resumed = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "finetune" / "en" / "adapters" / "eval.json").is_file()
    # another recipe does not resume this one's runs
    recipe.write_text("corpus: {root: nowhere}\nfinetune: {languages: [en], methods: [{method: head-only}]}\n")
    other = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run", "--resume"])
    assert other.exit_code == 1 and "holds another experiment" in str(other.exception)
    assert "finetune" in str(other.exception) and "report" in str(other.exception)
    replaced = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "finetune" / "en" / "adapters").exists() and (out / "finetune" / "en" / "head-only").is_dir()


def test_evaluate_continual_needs_continual(tmp_path):
    path = tmp_path / "lone.yaml"
    path.write_text("evaluate_continual: {}\n")
    with pytest.raises(WavadaptError, match="needs a continual section"):
        load_experiment(path)


def test_fine_tuning_starts_from_the_pretrained_first_model(tmp_path):
    """With a pretrain section, every fine-tuning run's task file is fingerprinted against the backbone that
    pre-training wrote, not the recipe's fresh preset."""
    from wavadapt.model.backbone import build_backbone, load_backbone
    from wavadapt.model.checkpoint import backbone_fingerprint

    recipe = tmp_path / "small.yaml"
    recipe.write_text("corpus: {root: nowhere}\npretrain: {language: en}\n"
                      "finetune: {languages: [en], methods: [{method: adapters}, {method: full}]}\n")
    out = run_experiment(load_experiment(recipe), tmp_path / "out", dry_run=True, echo=lambda line: None)
    pretrained = backbone_fingerprint(load_backbone(out / "pretrain" / "en"))
    assert pretrained != backbone_fingerprint(build_backbone("tiny"))
    adapters = json.loads((out / "finetune" / "en" / "adapters" / "adapter.en.json").read_text())
    assert adapters["backbone"]["fingerprint"] == pretrained


def test_from_scratch_is_the_same_architecture_with_fresh_seeded_weights():
    from wavadapt.experiments.grid import _fresh_like
    from wavadapt.interop.loading import load_asr_model

    pretrained = load_asr_model("tiny-en-synth", []).backbone.state_dict()
    fresh = _fresh_like(load_asr_model("tiny-en-synth", []), seed=0).backbone.state_dict()
    again = _fresh_like(load_asr_model("tiny-en-synth", []), seed=0).backbone.state_dict()
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in pretrained.items()}
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)
    assert not torch.equal(fresh["encoder.layers.0.attention.q_proj.weight"],
                           pretrained["encoder.layers.0.attention.q_proj.weight"])


def test_continual_methods_that_freeze_the_cnn_share_one_feature_cache(tmp_path):
    """``continual.feature_cache``: warm-start (which trains the CNN) runs on audio, the others on one shared cache,
    removed when the runs are done."""
    recipe = tmp_path / "small.yaml"
    recipe.write_text("corpus: {root: nowhere}\nfirst_task: en\ncontinual: {language: es, preset: tiny, methods: "
                      "[warm-start, multihead, cwav2vec], feature_cache: true}\n")
    out = run_experiment(load_experiment(recipe), tmp_path / "out", dry_run=True, echo=lambda line: None)
    caches = {m: json.loads((out / "continual" / m / "run.json").read_text())["feature_cache"]
              for m in ("warm-start", "multihead", "cwav2vec")}
    assert caches["warm-start"] is None
    assert caches["multihead"]["path"] == caches["cwav2vec"]["path"]
    assert Path(caches["cwav2vec"]["path"]).parent == out / "continual" / "feature_cache"
    assert not (out / "continual" / "feature_cache").exists()
