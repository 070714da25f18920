"""Parameter accounting: the first paper's percentages, invariants, closed forms and `wavadapt params`."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from wavadapt import cli
from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.experiments.accounting import (
    all_accounts,
    backbone_factory,
    count_parameters,
    format_account,
    format_table,
    method_account,
    placeholder_vocabulary,
)
from wavadapt.model.adapters import AdapterConfig, add_adapter
from wavadapt.model.backbone import build_backbone, component_of, describe
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import METHODS, MethodConfig, prepare

BASE = backbone_factory("base")
runner = CliRunner()


@pytest.mark.parametrize(
    ("method", "top_n", "paper"),
    [("full", None, 95.6), ("adapters", None, 9.2), ("top-n-adapters", 6, 4.85), ("top-n-full", 8, 65.5)],
)
def test_base_shares_match_the_paper(method, top_n, paper):
    # Thomas, Kessler, Karout 2022, Table 1: wav2vec 2.0 Base, adapter size 256, LibriSpeech letters.
    account = method_account(BASE, MethodConfig(method, top_n=top_n, adapter_size=256), 32)
    assert account.percent == pytest.approx(paper, abs=0.1)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_every_method_accounts_for_every_parameter(family):
    for account in all_accounts(backbone_factory("tiny", family)):
        rows = account.components.values()
        assert account.trainable + account.frozen == account.total
        assert sum(r["trainable"] for r in rows) == account.trainable
        assert sum(r["trainable"] + r["frozen"] for r in rows) == account.total
        assert "other" not in account.components
        assert account.components["ctc_head"] == {"trainable": 192 * 32 + 32, "frozen": 0}
        assert account.components["feature_encoder"]["trainable"] == 0  # no method trains the CNN


def test_counts_agree_with_what_prepare_returns():
    for method, top_n in [("full", None), ("top-n-full", 2), ("adapters", None), ("top-n-adapters", 3)]:
        with torch.device("meta"):
            model = CTCModel(build_backbone("tiny"))
        trained = prepare(model, "asr", placeholder_vocabulary(), MethodConfig(method, top_n=top_n))
        assert count_parameters(model)["trainable"] == sum(p.numel() for p in trained.values())


@pytest.mark.parametrize(("preset", "top_n"), [("base", None), ("base", 6), ("large", None), ("large", 6)])
def test_adapter_parameters_follow_the_closed_form(preset, top_n):
    account = method_account(
        backbone_factory(preset),
        MethodConfig("adapters" if top_n is None else "top-n-adapters", top_n=top_n, adapter_size=256),
    )
    d, b, layers = {"base": 768, "large": 1024}[preset], 256, top_n or account.layers
    # Two bottlenecks per layer: down (d*b + b), up (b*d + d), layer norm (2d).
    assert account.components["adapters"]["trainable"] == 2 * layers * (2 * d * b + b + d + 2 * d)
    # Copies of both layer norms of each adapted layer, and of the encoder's final one where it runs after
    # the layers (pre-LN Large) or where every layer is adapted.
    encoder_norm = preset == "large" or top_n is None
    assert account.components["task_layer_norms"]["trainable"] == (2 * layers + encoder_norm) * 2 * d


def test_vocabulary_size_sets_the_head():
    tiny = backbone_factory("tiny")
    vocab = Vocabulary.build(["hola señor", "qué tal"], "es")
    assert method_account(tiny, MethodConfig("head-only"), vocab).trainable == 192 * len(vocab) + len(vocab)
    assert method_account(tiny, MethodConfig("head-only"), 40).trainable == 192 * 40 + 40
    with pytest.raises(WavadaptError, match="at least 6"):
        placeholder_vocabulary(5)


def test_new_components_have_their_own_rows():
    model = build_backbone("tiny")
    add_adapter(model, "en", AdapterConfig(size=16))
    assert "other" not in describe(model)["parameters"]
    assert component_of("backbone.encoder.layers.3.adapters.sets.en.attention.down.weight", "backbone") == "adapters"
    assert component_of("encoder.layers.0.final_layer_norm.tasks.es.bias") == "task_layer_norms"
    assert component_of("encoder.layer_norm.tasks.es.weight") == "task_layer_norms"
    assert component_of("heads.es.weight") == "ctc_head"


def test_text_output_names_the_denominator():
    account = method_account(backbone_factory("tiny"), MethodConfig("adapters"))
    text = format_account(account, "tiny")
    assert "adapters (size 256, all 4 layers) on tiny" in text
    assert "backbone encoder (Wav2Vec2Model, no quantizer) + the CTC head" in " ".join(text.split())
    assert f"= {account.percent:.2f}%" in text
    table = format_table(all_accounts(backbone_factory("tiny")), "tiny")
    assert len(table.splitlines()) == 3 + len(METHODS) - 2 + 2 * 4 + 3


# --- CLI ---


def test_params_json():
    result = runner.invoke(cli.app, ["params", "base", "--method", "top-n-adapters", "--top-n", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["percent"] == pytest.approx(4.85, abs=0.1)
    assert data["trainable"] + data["frozen"] == data["total"]
    assert "CTC head" in data["denominator"]
    result = runner.invoke(cli.app, ["params", "tiny", "--all", "--json", "--adapter-size", "64"])
    accounts = json.loads(result.output)["accounts"]
    assert [a["method"] for a in accounts[:3]] == ["full", "adapters", "head-only"]
    assert [a["top_n"] for a in accounts[3:]] == [1, 2, 3, 4] * 2
    assert accounts[1]["adapter_size"] == 64


def test_params_of_a_checkpoint_dir_and_a_vocab_file(tmp_path):
    build_backbone("tiny", "hubert").save_pretrained(tmp_path / "model")
    Vocabulary.build(["ab cd"]).save_json(tmp_path / "vocab.json")
    result = runner.invoke(cli.app, ["params", str(tmp_path / "model"), "--vocab", str(tmp_path / "vocab.json"),
                                     "--method", "full", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["backbone"], data["vocab_size"]) == ("HubertModel", 9)
    preset = method_account(backbone_factory("tiny", "hubert"), MethodConfig("full"), 9)
    assert (data["total"], data["trainable"]) == (preset.total, preset.trainable)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["base", "--method", "fine"], "unknown method 'fine'"),
        (["base", "--method", "top-n-adapters"], "needs --top-n"),
        (["base", "--method", "adapters", "--top-n", "3"], "--top-n applies to top-n-full and top-n-adapters"),
        (["tiny", "--method", "top-n-full", "--top-n", "5"], "top_n must be in 1..4"),
        (["tiny", "--all", "--method", "full"], "--all lists every method"),
        (["tiny", "--adapter-size", "0"], "adapter size must be positive"),
        (["bsae"], "neither a preset"),
    ],
)
def test_params_errors_are_one_line_and_exit_1(monkeypatch, capsys, args, message):
    monkeypatch.setattr(sys, "argv", ["wavadapt", "params", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_mms_form_follows_its_closed_form_and_is_named():
    account = method_account(backbone_factory("large"), MethodConfig("adapters", adapter_size=16, adapter_form="mms"))
    d, a = 1024, 16
    # one adapter layer per layer: layer norm (2d), linear_1 (d*a + a), linear_2 (a*d + d); no layer-norm copies
    assert account.components["adapters"]["trainable"] == 24 * (2 * d * a + a + 3 * d)
    assert "task_layer_norms" not in account.components
    assert account.adapter_form == "mms" and account.to_dict()["adapter_form"] == "mms"
    assert "adapters (mms form, size 16, all 24 layers) on large" in format_account(account, "large")
    assert method_account(backbone_factory("tiny"), MethodConfig("adapters")).adapter_form == "houlsby"
    assert method_account(backbone_factory("tiny"), MethodConfig("full")).adapter_form is None


def test_mms_form_accounts_skip_top_n_adapters_and_post_ln_backbones_refuse():
    accounts = all_accounts(backbone_factory("large"), 16, adapter_form="mms")
    assert [a.method for a in accounts[:3]] == ["full", "adapters", "head-only"]
    assert {a.method for a in accounts[3:]} == {"top-n-full"} and len(accounts) == 3 + 24
    with pytest.raises(WavadaptError, match="adapts every layer"):
        MethodConfig("top-n-adapters", top_n=2, adapter_form="mms")
    with pytest.raises(WavadaptError, match="needs a pre-LN"):
        method_account(backbone_factory("base"), MethodConfig("adapters", adapter_form="mms"))
