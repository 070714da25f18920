"""The training loop: frozen parameters untouched, exact resume, torchrun DDP == one process, NaN skipping."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavadapt.data.batching import AudioDataset, LengthBucketBatchSampler, filter_by_length
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import Vocabulary
from wavadapt.model.backbone import build_backbone
from wavadapt.model.ctc import CTCModel
from wavadapt.training.finetune import ctc_objective
from wavadapt.training.loop import TrainConfig, Trainer, TrainingError, lr_lambda
from wavadapt.training.methods import MethodConfig, prepare

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  layerdrop=0.0, mask_time_prob=0.0)
HERE = Path(__file__).parent
DDP_BATCH_SECONDS = 12
# Adam with eps far above the gradients is plain momentum SGD: the update is linear in the gradient, so
# summation-order noise stays noise (with eps 1e-8 a near-zero gradient's rounding decides a whole step).
DDP_RUN = dict(max_seconds_per_batch=DDP_BATCH_SECONDS, lr=0.01, eps=1.0)


def labeled(corpus: Path):
    utts = [u for split in ("train", "dev", "test") for u in open_corpus(corpus, split, "en")]
    return filter_by_length(utts, 0.5, 30)[0]


def make_run(corpus: Path, method: str = "adapters", top_n=None, dropout: bool = True, **train):
    """A tiny model prepared for ``method`` and a dataset of the synthetic English utterances."""
    utts = labeled(corpus)
    vocab = Vocabulary.build([u.text for u in utts], "en")
    torch.manual_seed(0)
    model = CTCModel(build_backbone("tiny", **({} if dropout else NO_DROPOUT)))
    params = prepare(model, "en", vocab, MethodConfig(method=method, top_n=top_n))
    config = TrainConfig(**{"max_updates": 4, "lr": 1e-3, "max_seconds_per_batch": 8, "progress": False,
                            "log_every": 1, **train})
    return model, params, AudioDataset(utts, vocab), config


def snapshot(model):
    return {k: p.detach().clone() for k, p in model.state_dict().items()}


def test_frozen_parameters_are_bit_identical_and_trainable_ones_move(synth_corpus, tmp_path):
    model, params, data, config = make_run(synth_corpus, "top-n-adapters", top_n=2)
    before = snapshot(model)
    Trainer(model, params, ctc_objective(model), data, config, tmp_path).train()
    after = model.state_dict()
    trainable = set(params)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in trainable)
    assert all(not torch.equal(before[k], after[k]) for k in trainable)


def test_resume_continues_bit_for_bit(synth_corpus, tmp_path):
    # Dropout and SpecAugment stay on: resume must restore torch's and numpy's random state too.
    model, params, data, config = make_run(synth_corpus, "adapters", max_updates=6)
    model.backbone.config.mask_time_prob = 0.3
    Trainer(model, params, ctc_objective(model), data, config, tmp_path / "straight").train()
    straight = snapshot(model)

    model, params, data, config = make_run(synth_corpus, "adapters", max_updates=6)
    model.backbone.config.mask_time_prob = 0.3
    Trainer(model, params, ctc_objective(model), data, config, tmp_path / "split").train(until=3)  # "crash"
    model, params, data, config = make_run(synth_corpus, "adapters", max_updates=6)
    model.backbone.config.mask_time_prob = 0.3
    trainer = Trainer(model, params, ctc_objective(model), data, config, tmp_path / "split")
    trainer.resume(tmp_path / "split" / "checkpoints" / "last.pt")
    rows = trainer.train()
    assert [r["update"] for r in rows] == [4, 5, 6]
    assert all(torch.equal(straight[k], v) for k, v in model.state_dict().items())


def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(synth_corpus, tmp_path):
    model, params, data, config = make_run(synth_corpus, "adapters", dropout=False, update_freq=2, **DDP_RUN)
    # Precondition: the two ranks' shards interleave into the single process's batches (an odd batch
    # count would make the sampler split a batch to even the ranks out).
    for epoch in range(2):
        shards = [LengthBucketBatchSampler(data.lengths(), DDP_BATCH_SECONDS, num_replicas=2, rank=r) for r in (0, 1)]
        single = LengthBucketBatchSampler(data.lengths(), DDP_BATCH_SECONDS)
        for s in (*shards, single):
            s.set_epoch(epoch)
        assert list(single) == [b for pair in zip(*shards, strict=True) for b in pair]
    start = {k: p.detach().clone() for k, p in params.items()}
    single_log = Trainer(model, params, ctc_objective(model), data, config, tmp_path / "single").train()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(HERE / "ddp_worker.py"),
                    str(synth_corpus), str(tmp_path / "ddp")], check=True, env=env, timeout=300)
    ddp = torch.load(tmp_path / "ddp" / "params.pt")
    with (tmp_path / "ddp" / "log.csv").open() as f:
        ddp_log = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in ddp_log] == pytest.approx([r["loss"] for r in single_log], rel=1e-5)
    assert [int(r["items"]) for r in ddp_log] == [r["items"] for r in single_log]
    assert set(ddp) == set(params)
    for k, p in params.items():
        moved = (p.detach() - start[k]).abs().max()
        assert moved > 0
        torch.testing.assert_close(ddp[k], p.detach(), rtol=0, atol=1e-3 * moved.item())  # 0.1% of the step


def test_non_finite_updates_are_skipped_then_stop_the_run(synth_corpus, tmp_path):
    model, params, data, config = make_run(synth_corpus, "head-only", max_updates=20, max_bad_updates=3)
    calls = {"n": 0}
    objective = ctc_objective(model)

    def sometimes_nan(net, batch):
        calls["n"] += 1
        loss, n, extra = objective(net, batch)
        return (loss * math.nan if calls["n"] in (2, 4, 5, 6) else loss), n, extra

    before = snapshot(model)
    trainer = Trainer(model, params, sometimes_nan, data, config, tmp_path)
    with pytest.raises(TrainingError, match="3 updates in a row"):
        trainer.train()
    assert trainer.update == 2 and trainer.skipped_updates == 4  # updates 1 and 3 landed
    assert all(torch.isfinite(p).all() for p in params.values())
    assert any(not torch.equal(before[k], p) for k, p in params.items())


def test_tri_stage_schedule_follows_fairseq():
    f = lr_lambda(TrainConfig(max_updates=100, phase_ratio=(0.1, 0.4, 0.5), init_lr_scale=0.01,
                              final_lr_scale=0.05))
    assert f(0) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == f(49) == 1.0
    assert f(100) == pytest.approx(0.05)
    assert f(75) == pytest.approx(0.05 ** 0.5)
