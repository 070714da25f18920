"""Pre-training: the loss goes down, CNN gradient scaling, Gumbel annealing, collapse warning, checkpoints."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from model_probes import NO_DROPOUT
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.batching import filter_by_length
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import AdapterConfig, adapter_parameters, add_adapter
from wavadapt.model.backbone import build_backbone, load_pretraining_model
from wavadapt.model.pretraining import (
    PretrainingConfig,
    PretrainingModel,
    gumbel_temperature,
    load_pretraining,
)
from wavadapt.objectives.contrastive import sample_negatives
from wavadapt.objectives.masking import compute_mask_indices
from wavadapt.training.pretrain import (
    PretrainingObjective,
    build_model,
    evaluate_pretraining,
    maskable,
    pretrain,
    recipe,
)

CROP = 4.0


def tiny(feature_grad_mult: float = 0.1, **overrides) -> PretrainingModel:
    torch.manual_seed(0)
    model = PretrainingModel(build_backbone("tiny", **{**NO_DROPOUT, **overrides}),
                             PretrainingConfig(feature_grad_mult=feature_grad_mult))
    model.add_head("en")
    model.activate("en")
    return model


def fixed_inputs(model: PretrainingModel, seconds: float = 1.0):
    """A padded batch of two with a fixed mask and fixed distractors."""
    samples = int(seconds * 16000)
    waveforms = torch.randn(2, samples, generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(2, samples, dtype=torch.long)
    attention_mask[1, samples * 3 // 4:] = 0
    waveforms[1, samples * 3 // 4:] = 0
    frames = model.backbone._get_feat_extract_output_lengths(attention_mask.sum(1))
    mask = torch.from_numpy(compute_mask_indices((2, int(frames.max())), frames.numpy(),
                                                 rng=np.random.default_rng(0)))
    negatives = sample_negatives(mask, 100, torch.Generator().manual_seed(0))
    return waveforms, attention_mask, {"mask_indices": mask, "negatives": negatives}


def pretraining_utterances(corpus):
    return filter_by_length(open_corpus(corpus, "pretrain", "en"))[0]


@pytest.fixture(scope="module")
def trained_run(synth_corpus, tmp_path_factory):
    """A tiny model before and after 6 updates on the synthetic English pre-training split."""
    out = tmp_path_factory.mktemp("pretrain")
    utterances = pretraining_utterances(synth_corpus)
    model = build_model("tiny", "en", "tiny")
    model.activate("en")
    before = evaluate_pretraining(model, utterances, CROP)
    config = recipe("tiny", max_updates=6, warmup_updates=1, lr=2e-3, max_seconds_per_batch=8, log_every=1,
                    progress=False).train
    history = pretrain(model, "en", utterances, config, out, crop_seconds=CROP)
    return model, before, evaluate_pretraining(model, utterances, CROP), history, out


def test_a_few_updates_lower_the_contrastive_loss_with_finite_logs(trained_run):
    _, before, after, history, out = trained_run
    assert after["contrastive"] < before["contrastive"]
    assert [row["update"] for row in history] == list(range(1, 7))
    for row in history:
        for key in ("loss", "contrastive", "diversity", "feature_penalty", "prob_perplexity", "code_perplexity",
                    "accuracy", "temperature"):
            assert np.isfinite(row[key]), key
        assert 1 <= row["code_perplexity"] <= 320 and 0 <= row["accuracy"] <= 1 and row["items"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["too_short_to_mask"] == 0 and run["train_utterances"] == 5


def test_saved_run_loads_back_with_equal_outputs(trained_run):
    model, _, _, _, out = trained_run
    model.eval()
    waveforms, attention_mask, fixed = fixed_inputs(model)
    expected = model(waveforms, attention_mask, **fixed)
    from_hf = PretrainingModel.from_pretraining(load_pretraining_model(out / "model"), "en", model.config)
    from_hf.activate("en")
    full = load_pretraining(out)
    full.activate("en")
    for loaded in (from_hf, full):
        got = loaded.eval()(waveforms, attention_mask, **fixed)
        assert torch.equal(got.logits, expected.logits)
        assert torch.equal(got.loss, expected.loss)
    assert full.tasks == ["en"] and full.config == model.config


def test_export_to_transformers_round_trips_and_new_heads_start_fresh_or_copied():
    model = tiny()
    model.eval()
    waveforms, attention_mask, fixed = fixed_inputs(model)
    expected = model(waveforms, attention_mask, **fixed)
    back = PretrainingModel.from_pretraining(model.to_hf("en"), "en", model.config)
    back.activate("en")
    assert torch.equal(back.eval()(waveforms, attention_mask, **fixed).loss, expected.loss)

    model.add_head("es", init_from="en")
    model.add_head("fr")
    en, es, fr = (dict(model.heads[t].named_parameters()) for t in ("en", "es", "fr"))
    assert all(torch.equal(en[k], es[k]) and en[k] is not es[k] for k in en)
    assert not torch.equal(en["quantizer.codevectors"], fr["quantizer.codevectors"])
    assert model.tasks == ["en", "es", "fr"]


def test_cnn_gets_no_gradient_when_feature_grad_mult_is_zero():
    model = tiny(feature_grad_mult=0.0).train()
    waveforms, attention_mask, fixed = fixed_inputs(model)
    model(waveforms, attention_mask, **fixed).loss.backward()
    assert all(p.grad is None for p in model.backbone.feature_extractor.parameters())
    assert model.backbone.feature_projection.projection.weight.grad is not None


def test_cnn_gradient_is_scaled_by_feature_grad_mult():
    grads = {}
    for scale in (1.0, 0.1):
        model = tiny(feature_grad_mult=scale).train()
        waveforms, attention_mask, fixed = fixed_inputs(model)
        torch.manual_seed(1)  # the same Gumbel noise for both runs
        model(waveforms, attention_mask, **fixed).loss.backward()
        grads[scale] = [p.grad.clone() for p in model.backbone.feature_extractor.parameters()]
        grads[f"projection {scale}"] = model.backbone.feature_projection.projection.weight.grad.clone()
    for g, g1 in zip(grads[0.1], grads[1.0], strict=True):  # 0.1 x, up to float rounding
        assert (g - 0.1 * g1).norm() <= 1e-5 * (0.1 * g1).norm() and g1.norm() > 0
    assert torch.allclose(grads["projection 0.1"], grads["projection 1.0"])  # only the CNN's gradient is scaled


def test_gumbel_temperature_anneals_from_2_to_the_floor_every_update():
    assert gumbel_temperature(0) == 2.0
    assert gumbel_temperature(1) == pytest.approx(2 * 0.999995)
    assert gumbel_temperature(100_000) == pytest.approx(2 * 0.999995**100_000)
    assert gumbel_temperature(277_000) > 0.5 and gumbel_temperature(278_000) == 0.5  # the floor at n ~ 277.3k
    assert gumbel_temperature(400_000, (2.0, 0.1, 0.999995)) == pytest.approx(2 * 0.999995**400_000)
    model = tiny()
    model.add_head("es")
    PretrainingObjective(model).on_update(model, 50_000)
    assert all(h.quantizer.temperature == pytest.approx(2 * 0.999995**50_000) for h in model.heads.values())


def test_codebook_collapse_is_warned_once_after_warm_up(caplog):
    objective = PretrainingObjective(tiny(), collapse_after=100, collapse_window=3)

    def warnings(perplexity: float, steps: int = 350, count: int = 3) -> list[str]:
        for _ in range(count):
            objective.check_codebook(perplexity, steps)
        return [r.message for r in caplog.records if "codebook collapse" in r.message]

    assert objective.model.heads["en"].quantizer.num_vars == 64
    with caplog.at_level(logging.WARNING, logger="wavadapt.training.pretrain"):
        objective.on_update(objective.model, 50)
        assert warnings(3.0) == []  # still warming up
        objective.on_update(objective.model, 150)
        assert warnings(40.0) == []  # above half of the 64 entries
        assert warnings(20.0, count=1) == []  # one poor batch: the window's mean stays above half
        found = warnings(30.0)  # stays below 32
        assert len(found) == 1 and "update 150" in found[0]
        assert len(warnings(2.0)) == 1  # warned once
        assert len(warnings(15.0, steps=20)) == 1  # 20 masked steps show at most 20 codes: 15 is healthy
        assert len(warnings(5.0, steps=20)) == 2  # collapsed again after the recovery


def test_utterances_too_short_to_mask_are_skipped(synth_corpus):
    model = tiny()
    utterances = pretraining_utterances(synth_corpus)
    short = replace(utterances[0], id="short", num_samples=20 * 320)  # 19 frames < 10 x 2 + 1
    kept, skipped = maskable(model, [*utterances, short], CROP)
    assert skipped == 1 and kept == utterances


def test_language_adapter_pretraining_trains_only_the_adapter_and_head(synth_corpus, tmp_path):
    model = tiny()
    add_adapter(model.backbone, "es", AdapterConfig(size=16))
    model.add_head("es", init_from="en", adapters=("es",))
    trainable = {f"backbone.{k}": p for k, p in adapter_parameters(model.backbone, "es").items()}
    trainable |= {f"heads.es.{k}": p for k, p in model.heads["es"].named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = recipe("tiny", max_updates=1, warmup_updates=1, max_seconds_per_batch=8, progress=False).train
    pretrain(model, "es", pretraining_utterances(synth_corpus), config, tmp_path, trainable=trainable,
             crop_seconds=CROP)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in trainable)
    assert any(not torch.equal(before[k], after[k]) for k in trainable)
    assert (tmp_path / "adapter.es.json").is_file() and (tmp_path / "adapter.es.safetensors").is_file()
    full = load_pretraining(tmp_path)
    assert full.tasks == ["en", "es"] and full.stacks["es"] == ("es",)


def test_cli_overrides_the_recipes_loss_weights(synth_corpus, tmp_path):
    result = CliRunner().invoke(app, ["pretrain", str(synth_corpus), "--language", "en", "--model", "tiny", "--out",
                                      str(tmp_path), "--preset", "tiny", "--max-updates", "1",
                                      "--max-seconds-per-batch", "8", "--diversity-weight", "0.2",
                                      "--feature-penalty-weight", "1.5"])
    assert result.exit_code == 0, result.output
    objective = json.loads((tmp_path / "run.json").read_text())["objective"]
    assert objective["diversity_weight"] == 0.2 and objective["feature_penalty_weight"] == 1.5


def test_a_fresh_preset_takes_another_codebook_size_and_a_trained_model_keeps_its_own(synth_corpus, tmp_path):
    args = ["pretrain", str(synth_corpus), "--language", "en", "--model", "tiny", "--preset", "tiny", "--max-updates",
            "1", "--max-seconds-per-batch", "8", "--codevectors-per-group", "32"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    trained = load_pretraining(tmp_path / "a")
    assert trained.backbone.config.num_codevectors_per_group == 32
    assert trained.heads["en"].quantizer.codevectors.shape[1] == 2 * 32
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--model", str(tmp_path / "a")])
    assert isinstance(result.exception, WavadaptError) and "has its own" in str(result.exception)
