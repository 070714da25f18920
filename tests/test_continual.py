"""Continual pre-training: cwav2vec 2.0 never changes what earlier tasks use; the baselines do."""

import copy
import json

import numpy as np
import pytest
import torch

from wavadapt.data.audio import read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.errors import WavadaptError
from wavadapt.model.backbone import build_backbone
from wavadapt.model.pretraining import PretrainingConfig, PretrainingModel
from wavadapt.training.continual import ContinualConfig, prepare_continual
from wavadapt.training.feature_cache import cnn_fingerprint
from wavadapt.training.pretrain import build_model, pretrain, recipe

UPDATES = 3


def english_model():
    return build_model("tiny", "en", "tiny", seed=0)


def english_outputs(model, corpus):
    """The English task's losses and logits on fixed audio, masks and distractors, in eval mode."""
    wav = torch.from_numpy(read_audio(open_corpus(corpus, "dev", "en")[0].path)[None, :32000])
    model.eval()
    model.activate("en")
    with torch.no_grad():
        out = model(wav, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
    return out.logits, out.loss


def learn_spanish(model, corpus, tmp_path, method, feature_cache=None, **kwargs):
    trainable, regularizer = prepare_continual(model, "es", ContinualConfig(method, **kwargs))
    initial = {k: p.detach().clone() for k, p in trainable.items()}
    config = recipe("tiny", max_updates=UPDATES, progress=False, max_seconds_per_batch=8).train
    pretrain(model, "es", open_corpus(corpus, "pretrain", "es"), config, tmp_path, trainable=trainable,
             crop_seconds=4.0, regularizer=regularizer, feature_cache=feature_cache)
    return trainable, initial


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cwav2vec_leaves_every_earlier_parameter_and_output_bit_identical(synth_corpus, tmp_path):
    model = english_model()
    before, (logits, loss) = snapshot(model), english_outputs(model, synth_corpus)
    cnn_backward = []
    model.backbone.feature_extractor.register_full_backward_hook(lambda *args: cnn_backward.append(1))
    trainable, initial = learn_spanish(model, synth_corpus, tmp_path, "cwav2vec", adapter_size=16)
    after = model.state_dict()
    assert set(before) < set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing English uses has moved
    new = set(after) - set(before)
    assert new == set(trainable)  # everything new trained, and it is Spanish's own
    assert all(".es." in k or k.startswith("heads.es.") for k in new)
    assert all(not torch.equal(initial[k], after[k]) for k in new if ".adapters." in k)  # and it learnt
    logits_after, loss_after = english_outputs(model, synth_corpus)
    assert torch.equal(logits, logits_after) and torch.equal(loss, loss_after)
    assert not cnn_backward  # the frozen CNN ran without autograd
    trained = {id(p) for p in trainable.values()}
    assert not any(p.requires_grad for p in model.backbone.encoder.parameters() if id(p) not in trained)


def test_warm_start_forgets_and_multihead_keeps_the_cnn_and_the_old_head(synth_corpus, tmp_path):
    warm = english_model()
    logits, _ = english_outputs(warm, synth_corpus)
    before = snapshot(warm)
    learn_spanish(warm, synth_corpus, tmp_path / "warm", "warm-start")
    assert not torch.equal(english_outputs(warm, synth_corpus)[0], logits)
    assert any(not torch.equal(before[k], v) for k, v in warm.state_dict().items()
               if k.startswith("backbone.feature_extractor."))

    multi = english_model()
    learn_spanish(multi, synth_corpus, tmp_path / "multi", "multihead")
    after = multi.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before
               if k.startswith(("backbone.feature_extractor.", "heads.en.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.encoder.layers."))
    assert not torch.equal(english_outputs(multi, synth_corpus)[0], logits)


def test_multihead_l2_pulls_the_transformer_toward_the_previous_task(synth_corpus, tmp_path):
    def drift(method, **kwargs):
        model = english_model()
        start = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.encoder.")}
        learn_spanish(model, synth_corpus, tmp_path / method / str(kwargs), method, **kwargs)
        return sum(((model.state_dict()[k] - v) ** 2).sum() for k, v in start.items()).item()

    torch.manual_seed(0)
    free = drift("multihead")
    torch.manual_seed(0)
    pulled = drift("multihead-l2", l2_weight=1e4)
    assert 0 < pulled < free


def test_refusals(synth_corpus):
    model = english_model()
    with pytest.raises(WavadaptError, match="already learnt task 'en'"):
        prepare_continual(model, "en", ContinualConfig("cwav2vec"))
    with pytest.raises(WavadaptError, match="unknown continual method"):
        ContinualConfig("ewc")


def test_cwav2vec_on_cached_cnn_features_trains_only_its_own_parameters(synth_corpus, tmp_path):
    model = english_model()
    before, (logits, loss) = snapshot(model), english_outputs(model, synth_corpus)
    cnn_calls = []
    model.backbone.feature_extractor.register_forward_hook(lambda *args: cnn_calls.append(1))
    trainable, initial = learn_spanish(model, synth_corpus, tmp_path, "cwav2vec", feature_cache=tmp_path / "cache",
                                       adapter_size=16)
    utterances = len(open_corpus(synth_corpus, "pretrain", "es"))
    assert len(cnn_calls) <= utterances  # the CNN ran once per utterance to build the cache, not per update
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(after) - set(before) == set(trainable)
    assert all(not torch.equal(initial[k], after[k]) for k in trainable if ".adapters." in k)
    assert all(torch.equal(english_outputs(model, synth_corpus)[i], x) for i, x in enumerate((logits, loss)))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["feature_cache"]["fingerprint"] == cnn_fingerprint(model)
    assert run["feature_cache"]["path"] == str(tmp_path / "cache")
    assert (tmp_path / "cache" / "feature_cache.json").is_file()


def test_warm_start_refuses_the_feature_cache(synth_corpus, tmp_path):
    with pytest.raises(WavadaptError, match="frozen CNN"):
        learn_spanish(english_model(), synth_corpus, tmp_path, "warm-start", feature_cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_cached_update_equals_an_uncached_one_for_a_per_frame_cnn_without_crops(synth_corpus, tmp_path):
    # A layer-norm CNN is per-frame and its convs have no padding, and without crops both paths normalise
    # whole utterances: the fp32 cache holds exactly what the CNN computes inside the padded batch.
    torch.manual_seed(0)
    backbone = build_backbone("tiny", feat_extract_norm="layer", conv_bias=True, layerdrop=0.0)
    first = PretrainingModel(backbone, PretrainingConfig(feature_grad_mult=0.0))
    first.add_head("en")
    utterances = open_corpus(synth_corpus, "pretrain", "es")
    config = recipe("tiny", max_updates=1, progress=False, max_seconds_per_batch=1000.0).train
    models = {}
    for cached in (False, True):
        model = copy.deepcopy(first)
        pretrain(model, "en", utterances, config, tmp_path / str(cached), crop_seconds=None,
                 feature_cache=tmp_path / "cache" if cached else None, feature_cache_dtype=torch.float32)
        models[cached] = model.state_dict()
    assert json.loads((tmp_path / "True" / "run.json").read_text())["feature_cache"]["dtype"] == "float32"
    assert len({len(read_audio(u.path)) for u in utterances}) > 1  # one padded batch of different lengths
    moved = [k for k in models[False] if not torch.equal(models[False][k], first.state_dict()[k])]
    assert moved and not any(k.startswith("backbone.feature_extractor.") for k in moved)
    for k, v in models[False].items():
        torch.testing.assert_close(models[True][k], v, rtol=0, atol=0, msg=k)
