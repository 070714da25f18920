"""Fine-tuning end to end: every method trains, saves a task file, and reloads into a fresh backbone with
identical transcripts; frozen lower layers run without autograd."""

import pytest
import torch

from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.evaluation.corpus import evaluate
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_backbone
from wavadapt.model.ctc import CTCModel
from wavadapt.training.finetune import AugmentConfig, finetune
from wavadapt.training.loop import TrainConfig
from wavadapt.training.methods import METHODS, MethodConfig, prepare

TOP_N = {"top-n-full": 2, "top-n-adapters": 2}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_saves_and_reloads_identically(method, synth_corpus, tmp_path):
    train = open_corpus(synth_corpus, "train", "en")
    test = open_corpus(synth_corpus, "test", "en")
    model = load_asr_model("tiny", [])
    config = TrainConfig(max_updates=3, lr=1e-3, max_seconds_per_batch=20, progress=False)
    history = finetune(model, "en", train, MethodConfig(method, TOP_N.get(method), adapter_size=32,
                                                        freeze_updates=1 if method == "full" else 0),
                       config, tmp_path, valid=test, augment=AugmentConfig(mask_time_prob=0.2, mask_feature_prob=0.1))
    assert history[-1]["update"] == 3 and "valid_wer" in history[-1]
    trained = evaluate(model, test, max_seconds_per_batch=20, out_dir=tmp_path / "trained")

    changed_backbone = method in ("full", "top-n-full")
    assert (tmp_path / "backbone").exists() == changed_backbone
    source = tmp_path / "backbone" if changed_backbone else "tiny"
    fresh = load_asr_model(source, [tmp_path / "adapter.en.json"])
    reloaded = evaluate(fresh, test, max_seconds_per_batch=20, out_dir=tmp_path / "reloaded")
    hyps = [(tmp_path / run / "hyp.en.txt").read_text() for run in ("trained", "reloaded")]
    assert hyps[0] == hyps[1] and hyps[0].strip()
    assert reloaded.cer == trained.cer


def test_frozen_layers_below_the_top_n_run_without_autograd(synth_corpus):
    train = open_corpus(synth_corpus, "train", "en")
    model = CTCModel(build_backbone("tiny"))
    prepare(model, "en", Vocabulary.build([u.text for u in train], "en"), MethodConfig("top-n-adapters", 2))
    grads = {}
    for i, layer in enumerate(model.backbone.encoder.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: grads.__setitem__(i, out[0].requires_grad))
    model.train()
    out = model(torch.randn(2, 16000))
    assert grads == {0: False, 1: False, 2: True, 3: True}
    assert out.logits.requires_grad


def test_utterances_longer_than_a_batch_are_skipped_and_listed(synth_corpus, tmp_path):
    """An utterance no batch can hold is outside the length limits, like one over max_seconds: skipped and listed
    in run.json, where the sampler would refuse the whole run."""
    import json

    from wavadapt.data.batching import filter_by_length

    train = filter_by_length(open_corpus(synth_corpus, "train", "en")).kept  # reads the lengths
    cap = sorted(u.num_samples for u in train)[len(train) // 2] / 16000  # half of them are longer
    config = TrainConfig(max_updates=1, lr=1e-3, max_seconds_per_batch=cap, progress=False)
    finetune(load_asr_model("tiny", []), "en", train, MethodConfig("adapters", adapter_size=8), config, tmp_path)
    skipped = json.loads((tmp_path / "run.json").read_text())["skipped"]["outside_length"]
    assert sorted(skipped) == sorted(u.id for u in train if u.num_samples > cap * 16000) and skipped
