"""Presets, Hugging Face checkpoint directories, parameter accounting and `wavadapt info`."""

import json

import pytest
import torch
from model_probes import LARGE_STYLE, hidden, pretraining_outputs
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2Model
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.model.backbone import (
    FAMILIES,
    build_backbone,
    build_pretraining_model,
    component_of,
    describe,
    format_description,
    load_backbone,
    load_pretraining_model,
    make_config,
)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

# --- presets ---


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_preset_is_small_with_the_real_frame_rate(family):
    model = build_backbone("tiny", family).eval()
    assert type(model) is FAMILIES[family][1]
    info = describe(model)
    assert info["samples_per_frame"] == 320 and info["frame_ms"] == 20 and info["receptive_field_ms"] == 25
    assert 1.5e6 < info["total_parameters"] < 4e6
    assert hidden(model).shape == (2, 24, 192)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_and_large_presets_have_the_papers_shapes(family):
    base, large = make_config("base", family), make_config("large", family)
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads, base.intermediate_size) == (
        12, 768, 12, 3072)  # fmt: skip
    assert (base.do_stable_layer_norm, base.feat_extract_norm, base.conv_bias) == (False, "group", False)
    assert (large.num_hidden_layers, large.hidden_size, large.num_attention_heads, large.intermediate_size) == (
        24, 1024, 16, 4096)  # fmt: skip
    assert (large.do_stable_layer_norm, large.feat_extract_norm, large.conv_bias) == (True, "layer", True)


def test_parameter_counts_match_the_papers():
    with torch.device("meta"):  # shapes only: instant even for large
        counts = {
            name: describe(model)["total_parameters"]
            for name, model in {
                "base": build_backbone("base"),
                "base_pretraining": build_pretraining_model("base"),
                "large": build_backbone("large"),
                "large_pretraining": build_pretraining_model("large"),
            }.items()
        }
    assert counts["base"] == 94_371_712  # transformers' Wav2Vec2Model (facebook/wav2vec2-base)
    assert counts["base_pretraining"] == pytest.approx(95.0e6, abs=0.1e6)  # the paper's "95M"
    assert counts["large_pretraining"] == pytest.approx(317e6, abs=0.5e6)  # the paper's "317M"


def test_base_cnn_share_is_what_full_fine_tuning_leaves_frozen():
    # Thomas et al. 2022: full fine-tuning trains 95.6% of Base + CTC head (all but the CNN encoder).
    with torch.device("meta"):
        info = describe(Wav2Vec2ForCTC(make_config("base", vocab_size=32)))
    cnn_share = info["parameters"]["feature_encoder"] / info["total_parameters"]
    assert cnn_share == pytest.approx(1 - 0.956, abs=0.001)


def test_make_config_applies_overrides_and_rejects_unknown_names():
    assert make_config("tiny", mask_time_prob=0.65, layerdrop=0.0).mask_time_prob == 0.65
    with pytest.raises(WavadaptError, match="hiden_size"):
        make_config("tiny", hiden_size=10)
    with pytest.raises(WavadaptError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(WavadaptError, match="unknown model family 'bert'"):
        build_backbone("tiny", "bert")


# --- Hugging Face checkpoint directories ---


@pytest.mark.parametrize(
    ("family", "overrides", "safe"),
    [
        ("wav2vec2", {}, True),
        ("wav2vec2", {}, False),
        ("hubert", {}, True),
        ("wavlm", {}, True),
        ("wav2vec2", LARGE_STYLE, True),
    ],
    ids=["wav2vec2", "wav2vec2-bin", "hubert", "wavlm", "wav2vec2-pre-ln"],
)
def test_base_model_dir_round_trip(tmp_path, family, overrides, safe):
    model = build_backbone("tiny", family, **overrides).eval()
    if safe:
        model.save_pretrained(tmp_path)
    else:  # transformers 5 writes only safetensors; older releases wrote this pickle
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_backbone(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert_same_weights(loaded, model)
    assert torch.equal(hidden(loaded), hidden(model))


def test_pretraining_dir_loads_as_backbone_and_as_pretraining_model(tmp_path):
    model = build_pretraining_model("tiny").eval()
    model.save_pretrained(tmp_path)
    backbone = load_backbone(tmp_path)
    assert type(backbone) is Wav2Vec2Model
    assert torch.equal(hidden(backbone), hidden(model.wav2vec2))
    loaded = load_pretraining_model(tmp_path)
    assert_same_weights(loaded, model)
    for a, b in zip(pretraining_outputs(loaded), pretraining_outputs(model), strict=True):
        assert torch.equal(a, b)


def test_ctc_dir_loads_as_backbone_but_not_for_pretraining(tmp_path):
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=40)).eval()
    model.save_pretrained(tmp_path)
    assert torch.equal(hidden(load_backbone(tmp_path)), hidden(model.wav2vec2))
    with pytest.raises(CheckpointError, match="no quantizer weights") as e:
        load_pretraining_model(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_base_model_dir_is_not_a_pretraining_checkpoint(tmp_path):
    build_backbone("tiny").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="quantizer.codevectors"):
        load_pretraining_model(tmp_path)


def test_hubert_and_wavlm_have_no_pretraining_model(tmp_path):
    build_backbone("tiny", "hubert").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="hubert checkpoint has no wav2vec 2.0 quantizer"):
        load_pretraining_model(tmp_path)


def test_loading_overrides_change_config_not_weights(tmp_path):
    model = build_backbone("tiny").eval()
    model.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path, hidden_dropout=0.0, mask_time_prob=0.65)
    assert (loaded.config.hidden_dropout, loaded.config.mask_time_prob) == (0.0, 0.65)
    assert_same_weights(loaded, model)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    build_backbone("tiny").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["encoder.layers.0.attention.extra.weight"] = weights.pop("encoder.layer_norm.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_backbone(tmp_path)
    message = str(e.value)
    assert str(tmp_path) in message and "\n" not in message
    assert "missing keys: encoder.layer_norm.weight" in message
    assert "unexpected keys: encoder.layers.0.attention.extra.weight" in message


def test_shape_mismatch_is_listed(tmp_path):
    build_backbone("tiny").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["encoder.layers.1.feed_forward.output_dense.weight"] = torch.zeros(192, 10)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"shape mismatches: encoder.layers.1.feed_forward.output_dense.weight"):
        load_backbone(tmp_path)


def test_legacy_weight_norm_names_load(tmp_path):
    # Hub checkpoints saved by older transformers (facebook/wav2vec2-base) name the positional conv's
    # weight norm weight_g / weight_v.
    model = build_backbone("tiny").eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        weights[f"encoder.pos_conv_embed.conv.{old}"] = weights.pop(
            f"encoder.pos_conv_embed.conv.parametrizations.weight.{new}"
        )
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert torch.equal(hidden(load_backbone(tmp_path)), hidden(model))


def test_bad_paths_give_one_line_errors_naming_the_file(tmp_path):
    cases = {}
    cases["missing dir"] = (tmp_path / "nope", "no such file or directory")
    (empty := tmp_path / "empty").mkdir()
    cases["no config"] = (empty, "no config.json")
    (bert := tmp_path / "bert").mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases["unknown model_type"] = (bert / "config.json", "model_type 'bert' is not supported")
    (no_weights := tmp_path / "no_weights").mkdir()
    make_config("tiny").save_pretrained(no_weights)
    cases["no weights"] = (no_weights, "no weights")
    (tmp_path / "model.pt").write_bytes(b"not even a pickle")
    cases["untrusted pickle"] = (tmp_path / "model.pt", "--trust-pickle")
    for name, (path, expected) in cases.items():
        target = path.parent if path.name == "config.json" else path
        with pytest.raises(CheckpointError) as e:
            load_backbone(target)
        message = str(e.value)
        assert str(path) in message and expected in message and "\n" not in message, name


def test_weight_file_instead_of_its_directory(tmp_path):
    build_backbone("tiny").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pass the Hugging Face checkpoint directory"):
        load_backbone(tmp_path / "model.safetensors")


# --- accounting ---


def test_describe_accounts_for_every_parameter():
    model = build_pretraining_model("tiny")
    info = describe(model)
    assert sum(info["parameters"].values()) == info["total_parameters"] == info["trainable_parameters"]
    assert list(info["parameters"]) == [
        "feature_encoder", "feature_projection", "mask_embedding", "positional_conv", "attention",
        "feed_forward", "layer_norms", "encoder_layer_norm", "quantizer",
    ]  # fmt: skip
    assert info["backbone_parameters"] == info["total_parameters"] - info["parameters"]["quantizer"]
    assert (info["layers"], info["hidden"], info["heads"], info["ffn"], info["layer_norm"]) == (4, 192, 4, 768, "post")
    assert info["conv"] == "[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2"
    model.freeze_feature_encoder()
    info = describe(model)
    assert info["trainable_parameters"] == info["total_parameters"] - info["parameters"]["feature_encoder"]
    assert "quantizer + projections" in format_description(info)


def test_describe_large_style_and_other_families():
    assert describe(build_backbone("tiny", **LARGE_STYLE))["layer_norm"] == "pre"
    for family in ("hubert", "wavlm"):
        info = describe(build_backbone("tiny", family))
        assert info["family"] == family and "other" not in info["parameters"]


def test_component_of():
    assert component_of("wav2vec2.encoder.layers.3.attention.k_proj.weight", "wav2vec2") == "attention"
    assert component_of("encoder.layers.0.final_layer_norm.bias") == "layer_norms"
    assert component_of("encoder.pos_conv_embed.conv.parametrizations.weight.original0") == "positional_conv"
    assert component_of("lm_head.weight") == "ctc_head"
    assert component_of("encoder.layers.0.adapters.en.down.weight") == "other"


# --- CLI ---

runner = CliRunner()


def test_info_presets():
    result = runner.invoke(app, ["info", "tiny"])
    assert result.exit_code == 0, result.output
    assert "4 layers, hidden 192, 4 heads, ffn 768, post-LN" in result.output
    assert "CNN feature encoder" in result.output and "20 ms" in result.output
    result = runner.invoke(app, ["info", "large", "--json"])
    assert json.loads(result.output)["total_parameters"] == 315_438_720
    result = runner.invoke(app, ["info", "base", "--pretraining", "--json"])
    assert json.loads(result.output)["parameters"]["quantizer"] > 0
    result = runner.invoke(app, ["info", "tiny", "--family", "hubert", "--json"])
    assert json.loads(result.output)["model"] == "HubertModel"


def test_info_checkpoint_dir(tmp_path):
    build_backbone("tiny", "wavlm").save_pretrained(tmp_path)
    result = runner.invoke(app, ["info", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["family"] == "wavlm"
    result = runner.invoke(app, ["info", str(tmp_path), "--family", "hubert"])
    assert isinstance(result.exception, WavadaptError)
