"""wav2vec 2.0 self-supervised pre-training: the papers' recipes, the objective of the training loop,
length filtering and cropping, and the checkpoints a run leaves behind.

A run directory holds (besides the loop's ``checkpoints/last.pt``, ``log.csv``, ``run.json``)::

    model/                       the trained task as a transformers Wav2Vec2ForPreTraining directory:
                                 ``load_pretraining_model`` / ``load_backbone`` read it, fine-tuning starts from it
    pretraining.safetensors/.json  every head and adapter set (:func:`load_pretraining` continues from it)
    adapter.<name>.json/.safetensors  each adapter set that trained (a cwav2vec 2.0 language adapter), in the
                                 task-file format fine-tuning stacks on
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.batching import AudioDataset, filter_by_length, make_dataloader
from wavadapt.data.corpora import Utterance
from wavadapt.data.shard_stream import Shards, ShardStream
from wavadapt.errors import WavadaptError
from wavadapt.model.adapters import adapter_names, adapter_parameters, base_state
from wavadapt.model.pretraining import (
    PretrainingConfig,
    PretrainingModel,
    load_pretraining,
    save_pretraining,
)
from wavadapt.objectives.contrastive import correct_predictions
from wavadapt.training.feature_cache import CachedFeatureDataset, cached_dataset
from wavadapt.training.loop import Distributed, TrainConfig, Trainer
from wavadapt.training.run_folder import claim

log = logging.getLogger("wavadapt.training.pretrain")

_DROPOUT_01 = {"hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
               "feat_proj_dropout": 0.1, "feat_quantizer_dropout": 0.1}
_NO_DROPOUT = {k: 0.0 for k in _DROPOUT_01}
_ADAM = {"schedule": "linear", "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01}

# Per recipe: backbone config overrides (dropouts, layer drop), objective, optimisation, data. Batch sizes
# are per process; ``gpus`` is how many processes x update_freq the recipe's global batch assumes. The
# learning rate warms up over 8% of the updates (TrainConfig's default: 32k of Base's 400k), then decays
# linearly to 0 (fairseq's polynomial_decay).
# The quantizer shapes (G=2, V=320, final dim 256 Base / 768 Large; tiny V=64) come with the backbone preset.
PRETRAIN_PRESETS: dict[str, dict] = {
    # wav2vec 2.0 Base on LibriSpeech 960 h, as both papers pre-train it: fairseq
    # wav2vec2_base_librispeech.yaml (crop 250k samples, 1.4M samples per GPU x 64 GPUs = 1.6 h per update).
    "base": {
        "backbone": {**_DROPOUT_01, "layerdrop": 0.05},
        "objective": {"feature_grad_mult": 0.1, "feature_penalty_weight": 10.0, "latent_temp": (2.0, 0.5, 0.999995)},
        "train": {**_ADAM, "lr": 5e-4, "max_updates": 400_000, "max_seconds_per_batch": 1_400_000 / SAMPLE_RATE},
        "crop_seconds": 250_000 / SAMPLE_RATE, "min_seconds": 32_000 / SAMPLE_RATE, "gpus": 64,
    },
    # Large (pre-LN, the backbone's "large" preset) on LibriVox LV-60k, wav2vec 2.0 paper Sec. 4.2: lr 3e-4,
    # 600k updates, 8% warm-up, crop 20 s, 1.2M samples x 128 GPUs, dropout 0.1, no layer drop, Gumbel floor
    # 0.1, no feature penalty or CNN gradient scaling (those regularise the smaller LibriSpeech). fairseq's
    # released wav2vec2_large_librivox.yaml differs: lr 5e-3, 1M updates, dropout 0.
    "large": {
        "backbone": {**_DROPOUT_01, "layerdrop": 0.0},
        "objective": {"feature_grad_mult": 1.0, "feature_penalty_weight": 0.0, "latent_temp": (2.0, 0.1, 0.999995)},
        "train": {**_ADAM, "lr": 3e-4, "max_updates": 600_000, "max_seconds_per_batch": 1_200_000 / SAMPLE_RATE},
        "crop_seconds": 320_000 / SAMPLE_RATE, "min_seconds": 32_000 / SAMPLE_RATE, "gpus": 128,
    },
    # CPU tests and the demo: Base's objective on a few seconds of audio per batch, without Base's regularisers.
    # With them (dropout 0.1, layer drop, feature penalty 10, CNN gradient x0.1) the tiny model on 20 minutes
    # of synthetic speech stayed at chance (contrastive loss ln 101) for 680 updates; without them (lr 2e-3,
    # 60 warm-up updates, decay over 600) it left chance after ~500. Base's Gumbel temperature stays near 2 over
    # runs this short, as it should: annealed to 0.5 within 600 updates, the codebook collapsed further.
    "tiny": {
        "backbone": {**_NO_DROPOUT, "layerdrop": 0.0},
        "objective": {"feature_grad_mult": 1.0, "feature_penalty_weight": 0.0, "latent_temp": (2.0, 0.5, 0.999995)},
        "train": {**_ADAM, "lr": 5e-4, "max_updates": 200, "max_seconds_per_batch": 16.0},
        "crop_seconds": 4.0, "min_seconds": 0.0, "gpus": 1,
    },
}  # fmt: skip


@dataclass
class PretrainRecipe:
    """A preset unpacked: what to build the backbone with, the objective, the optimisation and the data."""

    backbone: dict
    objective: PretrainingConfig
    train: TrainConfig
    crop_seconds: float | None
    min_seconds: float
    gpus: int


def recipe(name: str, **train_overrides) -> PretrainRecipe:
    """The :data:`PRETRAIN_PRESETS` entry ``name`` with ``train_overrides`` applied to its TrainConfig.

    Unless overridden, ``update_freq`` is the recipe's GPUs over this run's processes (torchrun's
    WORLD_SIZE), so the global batch is the recipe's on any number of processes.
    """
    if name not in PRETRAIN_PRESETS:
        raise WavadaptError(f"unknown pre-training preset {name!r} (known: {', '.join(PRETRAIN_PRESETS)})")
    p = PRETRAIN_PRESETS[name]
    update_freq = max(1, p["gpus"] // int(os.environ.get("WORLD_SIZE", 1)))
    return PretrainRecipe(dict(p["backbone"]), PretrainingConfig(**p["objective"]),
                          TrainConfig(**{**p["train"], "update_freq": update_freq, **train_overrides}),
                          p["crop_seconds"], p["min_seconds"], p["gpus"])


def build_model(source: str | Path, task: str, preset: str = "base", *, trust_pickle: bool = False,
                seed: int = 0, codevectors_per_group: int | None = None) -> PretrainingModel:
    """A PretrainingModel with a head for ``task``, built with ``preset``'s dropouts, layer drop and objective.

    ``source`` is a backbone preset (tiny, base, large: fresh weights drawn with ``seed``; its quantizer with
    ``codevectors_per_group`` entries per codebook if given), a :func:`save_pretraining` directory (or a shipped
    one's name), a Hugging Face pre-training directory or a fairseq .pt (needs ``trust_pickle``). A head for
    ``task`` is added (fresh) when the source has none.
    """
    from wavadapt.model.backbone import (
        PRESETS,
        build_backbone,
        load_pretraining_model,
        resolve_checkpoint,
        source_of,
    )

    r = recipe(preset)
    given, source = str(source), resolve_checkpoint(source)  # a preset's name stays itself: no shipped one bears it
    if codevectors_per_group is not None and str(source) not in PRESETS:
        raise WavadaptError(f"the code vectors per group are a fresh preset's choice; {source} has its own")
    if str(source) in PRESETS:
        quantizer = {} if codevectors_per_group is None else {"num_codevectors_per_group": codevectors_per_group}
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = PretrainingModel(build_backbone(str(source), **r.backbone, **quantizer), r.objective)
            model.add_head(task)
    elif (Path(source) / "pretraining.json").is_file():
        model = load_pretraining(source, **r.backbone)
        model.config = r.objective
    else:
        hf = load_pretraining_model(source, trust_pickle=trust_pickle, **r.backbone)
        model = PretrainingModel.from_pretraining(hf, task, r.objective)
    if task not in model.heads:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.add_head(task)
    model.source = source_of(given, seed)
    return model


def default_trainable(model: PretrainingModel, task: str) -> dict[str, nn.Parameter]:
    """Plain pre-training: every backbone parameter (the CNN only if ``feature_grad_mult`` > 0) and the
    task's head; other tasks' heads, adapter sets and layer-norm copies stay as they are."""
    own = base_state(model.backbone).keys()
    params = {f"backbone.{k}": p for k, p in model.backbone.named_parameters() if k in own}
    if model.config.feature_grad_mult == 0:
        params = {k: p for k, p in params.items() if not k.startswith("backbone.feature_extractor.")}
    return params | {f"heads.{task}.{k}": p for k, p in model.heads[task].named_parameters()}


class PretrainingObjective:
    """The training loop's objective for a PretrainingModel, and its per-update callback.

    Per micro-batch it returns the loss summed over the masked steps, their number (the loop divides by
    the update's total, fairseq's sample_size) and sums of: ``contrastive``, ``diversity`` ((GV - ppl)/GV),
    ``feature_penalty`` (unweighted), ``prob_perplexity`` and ``code_perplexity`` (per codebook group,
    at most V; fairseq's logs sum the G groups), ``accuracy`` (true target ranked first) and
    ``temperature``; the log's ``items`` is the number of masked steps.

    It warns once (and again after a recovery) when the codebook stays underused after ``collapse_after``
    updates: code perplexity, averaged over the last ``collapse_window`` micro-batches, below
    ``collapse_threshold`` of the codes a micro-batch can show (V, or its masked steps if fewer).
    """

    def __init__(self, model: PretrainingModel, collapse_after: int = 0, collapse_threshold: float = 0.5,
                 collapse_window: int = 50, regularizer: Callable[[], torch.Tensor] | None = None):
        self.model = model
        self.regularizer = regularizer
        self.collapse_after = collapse_after
        self.collapse_threshold = collapse_threshold
        self.recent: deque[tuple[float, int]] = deque(maxlen=collapse_window)
        self.update = 0
        self.collapsed = False

    def on_update(self, model: PretrainingModel, update: int) -> None:
        model.set_num_updates(update)
        self.update = update

    def __call__(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        if "features" in batch:  # cached CNN output (CachedFeatureDataset)
            out = net(cnn_features=batch["features"], frame_mask=batch["frame_mask"])
        else:
            out = net(batch["waveforms"], attention_mask=batch["attention_mask"])
        n = len(out.logits)
        groups = self.model.heads[self.model.active].quantizer.num_groups
        extra = _sums(out, n, groups) | {"temperature": self.model.heads[self.model.active].quantizer.temperature * n}
        loss = out.loss
        if net.training:
            self.check_codebook(extra["code_perplexity"] / max(n, 1), n)
            if self.regularizer is not None:
                # Once per update: weighted by this micro-batch's share n of the steps the loop divides by.
                penalty = self.regularizer()
                loss = loss + penalty * n
                extra["regularizer"] = penalty.item() * n
        return loss, n, extra

    def check_codebook(self, perplexity_per_group: float, steps: int) -> None:
        """Record a micro-batch's code perplexity (over its ``steps`` masked steps) after warm-up; warn when
        the codebook is (newly) underused."""
        if self.update < self.collapse_after:
            return
        entries = self.model.heads[self.model.active].quantizer.num_vars
        self.recent.append((perplexity_per_group, min(entries, steps)))
        # A micro-batch of N steps cannot show more than N codes: a uniform codebook reads ~0.6 min(V, N).
        mean = sum(p for p, _ in self.recent) / len(self.recent)
        reachable = sum(r for _, r in self.recent) / len(self.recent)
        collapsed = len(self.recent) == self.recent.maxlen and mean < self.collapse_threshold * reachable
        if collapsed and not self.collapsed:
            log.warning("codebook collapse at update %d: code perplexity %.1f per group of %d entries over the last "
                        "%d batches (< %g%% of the %.0f a batch can show). With few distinct targets the contrastive "
                        "task gets easier (accuracy rises) while the targets say less about the speech. Try fewer "
                        "code vectors per group or a larger diversity weight (it slows learning); a faster-annealed "
                        "Gumbel temperature collapses it further",
                        self.update, mean, entries, len(self.recent), 100 * self.collapse_threshold, reachable)
        self.collapsed = collapsed


def _sums(out, n: int, groups: int) -> dict[str, float]:
    return {"contrastive": out.contrastive.item(), "diversity": out.diversity.item(),
            "feature_penalty": out.feature_penalty.item(),
            "prob_perplexity": out.prob_perplexity.item() / groups * n,
            "code_perplexity": out.code_perplexity.item() / groups * n,
            "accuracy": correct_predictions(out.logits).item()}


@torch.no_grad()
def evaluate_pretraining(model: PretrainingModel, utterances: Sequence[Utterance], crop_seconds: float | None = None,
                         max_seconds_per_batch: float = 60.0, seed: int = 0) -> dict[str, float]:
    """The active task's loss terms per masked step on ``utterances`` in eval mode, with masks and
    distractors drawn from ``seed`` (the same every call, so values are comparable across a run)."""
    was_training = model.training
    model.eval()
    device = model.backbone.masked_spec_embed.device
    dataset = AudioDataset(utterances, crop_seconds=crop_seconds, normalize=model.normalize_waveforms, seed=seed)
    loader = make_dataloader(dataset, max_seconds_per_batch, shuffle=False)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    groups = model.heads[model.active].quantizer.num_groups
    totals, count = {}, 0
    for batch in loader:
        if batch is None:
            continue
        out = model(batch["waveforms"].to(device), batch["attention_mask"].to(device), rng=rng,
                    generator=generator)
        n = len(out.logits)
        for k, v in (_sums(out, n, groups) | {"loss": out.loss.item()}).items():
            totals[k] = totals.get(k, 0.0) + v
        count += n
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in totals.items()}


def maskable(model: PretrainingModel, utterances: Sequence[Utterance],
             crop_seconds: float | None) -> tuple[list[Utterance], int]:
    """Keep utterances whose (cropped) length gives more than mask_length * min_masks frames; return
    ``(kept, num_skipped)``. Shorter ones cannot hold the minimum masked spans."""
    crop = math.inf if crop_seconds is None else crop_seconds * SAMPLE_RATE
    samples = torch.tensor([int(min(u.num_samples, crop)) for u in utterances], dtype=torch.long)
    frames = model.backbone._get_feat_extract_output_lengths(samples).tolist() if utterances else []
    need = model.config.mask_length * model.config.min_masks + 1
    kept = [u for u, f in zip(utterances, frames, strict=True) if f >= need]
    return kept, len(utterances) - len(kept)


def shortest_maskable(model: PretrainingModel) -> float:
    """Seconds of the shortest utterance that holds the minimum masked spans (what :func:`maskable` keeps)."""
    samples = torch.arange(0, 60 * SAMPLE_RATE, SAMPLE_RATE // 100)
    frames = model.backbone._get_feat_extract_output_lengths(samples)
    need = model.config.mask_length * model.config.min_masks + 1
    return float(samples[frames >= need][0]) / SAMPLE_RATE


def pretrain(model: PretrainingModel, task: str, utterances: Sequence[Utterance] | Shards, config: TrainConfig,
             out_dir: str | Path, trainable: dict[str, nn.Parameter] | None = None,
             crop_seconds: float | None = 250_000 / SAMPLE_RATE, min_seconds: float = 0.0,
             valid: Sequence[Utterance] | None = None, resume: bool = False,
             collapse_threshold: float = 0.5,
             regularizer: Callable[[], torch.Tensor] | None = None, keep_snapshots: bool = False,
             feature_cache: str | Path | None = None, feature_cache_dtype: torch.dtype = torch.float16,
             overwrite: bool = False, data_source: dict | None = None) -> list[dict]:
    """Pre-train ``model``'s ``task`` on unlabeled ``utterances``; returns the training log rows.

    ``trainable`` (by ``model.named_parameters()`` name) is what trains, default :func:`default_trainable`;
    everything else is frozen; ``regularizer()`` is added to the loss of every update (continual
    multihead-l2). ``keep_snapshots`` writes the full state at every checkpoint to
    ``snapshots/update_NNNNNNN/`` (the learning curves of ``evaluate-continual``). Utterances are cropped
    to a random ``crop_seconds`` window per epoch; shorter than ``min_seconds`` or too short to mask are
    skipped (counted in ``run.json``). ``valid`` is evaluated every ``config.validate_every`` updates. At
    the end rank 0 writes ``model/`` (the task as a transformers directory), ``pretraining.safetensors`` +
    ``.json`` (every head and adapter set) and an adapter file per trained adapter set; ``resume``
    continues ``out_dir``'s last checkpoint, and a folder that holds a run is otherwise refused unless
    ``overwrite``. run.json records the backbone (``model.source``), ``data_source``, the command and version.

    ``feature_cache`` (a directory) trains on cached CNN output (:mod:`wavadapt.training.feature_cache`, in
    ``feature_cache_dtype``) instead of decoding audio and running the CNN: built there by rank 0 (or
    reused when made by this CNN for these utterances), crops taken in frame space. Only for a frozen CNN
    (``feature_grad_mult`` 0 or no CNN parameter in ``trainable``); validation still runs on audio.
    """
    out_dir = Path(out_dir)
    if Distributed.from_env().main:
        claim(out_dir, resume=resume, overwrite=overwrite)
    if crop_seconds is not None and crop_seconds > config.max_seconds_per_batch:
        raise WavadaptError(f"crop_seconds {crop_seconds} exceeds max_seconds_per_batch {config.max_seconds_per_batch}")
    model.activate(task)
    params = trainable if trainable is not None else default_trainable(model, task)
    model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    max_seconds = config.max_seconds_per_batch if crop_seconds is None else math.inf
    env = Distributed.from_env()
    cache_info, streamed = None, isinstance(utterances, Shards)
    if streamed:  # lengths are read as the shards stream: what is too short to mask is skipped then
        if feature_cache is not None or config.language_temperature != 1:
            raise WavadaptError("a feature cache and the language temperature need an indexed corpus: stream "
                                "without them, or index the shards (give their folder without --stream)")
        kept, unreadable, outside, too_short = [], [], [], 0
        dataset = ShardStream(utterances.paths, config.max_seconds_per_batch, language=utterances.language,
                              crop_seconds=crop_seconds, normalize=model.normalize_waveforms,
                              min_seconds=max(min_seconds, shortest_maskable(model)), max_seconds=max_seconds,
                              buffer_size=utterances.buffer_size, seed=config.seed, rank=env.rank,
                              world_size=env.world_size)
    else:
        kept, unreadable, outside = filter_by_length(utterances, min_seconds, max_seconds)
        kept, too_short = maskable(model, kept, crop_seconds)
        if not kept:
            raise WavadaptError(f"no usable utterances: {len(unreadable)} unreadable, {len(outside)} outside the "
                                f"length limits, {too_short} too short to mask")
        if feature_cache is None:
            dataset = AudioDataset(kept, crop_seconds=crop_seconds, normalize=model.normalize_waveforms,
                                   seed=config.seed)
        else:
            dataset, cache_info = _cached_dataset(model, kept, Path(feature_cache), feature_cache_dtype,
                                                  crop_seconds, config.seed, env)
    language = {u.id: u.language for u in kept}
    ids = dataset.ids if feature_cache is not None else [u.id for u in kept]  # the cache leaves unreadable ones out
    if valid:
        valid = maskable(model, filter_by_length(valid, min_seconds, max_seconds)[0], crop_seconds)[0]
    warmup = config.warmup_updates if config.warmup_updates is not None else int(0.08 * config.max_updates)
    objective = PretrainingObjective(model, collapse_after=warmup, collapse_threshold=collapse_threshold,
                                     regularizer=regularizer)

    def validate(m: PretrainingModel) -> dict[str, float]:
        return evaluate_pretraining(m, valid, crop_seconds, config.max_seconds_per_batch, config.seed)

    def snapshot(m: PretrainingModel, update: int) -> None:
        save_pretraining(m, out_dir / "snapshots" / f"update_{update:07d}")

    trainer = Trainer(model, params, objective, dataset, config, out_dir, validate=validate if valid else None,
                      on_update=objective.on_update, on_checkpoint=snapshot if keep_snapshots else None,
                      find_unused_parameters=model.backbone.config.layerdrop > 0, dist_env=env,
                      languages=None if streamed else [language[i] for i in ids])
    trainer.start({
        "task": task, "adapters": list(model.stacks[task]), "backbone": model.source, "data": data_source,
        "languages": [utterances.language] if streamed else sorted({u.language for u in kept}),
        "train": asdict(config), "objective": asdict(model.config), "streamed": streamed,
        "crop_seconds": crop_seconds, "min_seconds": min_seconds, "train_utterances": len(kept),
        "dropped_by_length": len(outside), "unreadable": unreadable, "too_short_to_mask": too_short,
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "world_size": int(os.environ.get("WORLD_SIZE", 1)), "feature_cache": cache_info}, resume)
    history = trainer.train()
    if trainer.env.main:
        save_run(model, task, params, out_dir)
    return history


def _cached_dataset(model: PretrainingModel, utterances: Sequence[Utterance], cache_dir: Path, dtype: torch.dtype,
                    crop_seconds: float | None, seed: int, env: Distributed) -> tuple[CachedFeatureDataset, dict]:
    """:func:`feature_cache.cached_dataset` of the crops, for a model whose CNN does not train."""
    if not model.cnn_frozen:
        raise WavadaptError("a feature cache needs a frozen CNN (feature_grad_mult 0 or the CNN not trained), but "
                            "this run trains the CNN (e.g. warm-start): run without the feature cache")
    return cached_dataset(model, utterances, cache_dir, dtype, env, crop_seconds=crop_seconds, seed=seed)


def save_run(model: PretrainingModel, task: str, trained: dict[str, nn.Parameter], out_dir: Path) -> None:
    """``model/`` (HF directory of ``task``), the full state, and a task file per trained adapter set."""
    from wavadapt.model.backbone import quiet_transformers
    from wavadapt.model.checkpoint import save_adapter

    model.eval()
    with quiet_transformers():
        model.to_hf(task).save_pretrained(out_dir / "model", safe_serialization=True)
    save_pretraining(model, out_dir)
    trained_ids = {id(p) for p in trained.values()}
    for name in adapter_names(model.backbone):
        if any(id(p) in trained_ids for p in adapter_parameters(model.backbone, name).values()):
            save_adapter(model.backbone, name, out_dir)

