"""fairseq wav2vec 2.0 checkpoints: written from tiny transformers models, read back without fairseq."""

import argparse
import enum
import json
import sys
import types

import pytest
import torch
from model_probes import AUDIO, LARGE_STYLE, hidden, pretraining_outputs
from transformers import Wav2Vec2ForCTC
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_pretraining_model, load_backbone, load_pretraining_model, make_config
from wavadapt.model.fairseq import (
    format_conv_spec,
    parse_conv_spec,
    read_fairseq_checkpoint,
    save_fairseq_checkpoint,
    to_fairseq_state_dict,
)

# What fairseq 0.12.2 reads of a checkpoint besides the weights (fairseq/checkpoint_utils.py, fairseq/trainer.py):
# load_checkpoint_to_cpu -> _upgrade_state_dict reads optimizer_history[-1] (lacking the list, it reads best_loss and
# optimizer instead: the KeyError 'best_loss' of a bare {cfg, model}) and extra_state["train_iterator"];
# load_model_ensemble_and_task reads cfg.task (tasks.setup_task), cfg.model (task.build_model) and
# optimizer_history[-1]["num_updates"]; Trainer.load_checkpoint, resuming a run, last_optimizer_state and
# extra_state. Audio tasks interpolate common.tpu, wav2vec_ctc distributed_training.ddp_backend and task.normalize,
# the ctc criterion optimization.sentence_avg.
LOADER_KEYS = {"args", "cfg", "model", "optimizer_history", "extra_state", "last_optimizer_state"}
OPTIMIZER_HISTORY_KEYS = {"criterion_name", "optimizer_name", "lr_scheduler_state", "num_updates"}
CFG_SECTIONS = {"common", "distributed_training", "task", "model", "criterion", "optimization", "checkpoint"}
TASK_KEYS = {"_name", "data", "normalize", "sample_rate"}


def assert_same_pretraining_model(loaded, model):
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for a, b in zip(pretraining_outputs(loaded), pretraining_outputs(model), strict=True):
        assert torch.equal(a, b)

# --- conv spec ---


def test_conv_spec_parses_fairseq_strings_without_eval():
    default = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    layers = parse_conv_spec(default)
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert format_conv_spec(layers) == "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
    assert parse_conv_spec(format_conv_spec(layers)) == layers
    for bad in ("__import__('os').system('true')", "[(512, 10)]", "[1] * 2"):
        with pytest.raises(ValueError):
            parse_conv_spec(bad)


# --- round trips ---


@pytest.mark.parametrize("overrides", [{}, LARGE_STYLE], ids=["post-ln", "pre-ln"])
def test_pretraining_checkpoint_round_trip(tmp_path, overrides):
    model = build_pretraining_model("tiny", **overrides).eval()
    checkpoint = to_fairseq_state_dict(model)
    assert "encoder.pos_conv.0.weight_g" in checkpoint["model"] and "quantizer.vars" in checkpoint["model"]
    torch.save(checkpoint, tmp_path / "checkpoint_best.pt")
    loaded = load_pretraining_model(tmp_path / "checkpoint_best.pt", trust_pickle=True)
    assert loaded.config.do_stable_layer_norm == model.config.do_stable_layer_norm and not loaded.training
    assert_same_pretraining_model(loaded, model)
    backbone = load_backbone(tmp_path / "checkpoint_best.pt", trust_pickle=True)
    assert torch.equal(hidden(backbone), hidden(model.wav2vec2))


def test_old_style_args_namespace_in_legacy_format(tmp_path):
    model = build_pretraining_model("tiny").eval()
    checkpoint = to_fairseq_state_dict(model)
    old = {"args": argparse.Namespace(arch="wav2vec2", **checkpoint["cfg"]["model"]), "model": checkpoint["model"]}
    torch.save(old, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert_same_pretraining_model(load_pretraining_model(tmp_path / "old.pt", trust_pickle=True), model)


def test_positional_conv_with_parametrizations_names(tmp_path):
    model = build_pretraining_model("tiny").eval()
    checkpoint = to_fairseq_state_dict(model)
    new_names = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    for old, new in new_names.items():
        checkpoint["model"][f"encoder.pos_conv.0.{new}"] = checkpoint["model"].pop(f"encoder.pos_conv.0.{old}")
    torch.save(checkpoint, tmp_path / "new.pt")
    assert_same_pretraining_model(load_pretraining_model(tmp_path / "new.pt", trust_pickle=True), model)


def test_finetuned_ctc_checkpoint(tmp_path):
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=32)).eval()
    checkpoint = to_fairseq_state_dict(model)
    assert {k.split(".")[0] for k in checkpoint["model"]} == {"w2v_encoder"}
    assert "w2v_encoder.proj.weight" in checkpoint["model"]
    checkpoint["cfg"]["model"]["mask_prob"] = 0.5  # the fine-tuning run's setting wins
    torch.save(checkpoint, tmp_path / "ctc.pt")
    config, state = read_fairseq_checkpoint(tmp_path / "ctc.pt", trust_pickle=True)
    assert (config.vocab_size, config.mask_time_prob) == (32, 0.5)
    assert torch.equal(state["lm_head.weight"], model.lm_head.weight)
    assert torch.equal(hidden(load_backbone(tmp_path / "ctc.pt", trust_pickle=True)), hidden(model.wav2vec2))
    with pytest.raises(CheckpointError, match="no quantizer weights"):
        load_pretraining_model(tmp_path / "ctc.pt", trust_pickle=True)


def test_finetuned_old_style_nested_namespace(tmp_path):
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=32)).eval()
    checkpoint = to_fairseq_state_dict(model)
    inner = argparse.Namespace(**checkpoint["cfg"]["model"]["w2v_args"]["model"])
    old = {"args": argparse.Namespace(arch="wav2vec_ctc", w2v_args=inner, dropout=0.0), "model": checkpoint["model"]}
    torch.save(old, tmp_path / "old_ctc.pt")
    backbone = load_backbone(tmp_path / "old_ctc.pt", trust_pickle=True)
    assert backbone.config.hidden_dropout == 0.0
    assert torch.equal(hidden(backbone), hidden(model.wav2vec2))


def test_omegaconf_and_fairseq_classes_without_those_packages(tmp_path, monkeypatch):
    """A hydra-era cfg pickled as omegaconf objects and fairseq enums loads with neither installed."""
    assert "omegaconf" not in sys.modules and "fairseq" not in sys.modules

    class DictConfig:  # the state layout omegaconf pickles: content, metadata, parent
        def __init__(self, content):
            self._metadata, self._parent, self._content = object.__new__(ContainerMetadata), None, content

    class ContainerMetadata:
        pass

    class AnyNode:
        def __init__(self, value):
            self._metadata, self._parent, self._val = None, None, value

    Choices = enum.Enum("Choices", {"default": "default", "layer_norm": "layer_norm"})
    fakes = {
        "omegaconf.dictconfig": {"DictConfig": DictConfig},
        "omegaconf.base": {"ContainerMetadata": ContainerMetadata},
        "omegaconf.nodes": {"AnyNode": AnyNode},
        "fairseq.dataclass.constants": {"Choices": Choices},
    }
    with monkeypatch.context() as m:  # importable while saving only
        for package in ("omegaconf", "fairseq", "fairseq.dataclass"):
            m.setitem(sys.modules, package, types.ModuleType(package))
        for name, classes in fakes.items():
            m.setitem(sys.modules, name, types.ModuleType(name))
            for cls_name, cls in classes.items():
                cls.__module__, cls.__qualname__ = name, cls_name
                setattr(sys.modules[name], cls_name, cls)
        model = build_pretraining_model("tiny", **LARGE_STYLE).eval()
        checkpoint = to_fairseq_state_dict(model)
        cfg = {k: AnyNode(v) for k, v in checkpoint["cfg"]["model"].items()}
        cfg["extractor_mode"] = AnyNode(Choices.layer_norm)
        checkpoint["cfg"] = DictConfig({"model": DictConfig(cfg), "task": DictConfig({"_name": AnyNode("audio")})})
        torch.save(checkpoint, tmp_path / "hydra.pt")
    assert "omegaconf" not in sys.modules
    loaded = load_pretraining_model(tmp_path / "hydra.pt", trust_pickle=True)
    assert loaded.config.feat_extract_norm == "layer"
    assert_same_pretraining_model(loaded, model)


# --- writing what fairseq loads ---


def assert_fairseq_loader_keys(state: dict, task: str, criterion: str) -> None:
    assert state.keys() == LOADER_KEYS and state["args"] is None and state["last_optimizer_state"] is None
    (entry,) = state["optimizer_history"]
    assert entry.keys() == OPTIMIZER_HISTORY_KEYS and entry["criterion_name"] == criterion
    assert entry["num_updates"] == 0 and entry["lr_scheduler_state"] == {"best": None}
    assert state["extra_state"]["train_iterator"]["epoch"] == 1 and "val_loss" in state["extra_state"]
    cfg = state["cfg"]
    assert cfg.keys() == CFG_SECTIONS and cfg["task"]["_name"] == task and TASK_KEYS <= cfg["task"].keys()
    assert cfg["common"]["tpu"] is False and cfg["optimization"]["sentence_avg"] is True
    assert cfg["distributed_training"]["ddp_backend"] and cfg["criterion"]["_name"]


@pytest.mark.parametrize("overrides", [{}, LARGE_STYLE], ids=["post-ln", "pre-ln"])
def test_saved_pretraining_checkpoint_holds_what_fairseqs_loader_reads(tmp_path, overrides):
    model = build_pretraining_model("tiny", **overrides).eval()
    path = save_fairseq_checkpoint(model, tmp_path / "checkpoint_best.pt")
    state = torch.load(path, weights_only=False)
    assert_fairseq_loader_keys(state, "audio_pretraining", "Wav2vecCriterion")
    assert state["cfg"]["model"]["_name"] == "wav2vec2" and state["cfg"]["task"]["data"] == str(tmp_path.resolve())
    assert state["cfg"]["task"]["normalize"] is (overrides == LARGE_STYLE)  # fairseq's convention by default
    assert_same_pretraining_model(load_pretraining_model(path, trust_pickle=True), model)


def test_saved_ctc_checkpoint_holds_what_fairseqs_loader_reads(tmp_path):
    vocab = Vocabulary.build(["the quick brown fox", "jumps over the lazy dog"])
    model = Wav2Vec2ForCTC(make_config("tiny", vocab_size=len(vocab))).eval()
    path = save_fairseq_checkpoint(model, tmp_path / "checkpoint_best.pt", vocab=vocab, normalize=True)
    state = torch.load(path, weights_only=False)
    assert_fairseq_loader_keys(state, "audio_finetuning", "CtcCriterion")
    cfg = state["cfg"]
    assert (cfg["task"]["labels"], cfg["model"]["_name"]) == ("ltr", "wav2vec_ctc")
    # Wav2VecEncoder builds the encoder from w2v_args' task and model, asserting both runs normalise alike
    pretraining = cfg["model"]["w2v_args"]
    assert {"common", "task", "model"} <= pretraining.keys() and pretraining["task"]["normalize"] is True
    # AudioFinetuningTask reads dict.<labels>.txt from task.data: fairseq's Dictionary has as many tokens as the head
    assert Vocabulary.from_fairseq_dict(tmp_path / "dict.ltr.txt").tokens == vocab.tokens
    assert cfg["task"]["data"] == str(tmp_path.resolve())

    loaded = load_asr_model(path, [], trust_pickle=True)
    assert loaded.normalize_waveforms is True and loaded.vocabularies["ctc"].tokens[4:] == vocab.tokens[4:]
    with torch.no_grad():
        torch.testing.assert_close(loaded(AUDIO).logits, model(AUDIO).logits, atol=1e-5, rtol=0)
    with pytest.raises(WavadaptError, match=f"the vocabulary has {len(vocab) - 1} tokens"):
        save_fairseq_checkpoint(model, tmp_path / "bad.pt", vocab=Vocabulary(vocab.tokens[:-1]))


# --- refusals ---


class _Touch:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_untrusted_pickle_is_not_opened(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "payload": _Touch(marker)}, tmp_path / "evil.pt")
    for load in (load_backbone, load_pretraining_model, read_fairseq_checkpoint):
        with pytest.raises(CheckpointError) as e:
            load(tmp_path / "evil.pt")
        assert "arbitrary code" in str(e.value) and str(tmp_path / "evil.pt") in str(e.value)
    assert not marker.exists()


def test_unsupported_and_unknown_content_is_refused(tmp_path):
    model = build_pretraining_model("tiny")
    checkpoint = to_fairseq_state_dict(model)
    torch.save(
        {**checkpoint, "cfg": {"model": {**checkpoint["cfg"]["model"], "quantizer_depth": 2}}}, tmp_path / "deep.pt"
    )
    with pytest.raises(CheckpointError, match="quantizer_depth=2 is not supported"):
        load_backbone(tmp_path / "deep.pt", trust_pickle=True)
    torch.save(
        {**checkpoint, "model": {**checkpoint["model"], "label_embs_concat": torch.zeros(3)}}, tmp_path / "hubert.pt"
    )
    with pytest.raises(CheckpointError, match="no transformers counterpart: label_embs_concat"):
        load_backbone(tmp_path / "hubert.pt", trust_pickle=True)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_backbone(tmp_path / "other.pt", trust_pickle=True)
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read as a PyTorch checkpoint"):
        load_backbone(tmp_path / "garbage.pt", trust_pickle=True)


def test_shape_mismatch_is_a_checkpoint_error(tmp_path):
    checkpoint = to_fairseq_state_dict(build_pretraining_model("tiny"))
    checkpoint["model"]["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="intermediate_dense.weight"):
        load_backbone(tmp_path / "bad.pt", trust_pickle=True)


def test_info_on_a_fairseq_checkpoint(tmp_path):
    torch.save(to_fairseq_state_dict(build_pretraining_model("tiny")), tmp_path / "model.pt")
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(tmp_path / "model.pt")])
    assert isinstance(result.exception, CheckpointError) and "--trust-pickle" in str(result.exception)
    result = runner.invoke(app, ["info", str(tmp_path / "model.pt"), "--trust-pickle", "--pretraining", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"]["quantizer"] > 0
