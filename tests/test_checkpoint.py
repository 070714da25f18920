"""Task files: exact key sets per method, bit-exact round trips, strict refusals, sizes, no pickle."""

import json
import pickle

import pytest
import torch
from model_probes import LARGE_STYLE, perturb
from safetensors.torch import load_file, save_file

from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.adapters import AdapterConfig, adapter_names, adapter_parameters, add_adapter
from wavadapt.model.backbone import build_backbone
from wavadapt.model.checkpoint import (
    backbone_fingerprint,
    load_task,
    save_adapter,
    save_backbone,
    save_task,
    task_tensors,
)
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

VOCAB = Vocabulary.build(["the quick brown fox", "el zorro marrón"])
SIZE = 16


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("tiny").eval()


def _trained(method="adapters", top_n=None, task="en", stack_on=None, seed=0) -> CTCModel:
    model = CTCModel(_backbone(seed)).eval()
    if stack_on:
        add_adapter(model.backbone, stack_on, AdapterConfig(size=SIZE))
        perturb(adapter_parameters(model.backbone, stack_on).values())
    params = prepare(model, task, VOCAB, MethodConfig(method, top_n, adapter_size=SIZE, stack_on=stack_on))
    perturb(params.values())
    return model


@pytest.fixture(scope="module")
def audio():
    return torch.randn(2, 12000, generator=torch.Generator().manual_seed(1))


def _run(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits, model.greedy_decode(out)


def _saved_keys(path) -> set[str]:
    return set(load_file(path.with_suffix(".safetensors")))


def _set_keys(name, layers, encoder_norm):
    keys = {f"backbone.encoder.layers.{i}.adapters.sets.{name}.{kind}.{part}.{p}"
            for i in layers for kind in ("attention", "feed_forward") for part in ("down", "up", "norm")
            for p in ("weight", "bias")}
    keys |= {f"backbone.encoder.layers.{i}.{ln}.tasks.{name}.{p}"
             for i in layers for ln in ("layer_norm", "final_layer_norm") for p in ("weight", "bias")}
    if encoder_norm:
        keys |= {f"backbone.encoder.layer_norm.tasks.{name}.{p}" for p in ("weight", "bias")}
    return keys


HEAD = {"heads.en.weight", "heads.en.bias"}


@pytest.mark.parametrize("method, top_n, expected", [
    ("adapters", None, HEAD | _set_keys("en", range(4), encoder_norm=True)),
    # post-LN top-N sets do not own the encoder-level norm (it runs before the frozen layers)
    ("top-n-adapters", 2, HEAD | _set_keys("en", (2, 3), encoder_norm=False)),
    ("head-only", None, HEAD),
    ("full", None, HEAD),
])  # fmt: skip
def test_saved_keys_are_exactly_the_task_parameters(tmp_path, method, top_n, expected):
    model = _trained(method, top_n)
    path = save_task(model, "en", tmp_path)
    assert _saved_keys(path) == expected
    if method != "full":  # what trains is what is saved (full saves the backbone separately)
        assert expected == {k for k, p in model.named_parameters() if p.requires_grad}
    info = json.loads(path.read_text())
    assert info["task"] == "en" and info["vocabulary"] == VOCAB.tokens
    assert info["parameters"] == sum(p.numel() for p in task_tensors(model, "en").values())


def test_stacked_task_saves_only_its_own_set(tmp_path):
    model = _trained(task="es/asr", stack_on="es")
    path = save_task(model, "es/asr", tmp_path)
    assert path.name == "adapter.es--asr.json"
    heads = {"heads.es/asr.weight", "heads.es/asr.bias"}
    assert _saved_keys(path) == heads | _set_keys("es/asr", range(4), encoder_norm=True)
    info = json.loads(path.read_text())
    assert info["task"] == "es/asr" and info["stack"] == ["es", "es/asr"]
    assert info["adapter"] == {"size": SIZE, "activation": "relu", "top_n": None, "layer_norms": True,
                               "init_scale": 1e-3, "form": "houlsby"}
    assert info["layers"] == [0, 1, 2, 3] and info["backbone"]["stacked_on"] == ["es"]


@pytest.mark.parametrize("method, top_n", [("adapters", None), ("top-n-adapters", 2), ("head-only", None)])
def test_round_trip_into_a_fresh_backbone_is_exact(tmp_path, audio, method, top_n):
    model = _trained(method, top_n)
    path = save_task(model, "en", tmp_path)
    fresh = CTCModel(_backbone()).eval()
    assert load_task(fresh, path.with_suffix(".safetensors")) == "en"
    assert fresh.active == "en"
    (logits, texts), (ref_logits, ref_texts) = _run(fresh, audio), _run(model, audio)
    assert torch.equal(logits, ref_logits) and texts == ref_texts


def test_stacked_round_trip_loads_language_then_task(tmp_path, audio):
    model = _trained(task="es/asr", stack_on="es")
    lang = save_adapter(model.backbone, "es", tmp_path)
    task = save_task(model, "es/asr", tmp_path)
    assert json.loads(lang.read_text())["vocabulary"] is None
    fresh = load_asr_model("tiny", [lang, task])
    assert adapter_names(fresh.backbone) == ["es", "es/asr"] and fresh.active == "es/asr"
    assert torch.equal(_run(fresh, audio)[0], _run(model, audio)[0])


def test_full_fine_tuning_saves_backbone_and_head(tmp_path, audio):
    model = _trained("full")
    save_backbone(model.backbone, tmp_path / "backbone")
    path = save_task(model, "en", tmp_path)
    loaded = load_asr_model(tmp_path / "backbone", [path])
    assert torch.equal(_run(loaded, audio)[0], _run(model, audio)[0])
    with pytest.raises(CheckpointError, match="different backbone"):  # the head needs the fine-tuned backbone
        load_task(CTCModel(_backbone()), path)


def test_different_backbone_is_refused_naming_both_fingerprints(tmp_path):
    path = save_task(_trained(), "en", tmp_path)
    other = CTCModel(_backbone(seed=1))
    with pytest.raises(CheckpointError) as e:
        load_task(other, path)
    saved = json.loads(path.read_text())["backbone"]["fingerprint"]
    assert str(path) in str(e.value) and saved in str(e.value)
    assert backbone_fingerprint(other.backbone) in str(e.value)
    assert "en" not in other.heads and adapter_names(other.backbone) == []


def test_missing_or_different_stack_base_is_refused(tmp_path):
    model = _trained(task="es/asr", stack_on="es")
    path = save_task(model, "es/asr", tmp_path)
    with pytest.raises(CheckpointError, match=r"stacked on adapter set\(s\) \['es'\]"):
        load_task(CTCModel(_backbone()), path)
    wrong = CTCModel(_backbone())
    add_adapter(wrong.backbone, "es", AdapterConfig(size=SIZE))  # an untrained "es", not the one trained on
    with pytest.raises(CheckpointError, match="different backbone"):
        load_task(wrong, path)


def test_existing_name_is_refused(tmp_path):
    model = _trained()
    path = save_task(model, "en", tmp_path)
    with pytest.raises(CheckpointError, match="already has"):
        load_task(model, path)


@pytest.mark.parametrize("tamper, named", [
    (lambda t: t | {"heads.en.extra": torch.zeros(3)}, "unexpected keys: heads.en.extra"),
    (lambda t: {k: v for k, v in t.items() if k != "heads.en.bias"}, "missing keys: heads.en.bias"),
    (lambda t: t | {"heads.en.weight": t["heads.en.weight"][:-1]}, "shape mismatches: heads.en.weight"),
])  # fmt: skip
def test_tampered_tensors_are_refused_naming_keys(tmp_path, tamper, named):
    path = save_task(_trained(), "en", tmp_path)
    weights = path.with_suffix(".safetensors")
    save_file(tamper(load_file(weights)), weights)
    fresh = CTCModel(_backbone())
    with pytest.raises(CheckpointError, match=named) as e:
        load_task(fresh, path)
    assert str(weights) in str(e.value)
    assert "en" not in fresh.heads and adapter_names(fresh.backbone) == []  # refused before any change


def test_base_adapter_set_is_tens_of_megabytes_and_under_a_tenth_of_the_model():
    with torch.device("meta"):  # shapes only: the 95M-parameter model builds instantly
        model = CTCModel(build_backbone("base"))
        prepare(model, "en", VOCAB, MethodConfig("adapters"))
    saved = sum(p.numel() * p.element_size() for p in task_tensors(model, "en").values())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 30e6 < saved < 45e6  # 9.5M fp32 parameters: ~38 MB
    assert saved < 0.1 * total


def test_file_size_matches_tensor_bytes_and_fp16_halves_it(tmp_path):
    model = _trained()
    nbytes = sum(p.numel() * 4 for p in task_tensors(model, "en").values())
    fp32 = save_task(model, "en", tmp_path / "fp32").with_suffix(".safetensors").stat().st_size
    fp16_json = save_task(model, "en", tmp_path / "fp16", dtype=torch.float16)
    fp16 = fp16_json.with_suffix(".safetensors").stat().st_size
    assert nbytes < fp32 < nbytes + 16_384  # the rest is the JSON header of the safetensors file
    assert nbytes / 2 < fp16 < nbytes / 2 + 16_384
    fresh = CTCModel(_backbone())
    load_task(fresh, fp16_json)
    assert fresh.heads["en"].weight.dtype == torch.float32
    assert torch.allclose(fresh.heads["en"].weight, model.heads["en"].weight, atol=1e-3)


def test_loading_never_unpickles(tmp_path, monkeypatch, audio):
    model = _trained()
    path = save_task(model, "en", tmp_path)
    assert isinstance(json.loads(path.read_text()), dict)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    fresh = CTCModel(_backbone())
    load_task(fresh, path)
    assert torch.equal(_run(fresh, audio)[0], _run(model, audio)[0])


def test_fingerprint_covers_base_weights_and_stack_only():
    a, b = _backbone(), _backbone()
    fp = backbone_fingerprint(a)
    assert fp.startswith("sha256:") and fp == backbone_fingerprint(b)
    add_adapter(a, "en", AdapterConfig(size=SIZE))
    assert backbone_fingerprint(a) == fp  # sets outside the stack do not count
    assert backbone_fingerprint(a, ["en"]) != fp
    with torch.no_grad():
        b.encoder.layers[0].attention.q_proj.weight[0, 0] += 1e-6
    assert backbone_fingerprint(b) != fp
    assert backbone_fingerprint(_backbone().half()) != fp  # exact bytes: another dtype is another backbone


def test_task_files_without_a_form_are_houlsby(tmp_path, audio):
    model = _trained(task="es/asr", stack_on="es")
    paths = [save_adapter(model.backbone, "es", tmp_path), save_task(model, "es/asr", tmp_path)]
    for path in paths:  # as written before adapter forms existed
        info = json.loads(path.read_text())
        del info["adapter"]["form"]
        path.write_text(json.dumps(info))
    fresh = load_asr_model("tiny", paths)
    assert torch.equal(_run(fresh, audio)[0], _run(model, audio)[0])


def _pre_ln_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("tiny", **LARGE_STYLE).eval()


def test_mms_form_task_round_trip(tmp_path, audio):
    model = CTCModel(_pre_ln_backbone()).eval()
    perturb(prepare(model, "en", VOCAB, MethodConfig("adapters", adapter_size=SIZE, adapter_form="mms")).values())
    path = save_task(model, "en", tmp_path)
    layer = {f"backbone.encoder.layers.{i}.adapters.sets.en.adapter_layer.{m}.{p}"
             for i in range(4) for m in ("norm", "linear_1", "linear_2") for p in ("weight", "bias")}
    assert _saved_keys(path) == HEAD | layer
    info = json.loads(path.read_text())
    assert info["adapter"]["form"] == "mms" and info["layers"] == [0, 1, 2, 3]
    fresh = CTCModel(_pre_ln_backbone()).eval()
    load_task(fresh, path)
    assert torch.equal(_run(fresh, audio)[0], _run(model, audio)[0])


def test_adapter_config_the_backbone_cannot_take_is_refused(tmp_path):
    path = save_task(_trained(), "en", tmp_path)
    info = json.loads(path.read_text())
    info["adapter"] |= {"form": "mms", "layer_norms": False}
    path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="needs a pre-LN") as e:
        load_task(CTCModel(_backbone()), path)
    assert str(path) in str(e.value)


def test_a_vocabulary_in_its_own_order_round_trips_with_its_blank(tmp_path):
    vocab = Vocabulary(["<s>", "<pad>", "</s>", "<unk>", "|", "a", "b"], blank="<s>")  # fairseq's order
    model = CTCModel(_backbone()).eval()
    model.add_task("fs", vocab)
    loaded = load_asr_model("tiny", [save_task(model, "fs", tmp_path)]).vocabularies["fs"]
    assert (loaded.tokens, loaded.blank, loaded.unk, loaded.blank_id) == (vocab.tokens, "<s>", "<unk>", 0)
