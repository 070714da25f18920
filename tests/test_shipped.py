"""The checkpoints shipped with wavadapt (wavadapt/model/shipped/tiny-en-synth, tiny-nl-real): loadable by name, what
their READMEs say they are, and actually pre-trained: the Dutch one on real Dutch held out from its training."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from wavadapt.data.batching import filter_by_length
from wavadapt.data.corpora import open_corpus
from wavadapt.experiments.grid import _pretraining_run
from wavadapt.model.backbone import SHIPPED, load_backbone, resolve_checkpoint
from wavadapt.model.pretraining import load_pretraining, save_pretraining
from wavadapt.training.pretrain import build_model, evaluate_pretraining, maskable

TINY_EN = SHIPPED / "tiny-en-synth"
TINY_NL = SHIPPED / "tiny-nl-real"


def test_a_name_resolves_to_the_shipped_directory_unless_a_path_exists(tmp_path, monkeypatch):
    assert resolve_checkpoint("tiny-en-synth") == TINY_EN
    assert resolve_checkpoint("no-such-model") == Path("no-such-model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-en-synth").mkdir()
    assert resolve_checkpoint("tiny-en-synth").resolve() == (tmp_path / "tiny-en-synth").resolve()


def test_load_backbone_reads_a_pretraining_run_by_name_or_path():
    by_name = load_backbone("tiny-en-synth")
    reference = load_pretraining(TINY_EN).backbone
    state = reference.state_dict()
    assert by_name.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in by_name.state_dict().items())


def test_the_runner_takes_the_shipped_run_as_the_first_task():
    assert _pretraining_run("tiny-en-synth") == TINY_EN
    assert _pretraining_run("tiny") is None


@pytest.mark.parametrize("shipped", [TINY_EN, TINY_NL], ids=lambda p: p.name)
def test_the_readme_records_the_command_of_the_shipped_run(shipped):
    """Every option the shipped run.json depends on appears, with its value, in the recorded command."""
    readme = (shipped / "README.md").read_text()
    run = json.loads((shipped / "run.json").read_text())
    commands = [dict(re.findall(r"--([\w-]+) (\S+)", line)) for line in readme.splitlines()
                if line.startswith("wavadapt pretrain")]
    options = commands[-1]  # the run whose files are shipped; each earlier one's --out is the next one's --model
    assert all(earlier["out"] == later["model"] for earlier, later in zip(commands, commands[1:], strict=False))
    assert float(options["lr"]) == run["train"]["lr"]
    assert int(options["max-updates"]) == run["train"]["max_updates"]
    assert int(options["warmup-updates"]) == run["train"]["warmup_updates"]
    assert float(options["max-seconds-per-batch"]) == run["train"]["max_seconds_per_batch"]
    assert int(options["checkpoint-every"]) == run["train"]["checkpoint_every"]
    assert float(options["crop-seconds"]) == run["crop_seconds"]
    assert float(options.get("diversity-weight", 0.1)) == run["objective"]["diversity_weight"]
    assert float(options.get("feature-penalty-weight", 0)) == run["objective"]["feature_penalty_weight"]
    assert options["preset"] == "tiny" and run["task"] == options.get("task", options["language"])
    assert run["task"] == shipped.name.split("-")[1]


def test_the_shipped_model_has_learnt_the_contrastive_task(synth_corpus):
    """On held-out synthetic English it is far from chance (ln 101) and from the fresh preset (shipped:
    contrastive 2.40, accuracy 47%; fresh 4.76, 5%, or 3% with the 320 codes per group the shipped model started
    from: fewer codes leave fewer distinct distractors; the first stage alone 4.46, 7%)."""
    held_out = open_corpus(synth_corpus, "dev", "en") + open_corpus(synth_corpus, "test", "en")
    utterances = filter_by_length(held_out)[0]
    scores = {}
    for source in ("tiny", "tiny-en-synth"):
        model = build_model(source, "en", "tiny")
        model.activate("en")
        scores[source] = evaluate_pretraining(model, maskable(model, utterances, 4.0)[0], 4.0, 30.0, seed=0)
    chance = math.log(101)
    assert scores["tiny-en-synth"]["contrastive"] < chance - 1.5 and scores["tiny"]["contrastive"] > chance - 0.1
    assert scores["tiny-en-synth"]["accuracy"] > 0.3 > 5 * scores["tiny"]["accuracy"]


@pytest.mark.parametrize("missing", ["run.json", "pretraining.json"])
def test_a_directory_without_run_files_is_no_first_task(tmp_path, missing):
    save_pretraining(load_pretraining(TINY_EN), tmp_path)
    (tmp_path / "run.json").write_text((TINY_EN / "run.json").read_text())
    (tmp_path / missing).unlink()
    assert _pretraining_run(str(tmp_path)) is None


@pytest.fixture(scope="module")
def real_dutch(tmp_path_factory) -> Path:
    """The real Dutch corpus, prepared as the demo and `make shipped-model` prepare it (Debian's packages)."""
    from wavadapt.data.prepare.fillets_ng import prepare_fillets_ng

    out = tmp_path_factory.mktemp("fillets") / "nl"
    prepare_fillets_ng(out, "nl")
    return out


def test_the_dutch_model_has_learnt_real_dutch_it_never_heard(real_dutch):
    """On the real Dutch dev split (levels the shipped model never heard) it solves the contrastive task far
    better than the synthetic English model it started from, and far from chance (ln 101)."""
    utterances = filter_by_length(open_corpus(real_dutch, "dev", "nl"))[0]
    scores = {}
    for source, task in (("tiny-en-synth", "en"), ("tiny-nl-real", "nl")):
        model = build_model(source, task, "tiny")
        model.activate(task)
        scores[source] = evaluate_pretraining(model, maskable(model, utterances, 4.0)[0], 4.0, 30.0, seed=0)
    assert scores["tiny-nl-real"]["contrastive"] < math.log(101) - 1.5
    assert scores["tiny-nl-real"]["accuracy"] > scores["tiny-en-synth"]["accuracy"] + 0.2
