"""Exact batching: each row of a zero-padded batch gives what it gives alone, for group-norm (Base) CNNs too."""

import numpy as np
import pytest
import torch
from torch import nn

from wavadapt.data.audio import read_audio
from wavadapt.data.batching import collate
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.evaluation.corpus import evaluate
from wavadapt.inference.engine import transcribe
from wavadapt.model.backbone import CTC_MODELS, FAMILIES, build_backbone, load_backbone, make_config
from wavadapt.model.checkpoint import backbone_fingerprint
from wavadapt.model.ctc import CTCModel
from wavadapt.model.masked_group_norm import MaskedGroupNorm
from wavadapt.training.methods import MethodConfig, prepare

VOCABS = {"en": Vocabulary.build(["the cat sat on the mat"], "en"), "es": Vocabulary.build(["el perro y yo"], "es")}
LENGTHS = (32_000, 4_800, 700, 20_000)  # 2 s, 0.3 s, one output frame, 1.25 s
KINDS = {
    "wav2vec2 group norm": ("wav2vec2", {}),
    "wav2vec2 layer norm pre-LN": ("wav2vec2", {"feat_extract_norm": "layer", "conv_bias": True,
                                                "do_stable_layer_norm": True}),
    "hubert group norm": ("hubert", {}),
    "wavlm group norm": ("wavlm", {}),
}


@pytest.fixture(params=list(KINDS), scope="module")
def kind(request) -> tuple[str, dict]:
    return KINDS[request.param]


@pytest.fixture(scope="module")
def reference(kind, device) -> nn.Module:
    """transformers' own CTC model of the tiny preset, vocabulary of the ``en`` task, on the tests' device."""
    family, overrides = kind
    torch.manual_seed(0)
    return CTC_MODELS[family](make_config("tiny", family, vocab_size=len(VOCABS["en"]), **overrides)).eval().to(device)


def _copy(reference: nn.Module) -> CTCModel:
    """A CTCModel with the reference's weights (its backbone and, as task ``en``, its lm_head) and final dropout."""
    backbone = FAMILIES[reference.config.model_type][1](reference.config)
    backbone.load_state_dict(reference.base_model.state_dict())
    model = CTCModel(backbone, final_dropout=reference.config.final_dropout).eval()
    model.add_task("en", VOCABS["en"])
    model.heads["en"].load_state_dict(reference.lm_head.state_dict())
    model.activate("en")
    return model.to(reference.device)


@pytest.fixture(scope="module")
def adapted(reference, device) -> CTCModel:
    """Tasks ``en`` and ``es`` on adapter sets of their own, trained-looking (not the identity)."""
    model = CTCModel(FAMILIES[reference.config.model_type][1](reference.config)).eval()
    for task, vocab in VOCABS.items():
        with torch.no_grad():
            for p in prepare(model, task, vocab, MethodConfig("adapters", adapter_size=16)).values():
                p.add_(torch.randn_like(p) * 0.1)  # logits of order 1, so that atol 1e-5 is fp32's precision
    return model.to(device)


@pytest.fixture(scope="module")
def rows(device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [0.1 * torch.randn(n, generator=generator).to(device) for n in LENGTHS]


def _batch(rows: list[torch.Tensor]) -> dict:
    batch = collate([{"id": str(i), "waveform": w.cpu()} for i, w in enumerate(rows)])
    return {k: v.to(rows[0].device) if torch.is_tensor(v) else v for k, v in batch.items()}


def test_masked_group_norm_is_group_norm_without_lengths_and_per_row_with_them():
    conv, base = nn.Conv1d(1, 8, kernel_size=10, stride=5), nn.GroupNorm(8, 8)
    nn.init.normal_(base.weight), nn.init.normal_(base.bias)
    norm = MaskedGroupNorm.wrap(base, conv)
    assert norm.weight is base.weight and norm.bias is base.bias
    long, short = torch.randn(1, 1, 300), torch.randn(1, 1, 120)
    with torch.no_grad():
        x = conv(torch.cat([long, nn.functional.pad(short, (0, 180))]))  # a zero-padded batch
        assert torch.equal(norm(x), base(x))  # without lengths it is exactly the GroupNorm
        with norm.valid_samples(torch.tensor([300, 120])):
            masked = norm(x)
        assert norm.samples is None
        alone = base(conv(short))[0]
        frames = alone.shape[-1]
        torch.testing.assert_close(masked[1, :, :frames], alone, atol=1e-6, rtol=0)
        assert not torch.allclose(base(x)[1, :, :frames], alone, atol=1e-3)  # what the padding did
        torch.testing.assert_close(masked[0], base(x)[0], atol=1e-6, rtol=0)


def test_the_swap_keeps_parameter_names_state_dict_keys_and_fingerprint():
    torch.manual_seed(0)
    backbone = build_backbone("tiny")
    params, keys = dict(backbone.named_parameters()), list(backbone.state_dict())
    fingerprint = backbone_fingerprint(backbone)
    model = CTCModel(backbone)
    assert isinstance(backbone.feature_extractor.conv_layers[0].layer_norm, MaskedGroupNorm)
    swapped = dict(backbone.named_parameters())
    assert list(swapped) == list(params) and all(swapped[k] is p for k, p in params.items())  # the same objects
    assert list(backbone.state_dict()) == keys
    assert backbone_fingerprint(backbone) == fingerprint
    assert list(model.state_dict()) == [f"backbone.{k}" for k in keys]
    assert not any(isinstance(m, MaskedGroupNorm) for m in build_backbone("tiny", feat_extract_norm="layer",
                                                                           conv_bias=True).modules())


def test_unpadded_input_is_bit_identical_to_transformers(reference):
    model, x = _copy(reference), 0.1 * torch.randn(2, 8_000).to(reference.device)
    ones = torch.ones_like(x, dtype=torch.long)
    layer_norm = reference.config.feat_extract_norm == "layer"
    with torch.no_grad():
        # transformers' feature extractors give a mask to layer-norm CNN models only
        expected = reference(x, attention_mask=ones if layer_norm else None).logits
        assert torch.equal(model(x, attention_mask=ones).logits, expected)
        if not layer_norm:
            assert torch.equal(model(x).logits, expected)


def test_unpadded_training_step_is_bit_identical_to_transformers(reference):
    """Training mode (dropout, layerdrop, SpecAugment) draws the same random numbers and computes the same."""
    model, x = _copy(reference), 0.1 * torch.randn(2, 8_000).to(reference.device)
    ones = torch.ones_like(x, dtype=torch.long)
    outputs = []
    for net, mask in ((reference, ones if reference.config.feat_extract_norm == "layer" else None), (model, ones)):
        torch.manual_seed(3), np.random.seed(3)
        net.train()
        try:
            outputs.append(net(x, attention_mask=mask).logits)
        finally:
            net.eval()
    assert torch.equal(*outputs)


def test_padded_batch_rows_equal_each_row_alone_with_mixed_adapters(adapted, rows):
    model, batch = adapted, _batch(rows)
    tasks = ["en", "es", "es", "en"]
    with torch.no_grad():
        for active in ("en", "es"):
            model.activate(active)
            padded = model(batch["waveforms"], batch["attention_mask"])
            for i, row in enumerate(rows):
                n = int(padded.lengths[i])
                torch.testing.assert_close(padded.logits[i, :n], model(row[None]).logits[0], atol=1e-5, rtol=0)
        mixed = model.forward_mixed(batch["waveforms"], tasks, batch["attention_mask"])
        for i, (row, task) in enumerate(zip(rows, tasks, strict=True)):
            n = int(mixed.lengths[i])
            alone = model.forward_mixed(row[None], [task]).logits[0]
            torch.testing.assert_close(mixed.logits[i, :n, : alone.shape[-1]], alone, atol=1e-5, rtol=0)
    assert mixed.lengths[2] == 1


def test_transformers_on_each_row_alone_equals_the_padded_batch_row(reference, rows):
    model, batch = _copy(reference), _batch(rows)
    layer_norm = reference.config.feat_extract_norm == "layer"
    with torch.no_grad():
        padded = model(batch["waveforms"], batch["attention_mask"])
        unmasked = reference(batch["waveforms"]).logits  # a group-norm model as transformers' extractors run it
        for i, row in enumerate(rows):
            n = int(padded.lengths[i])
            alone = reference(row[None]).logits[0]
            torch.testing.assert_close(padded.logits[i, :n], alone, atol=1e-5, rtol=0)
            if not layer_norm and n < padded.logits.shape[1]:  # what the mask and the masked GroupNorm fix
                assert not torch.allclose(unmasked[i, :n], alone, atol=1e-3)


def test_evaluate_of_a_group_norm_model_does_not_depend_on_the_batching(synth_corpus, tmp_path):
    """The pre-trained shipped backbone, whose features are not a fresh model's near-constant ones."""
    test_set = open_corpus(synth_corpus, "test", "en") + open_corpus(synth_corpus, "test", "es")
    torch.manual_seed(0)
    model = CTCModel(load_backbone("tiny-en-synth")).eval()
    with torch.no_grad():
        for p in prepare(model, "en", VOCABS["en"], MethodConfig("adapters", adapter_size=16)).values():
            p.add_(torch.randn_like(p) * 0.5)
    batch_sizes = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    alone = [transcribe(model, read_audio(u.path)) for u in test_set]  # one file per forward pass
    assert any(alone) and batch_sizes == [1] * len(test_set)
    for seconds in (0.01, 1000.0):  # files over the cap are batched apart, a few of them together; all together
        batch_sizes.clear()
        evaluate(model, test_set, max_seconds_per_batch=seconds, out_dir=tmp_path / str(seconds))
        assert 1 < len(batch_sizes) < len(test_set) if seconds < 1 else batch_sizes == [len(test_set)]
        lines = (tmp_path / str(seconds) / "hyp.en.txt").read_text(encoding="utf-8").splitlines()
        assert [line.partition(" ")[2] for line in lines] == alone
