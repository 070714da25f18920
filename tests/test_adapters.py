"""Adapter insertion invariants on tiny wav2vec2 (post-LN and pre-LN), HuBERT and WavLM encoders."""

import copy

import pytest
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import (
    AdapterConfig,
    adapter_names,
    adapter_parameters,
    add_adapter,
    disable_adapters,
    set_active,
)

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
MODELS = {
    "wav2vec2-post-ln": lambda: Wav2Vec2Model(Wav2Vec2Config(**SMALL)),
    "wav2vec2-pre-ln": lambda: Wav2Vec2Model(Wav2Vec2Config(**SMALL, do_stable_layer_norm=True,
                                                            feat_extract_norm="layer")),
    "hubert": lambda: HubertModel(HubertConfig(**SMALL)),
    "wavlm": lambda: WavLMModel(WavLMConfig(**SMALL, num_buckets=16, max_bucket_distance=32)),
}


def _out(model, x):
    with torch.no_grad():
        return model(x).last_hidden_state


def _randomise(model, name):
    """Move a set far from identity so routing mistakes become visible."""
    with torch.no_grad():
        for p in adapter_parameters(model, name).values():
            p.normal_(std=0.5)


@pytest.fixture(params=sorted(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def test_fresh_adapter_is_near_identity_and_keeps_base_names(model):
    x = torch.randn(2, 4000)
    ref = _out(model, x)
    base_params = dict(model.named_parameters())
    add_adapter(model, "en", AdapterConfig(size=8))
    set_active(model, "en")
    out = _out(model, x)
    assert 0 < (out - ref).abs().max() < 1e-2 * ref.abs().mean()
    params = dict(model.named_parameters())
    assert all(params[k] is p for k, p in base_params.items())  # same names, same tensors
    with disable_adapters(model):
        assert torch.equal(_out(model, x), ref)


def test_adapter_set_keys_cover_both_blocks_and_layer_norms(model):
    add_adapter(model, "es", AdapterConfig(size=8, top_n=2))
    keys = set(adapter_parameters(model, "es"))
    per_block = {f"{w}.{t}" for w in ("down", "up", "norm") for t in ("weight", "bias")}
    expected = {f"encoder.layers.{i}.adapters.sets.es.{b}.{k}"
                for i in (1, 2) for b in ("attention", "feed_forward") for k in per_block}
    expected |= {f"encoder.layers.{i}.{ln}.tasks.es.{t}"
                 for i in (1, 2) for ln in ("layer_norm", "final_layer_norm") for t in ("weight", "bias")}
    if model.config.do_stable_layer_norm:  # the encoder norm sits above the layers only in pre-LN models
        expected |= {"encoder.layer_norm.tasks.es.weight", "encoder.layer_norm.tasks.es.bias"}
    assert keys == expected


def test_mixed_batch_routing_equals_separate_runs(model):
    add_adapter(model, "en", AdapterConfig(size=8))
    add_adapter(model, "es", AdapterConfig(size=8, top_n=2))
    _randomise(model, "en")
    _randomise(model, "es")
    x = torch.randn(3, 4000)
    set_active(model, "en")
    en = _out(model, x)
    set_active(model, "es")
    es = _out(model, x)
    set_active(model, per_sample=["es", "en", "es"])
    mixed = _out(model, x)
    torch.testing.assert_close(mixed[0], es[0])
    torch.testing.assert_close(mixed[1], en[1])
    torch.testing.assert_close(mixed[2], es[2])
    assert not torch.allclose(en, es)


def test_stack_applies_task_adapter_on_language_adapter_and_uses_top_layer_norms(model):
    add_adapter(model, "es", AdapterConfig(size=8))
    _randomise(model, "es")
    add_adapter(model, "es/asr", AdapterConfig(size=8), init_layer_norms_from="es")
    language_norms = {k.replace(".es.", ".es/asr."): p for k, p in adapter_parameters(model, "es").items()
                      if ".tasks." in k}
    for k, p in adapter_parameters(model, "es/asr").items():
        if ".tasks." in k:
            assert torch.equal(p, language_norms[k])
    x = torch.randn(2, 4000)
    set_active(model, "es")
    lang = _out(model, x)
    set_active(model, ("es", "es/asr"))
    stacked = _out(model, x)
    assert 0 < (stacked - lang).abs().max() < 1e-2 * lang.abs().mean()  # fresh task adapter ~ identity
    _randomise(model, "es/asr")
    assert not torch.allclose(_out(model, x), lang)


def test_deepcopy_keeps_routing_and_adapters_private(model):
    add_adapter(model, "en", AdapterConfig(size=8))
    _randomise(model, "en")
    set_active(model, "en")
    twin = copy.deepcopy(model)
    x = torch.randn(1, 4000)
    torch.testing.assert_close(_out(twin, x), _out(model, x))
    set_active(twin, None)  # the copy's routing is its own
    assert not torch.allclose(_out(twin, x), _out(model, x))


def test_bad_names_and_unknown_sets_are_refused(model):
    add_adapter(model, "en", AdapterConfig(size=8))
    with pytest.raises(WavadaptError, match="already has"):
        add_adapter(model, "en", AdapterConfig(size=8))
    with pytest.raises(WavadaptError, match="invalid adapter name"):
        add_adapter(model, "e.n", AdapterConfig(size=8))
    with pytest.raises(WavadaptError, match="unknown adapter set"):
        set_active(model, "fr")
    with pytest.raises(WavadaptError, match="top_n"):
        add_adapter(model, "de", AdapterConfig(size=8, top_n=9))
    assert adapter_names(model) == ["en"]


# --- the mms form ---

PRE_LN = dict(SMALL, do_stable_layer_norm=True, feat_extract_norm="layer")
MMS = AdapterConfig(size=8, form="mms", layer_norms=False)


@pytest.mark.parametrize("config_cls, model_cls", [(Wav2Vec2Config, Wav2Vec2Model), (HubertConfig, HubertModel)])
def test_mms_form_computes_transformers_adapter_layer(config_cls, model_cls):
    torch.manual_seed(0)
    reference = model_cls(config_cls(**PRE_LN, adapter_attn_dim=8)).eval()  # transformers' own adapter layers
    own = {k: p for k, p in reference.named_parameters() if ".adapter_layer." in k}
    with torch.no_grad():
        for p in own.values():
            p.normal_(std=0.3)
    model = model_cls(config_cls(**PRE_LN)).eval()
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if k not in own})
    add_adapter(model, "eng", MMS)
    params = adapter_parameters(model, "eng")
    # encoder.layers.<i>.adapters.sets.eng.adapter_layer.* is transformers' encoder.layers.<i>.adapter_layer.*
    assert {k.replace(".adapters.sets.eng.", ".") for k in params} == set(own)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(own[k.replace(".adapters.sets.eng.", ".")])
    set_active(model, "eng")
    x = torch.randn(2, 4000)
    torch.testing.assert_close(_out(model, x), _out(reference, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: Wav2Vec2Model(Wav2Vec2Config(**PRE_LN)),
    lambda: WavLMModel(WavLMConfig(**PRE_LN, num_buckets=16, max_bucket_distance=32)),  # layers return a tuple
])  # fmt: skip
def test_mms_form_starts_near_identity_and_routes_mixed_batches_beside_houlsby(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, 4000)
    ref = _out(model, x)
    add_adapter(model, "en", MMS)
    set_active(model, "en")
    assert 0 < (_out(model, x) - ref).abs().max() < 1e-2 * ref.abs().mean()
    add_adapter(model, "es", AdapterConfig(size=8))
    _randomise(model, "en")
    _randomise(model, "es")
    outs = {}
    for stack in ("en", "es", ("es", "en")):
        set_active(model, stack)
        outs[stack] = _out(model, x)
    set_active(model, per_sample=["es", ("es", "en"), "en"])
    mixed = _out(model, x)
    for i, stack in enumerate(["es", ("es", "en"), "en"]):
        torch.testing.assert_close(mixed[i], outs[stack][i])
    assert not torch.allclose(outs["en"], outs["es"]) and not torch.allclose(outs[("es", "en")], outs["es"])


def test_mms_form_refuses_post_ln_encoders_and_houlsby_options():
    with pytest.raises(WavadaptError, match="needs a pre-LN"):
        add_adapter(Wav2Vec2Model(Wav2Vec2Config(**SMALL)), "en", MMS)
    model = Wav2Vec2Model(Wav2Vec2Config(**PRE_LN))
    for config in (AdapterConfig(size=8, form="mms"), AdapterConfig(size=8, form="mms", layer_norms=False, top_n=1)):
        with pytest.raises(WavadaptError, match="every layer"):
            add_adapter(model, "en", config)
    with pytest.raises(WavadaptError, match="unknown adapter form 'pfeiffer'"):
        add_adapter(model, "en", AdapterConfig(size=8, form="pfeiffer"))
    assert adapter_names(model) == []
