"""Cached CNN features: the same losses as running the CNN (pre-training and fine-tuning), frame-space crops,
fingerprints, shards, one cache shared by the runs of a backbone."""

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wavadapt.cli import app
from wavadapt.data.batching import collate
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.errors import CheckpointError, WavadaptError
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.backbone import build_backbone, conv_geometry
from wavadapt.model.ctc import CTCModel
from wavadapt.model.pretraining import PretrainingModel
from wavadapt.objectives.contrastive import sample_negatives
from wavadapt.objectives.masking import compute_mask_indices
from wavadapt.training.continual import ContinualConfig, prepare_continual
from wavadapt.training.feature_cache import (
    CachedFeatureDataset,
    FeatureCache,
    build_feature_cache,
    cnn_features,
    cnn_fingerprint,
    collate_cached,
    collate_features,
    frames_of,
    write_feature_cache,
)
from wavadapt.training.finetune import AugmentConfig, finetune
from wavadapt.training.loop import TrainConfig
from wavadapt.training.methods import MethodConfig, prepare
from wavadapt.training.pretrain import build_model


def continual_model(method="cwav2vec", trainable=False):
    model = build_model("tiny", "en", "tiny", seed=0)
    model.backbone.config.layerdrop = 0.0  # every layer runs, so every adapter gets a gradient
    params, _ = prepare_continual(model, "es", ContinualConfig(method, adapter_size=16))
    model.activate("es")
    return (model, params) if trainable else model


def waveforms(n=2, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, int(seconds * 16000), generator=g)


def draws(model, batch, frames, seed=0):
    c = model.config
    mask = torch.from_numpy(compute_mask_indices((batch, frames), None, c.mask_prob, c.mask_length, c.min_masks,
                                                 c.require_same_masks, np.random.default_rng(seed)))
    return {"mask_indices": mask, "negatives": sample_negatives(mask, 10, torch.Generator().manual_seed(seed))}


def test_geometry_is_wav2vec2s_400_sample_field_and_320_sample_hop():
    model = continual_model()
    assert conv_geometry(model.backbone.config) == (400, 320)
    assert [frames_of(model, s) for s in (399, 400, 719, 720, 16000)] == [0, 1, 1, 2, 49]


def test_forward_from_cached_fp32_features_equals_the_models_forward(tmp_path):
    model = continual_model().eval()  # eval: no dropout, argmax codes, so both runs are deterministic
    wav = waveforms()
    ids = ["a", "b"]
    cache = write_feature_cache(model, zip(ids, wav, strict=True), tmp_path, dtype=torch.float32)
    cnn_out, frame_mask = collate_features([cache.features(i) for i in ids])
    fixed = draws(model, 2, cnn_out.shape[2])
    with torch.no_grad():
        expected = model(wav, torch.ones_like(wav, dtype=torch.long), **fixed)
        got = model(cnn_features=cnn_out, frame_mask=frame_mask, **fixed)
    for name in ("loss", "contrastive", "diversity", "feature_penalty", "logits"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)


def test_fp16_cache_changes_the_loss_only_by_rounding(tmp_path):
    model = continual_model().eval()
    wav = waveforms()
    cache = write_feature_cache(model, zip("ab", wav, strict=True), tmp_path)  # fp16 by default
    assert cache.dtype == torch.float16
    cnn_out, frame_mask = collate_features([cache.features(i) for i in "ab"])
    fixed = draws(model, 2, cnn_out.shape[2])
    with torch.no_grad():
        expected = model(wav, **fixed)
        got = model(cnn_features=cnn_out, frame_mask=frame_mask, **fixed)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-2, atol=0)


def test_cached_update_trains_the_adapters_and_head_only():
    model, trainable = continual_model(trainable=True)
    model.train().requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    names, params = set(trainable), dict(model.named_parameters())
    wav = waveforms()
    cnn_out, frame_mask = collate_features([cnn_features(model, w) for w in wav])
    model(cnn_features=cnn_out, frame_mask=frame_mask, **draws(model, 2, cnn_out.shape[2])).loss.backward()
    assert all(params[n].grad is not None for n in names if ".adapters." in n)
    assert all(p.grad is None for n, p in params.items() if n not in names)


def test_cached_features_are_refused_by_a_model_that_trains_its_cnn():
    model = continual_model("warm-start")
    cnn_out, frame_mask = collate_features([cnn_features(model, waveforms(1)[0])])
    with pytest.raises(WavadaptError, match="frozen CNN"):
        model(cnn_features=cnn_out, frame_mask=frame_mask)


def test_frame_space_crop_of_a_per_frame_cnn_equals_the_cnn_on_the_aligned_audio_crop():
    # A layer-norm CNN is local and its convs have no padding: frames [k, k + n) of the whole utterance
    # see exactly the samples of the crop starting at 320 k, so the features agree up to float rounding.
    model = PretrainingModel(build_backbone("tiny", feat_extract_norm="layer", conv_bias=True)).eval()
    wav = waveforms(1, 3.0)[0]
    whole = cnn_features(model, wav)
    for k, samples in ((0, 16000), (7, 16000), (20, 12345), (whole.shape[1] - 49, 16000)):
        crop = cnn_features(model, wav[320 * k : 320 * k + samples])
        torch.testing.assert_close(whole[:, k : k + crop.shape[1]], crop, rtol=1e-4, atol=1e-5)


def test_group_norm_cnn_crop_differs_from_the_audio_crop_everywhere_not_only_at_the_edges():
    # Base's GroupNorm normalises each channel over the whole utterance: a documented difference.
    model = continual_model().eval()
    wav = torch.cat([waveforms(1, 2.0)[0], 5 * waveforms(1, 2.0, seed=1)[0]])  # louder second half
    whole = cnn_features(model, wav)
    crop = cnn_features(model, wav[320 * 10 : 320 * 10 + 16000])
    diff = (whole[:, 10 : 10 + crop.shape[1]] - crop).abs().amax(0)  # per frame
    assert crop.shape[1] == frames_of(model, 16000)
    assert bool((diff[5:-5] > 1e-3).all())


def test_fingerprint_follows_the_cnn_weights_only(tmp_path):
    model = continual_model()
    same = copy.deepcopy(model)
    with torch.no_grad():
        same.backbone.encoder.layers[0].feed_forward.output_dense.weight.add_(1.0)  # not the CNN
    assert cnn_fingerprint(same) == cnn_fingerprint(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.backbone.feature_extractor.conv_layers[3].conv.weight[0, 0, 0] += 1e-3
    assert cnn_fingerprint(other) != cnn_fingerprint(model)
    write_feature_cache(model, [("a", waveforms(1)[0])], tmp_path)
    assert len(FeatureCache.open(tmp_path, same)) == 1
    with pytest.raises(CheckpointError, match="another CNN"):
        FeatureCache.open(tmp_path, other)


def test_shards_partial_reads_pickling_and_duplicate_ids(tmp_path):
    model = continual_model()
    wav = waveforms(5, 0.5)
    ids = [f"u{i}" for i in range(5)]
    cache = write_feature_cache(model, zip(ids, wav, strict=True), tmp_path, shard_bytes=1)  # one per shard
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 5
    assert cache.ids == ids and "u3" in cache and "zz" not in cache
    full = cache.features("u3")
    assert full.dtype == torch.float32 and full.shape == (128, frames_of(model, 8000))
    torch.testing.assert_close(cache.features("u3", 4, 10), full[:, 4:14])
    assert torch.equal(pickle.loads(pickle.dumps(cache)).features("u3"), full)  # DataLoader workers
    with pytest.raises(WavadaptError, match="out of range"):
        cache.features("u3", 20, 10)
    with pytest.raises(WavadaptError, match="appears twice"):
        write_feature_cache(model, [("a", wav[0]), ("a", wav[1])], tmp_path / "dup")


def test_dataset_crops_in_frame_space_per_epoch_and_collates_with_a_frame_mask(tmp_path):
    model = continual_model()
    wav = waveforms(3, 2.0)
    cache = write_feature_cache(model, [("long", wav[0]), ("long2", wav[1]), ("short", wav[2][:6000])], tmp_path)
    dataset = CachedFeatureDataset(cache, ["long", "long2", "short"], crop_seconds=1.0, seed=0)
    crop = frames_of(model, 16000)
    items = [dataset[i] for i in range(3)]
    assert [it["features"].shape[1] for it in items] == [crop, crop, frames_of(model, 6000)]
    assert torch.equal(dataset[0]["features"], items[0]["features"])  # the same draw within an epoch
    whole = cache.features("long")
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        f = dataset[0]["features"]
        start = next(k for k in range(whole.shape[1] - crop + 1) if torch.equal(whole[:, k : k + crop], f))
        starts.add(start)
    assert len(starts) > 1  # a new window each epoch, on the frame grid
    assert dataset.lengths() == [(crop - 1) * 320 + 400] * 2 + [(frames_of(model, 6000) - 1) * 320 + 400]
    batch = collate_cached(items)
    assert batch["features"].shape == (3, 128, crop) and batch["ids"] == ["long", "long2", "short"]
    assert batch["frame_mask"].sum(1).tolist() == [crop, crop, frames_of(model, 6000)]
    assert batch["audio_seconds"] == sum(dataset.lengths()) / 16000  # what the training loop logs
    assert CachedFeatureDataset.collate is collate_cached  # what the training loop batches with
    out = model.train()(cnn_features=batch["features"], frame_mask=batch["frame_mask"], rng=np.random.default_rng(0),
                           generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    with pytest.raises(WavadaptError, match="not in the feature cache"):
        CachedFeatureDataset(cache, ["nope"])


def test_build_from_a_corpus_is_reused_until_the_cnn_changes(synth_corpus, tmp_path, monkeypatch):
    model = continual_model()
    utterances = open_corpus(synth_corpus, "pretrain", "es")
    cache = build_feature_cache(model, utterances, tmp_path / "cache")
    assert set(cache.ids) == {u.id for u in utterances} and not cache.skipped
    import wavadapt.training.feature_cache as fc

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a valid cache")

    monkeypatch.setattr(fc, "write_feature_cache", no_rebuild)
    assert build_feature_cache(model, utterances, tmp_path / "cache").ids == cache.ids
    monkeypatch.undo()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.backbone.feature_extractor.conv_layers[0].conv.weight.mul_(2)
    rebuilt = build_feature_cache(other, utterances, tmp_path / "cache")
    assert rebuilt.fingerprint == cnn_fingerprint(other) != cache.fingerprint


# --- fine-tuning on cached features ---


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_the_ctc_model_runs_from_cached_features_as_from_a_padded_batch_of_waveforms(family):
    model = CTCModel(build_backbone("tiny", family)).eval()
    model.add_task("en", Vocabulary.build(["abc"], "en"))
    model.activate("en")
    wavs = list(waveforms(2, 1.0))
    wavs[1] = wavs[1][:11_000]
    batch = collate([{"id": str(i), "waveform": w} for i, w in enumerate(wavs)])
    features, frame_mask = collate_features([cnn_features(model, w) for w in wavs])
    with torch.no_grad():
        audio = model(batch["waveforms"], batch["attention_mask"])
        cached = model(cnn_features=features, frame_mask=frame_mask)
    assert torch.equal(audio.lengths, cached.lengths) and cached.lengths.tolist() == [49, 34]
    for row, n in enumerate(cached.lengths):
        torch.testing.assert_close(cached.logits[row, :n], audio.logits[row, :n], atol=1e-5, rtol=1e-5)
    assert model.backbone.feature_extractor.conv_layers  # the CNN is back in place


def test_fine_tuning_on_the_cache_trains_as_on_audio_and_shares_one_cache(synth_corpus, tmp_path):
    """Same batches, masks and updates (fp32 cache): the trained adapters agree up to float rounding, frozen
    parameters stay bit-identical, and a second run of the backbone reuses the first run's cache."""
    train = open_corpus(synth_corpus, "train", "en")
    config = TrainConfig(max_updates=4, lr=1e-3, max_seconds_per_batch=8, progress=False)
    augment = AugmentConfig(mask_time_prob=0.2, mask_feature_prob=0.0, layerdrop=0.0)
    torch.manual_seed(config.seed)  # as finetune seeds them: the new weights before training
    prepare(initial := load_asr_model("tiny", []), "en", Vocabulary.build([u.text for u in train], "en"),
            MethodConfig("adapters", adapter_size=16))
    models, histories = {}, {}
    for cached in (False, True):
        models[cached] = load_asr_model("tiny", [])
        histories[cached] = finetune(models[cached], "en", train, MethodConfig("adapters", adapter_size=16), config,
                                     tmp_path / str(cached), augment=augment,
                                     feature_cache=tmp_path / "cache" if cached else None)
    for a, b in zip(histories[False], histories[True], strict=True):
        assert a["audio_seconds"] == b["audio_seconds"]  # the same batches
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    audio, cached = (models[c].state_dict() for c in (False, True))
    base = load_asr_model("tiny", []).state_dict()
    assert all(torch.equal(cached[k], base[k]) and torch.equal(audio[k], base[k]) for k in base if k in cached)
    trained = [k for k in cached if k not in base]  # adapters, their layer norms, the head: same init in both
    moved = torch.cat([(audio[k] - initial.state_dict()[k]).flatten() for k in trained]).norm()
    apart = torch.cat([(cached[k] - audio[k]).flatten() for k in trained]).norm()
    assert apart < 0.01 * moved  # Adam turns float rounding of near-zero gradients into whole steps, rarely
    info = json.loads((tmp_path / "True" / "run.json").read_text())["feature_cache"]
    assert info["fingerprint"] == cnn_fingerprint(models[True]) and info["dtype"] == "float32"
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [Path(info["path"]).name]

    built = (Path(info["path"]) / "feature_cache.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["finetune", str(synth_corpus), "--language", "en", "--model", "tiny", "--out",
                                      str(tmp_path / "again"), "--method", "top-n-adapters", "--top-n", "1",
                                      "--adapter-size", "16", "--max-updates", "1", "--max-seconds-per-batch", "8",
                                      "--valid-split", "", "--feature-cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (Path(info["path"]) / "feature_cache.json").stat().st_mtime_ns == built
    assert json.loads((tmp_path / "again" / "run.json").read_text())["feature_cache"]["path"] == info["path"]
