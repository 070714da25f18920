"""CTC fine-tuning: pick what trains (methods.py), read the data, and hand both to the training loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from wavadapt.data.batching import AudioDataset, filter_by_length, transcribed
from wavadapt.data.corpora import Utterance
from wavadapt.data.shard_stream import Shards, ShardStream
from wavadapt.data.text import Vocabulary
from wavadapt.errors import WavadaptError
from wavadapt.model.checkpoint import backbone_fingerprint, save_backbone, save_task
from wavadapt.model.ctc import CTCModel
from wavadapt.training.feature_cache import CachedFeatureDataset, cached_dataset, keyed_dir
from wavadapt.training.loop import Distributed, TrainConfig, Trainer
from wavadapt.training.methods import SMALL_MODEL, MethodConfig, prepare
from wavadapt.training.run_folder import claim


@dataclass
class AugmentConfig:
    """wav2vec 2.0 fine-tuning regularisation (fairseq base_10h defaults): SpecAugment-style time and
    channel masking of the CNN features, layer drop and dropout before the head."""

    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    mask_feature_prob: float = 0.5
    mask_feature_length: int = 64
    layerdrop: float = 0.05
    final_dropout: float = 0.0

    @classmethod
    def for_size(cls, hidden_size: int) -> AugmentConfig:
        """fairseq's base_10h masking for Base and larger; for the tiny models (``methods.SMALL_MODEL``) light time
        masking only, without which they do not learn in a demo's thousand updates."""
        if hidden_size <= SMALL_MODEL:
            return cls(mask_time_prob=0.1, mask_feature_prob=0.0, layerdrop=0.0)
        return cls()

    def apply(self, model: CTCModel) -> None:
        config = model.backbone.config
        config.mask_time_prob, config.mask_time_length = self.mask_time_prob, self.mask_time_length
        config.mask_feature_prob = self.mask_feature_prob
        config.mask_feature_length = min(self.mask_feature_length, config.hidden_size)
        config.apply_spec_augment = self.mask_time_prob > 0 or self.mask_feature_prob > 0
        config.layerdrop = self.layerdrop
        model.dropout.p = self.final_dropout


def ctc_objective(model: CTCModel):
    """The CTC objective of the training loop: loss summed over the batch's utterances (fp32)."""

    def objective(net: nn.Module, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        if "features" in batch:  # cached CNN output
            output = net(cnn_features=batch["features"], frame_mask=batch["frame_mask"])
        else:
            output = net(batch["waveforms"], attention_mask=batch["attention_mask"])
        loss = model.ctc_loss(output, batch["labels"], batch["label_lengths"])
        return loss, len(batch["ids"]), {}

    return objective


def finetune(model: CTCModel, task: str, train: list[Utterance] | Shards, method: MethodConfig, config: TrainConfig,
             out_dir: Path, vocab: Vocabulary | None = None, valid: list[Utterance] | None = None,
             augment: AugmentConfig | None = None, resume: bool = False,
             min_seconds: float = 0.5, max_seconds: float = 30.0,
             feature_cache: str | Path | None = None, feature_cache_dtype: torch.dtype = torch.float32,
             keep_foreign: bool = False, overwrite: bool = False, data_source: dict | None = None) -> list[dict]:
    """Fine-tune ``model`` for ``task`` on ``train`` with ``method``; returns the training log rows.

    Utterances without a transcript, with letters outside the language's alphabet (unless ``keep_foreign``: then
    without those letters), unreadable or outside the length limits (``max_seconds``, and no longer than a batch
    holds) are skipped, named in warnings and listed in run.json, with the characters normalisation dropped. The
    vocabulary is built from the training transcripts unless given or the task exists already (a fine-tuned
    checkpoint's own, continued: see ``methods.prepare``). ``valid`` is decoded greedily every
    ``config.validate_every`` updates (WER, CER). ``resume`` continues ``out_dir``'s last checkpoint; a folder
    that holds a run is otherwise refused unless ``overwrite`` (:func:`run_folder.claim`). run.json records how
    the run was made: the backbone (``model.source`` and its fingerprint), ``data_source`` (where ``train``
    came from), the languages, the command line and wavadapt's version.

    ``train`` given as :class:`~wavadapt.data.shard_stream.Shards` streams them (``finetune --stream``): their
    transcripts are listed first (and build the vocabulary), then each epoch reads every record once, across
    data-loader workers and ranks; files out of the length limits are skipped as they come.

    ``feature_cache`` (a root directory) trains on the CNN's cached output (no method trains the CNN), in
    ``feature_cache_dtype``: computed once per utterance in the root's subdirectory for this CNN and these
    utterances (``feature_cache.keyed_dir``), which other runs reuse. In fp32 it trains as without, up to float
    rounding, without the CNN's forward pass and the audio decoding: in the demo (``tiny``, one CPU thread) an
    adapter update took 0.06 s instead of 0.13.
    """
    from wavadapt.evaluation.corpus import evaluate

    out_dir = Path(out_dir)
    env = Distributed.from_env()
    if env.main:
        claim(out_dir, resume=resume, overwrite=overwrite)
    streamed = isinstance(train, Shards)
    if streamed and feature_cache is not None:
        raise WavadaptError("a feature cache is built over an indexed corpus: stream without it, or index the shards "
                            "(give their folder without --stream)")
    listed = train.listing() if streamed else train
    labeled, no_transcript, foreign, dropped = transcribed(listed, keep_foreign=keep_foreign)
    if not labeled:
        raise WavadaptError(f"none of the {len(listed)} training utterances has a transcript")
    if vocab is None:  # a continued task keeps its own; a new one gets the training transcripts' characters
        vocab = model.vocabularies.get(task) or Vocabulary.build([u.text for u in labeled], labeled[0].language)
    torch.manual_seed(config.seed)  # the same new weights on every rank
    params = prepare(model, task, vocab, method)
    augment = augment or AugmentConfig()
    augment.apply(model)
    if streamed:  # lengths are read as the shards stream; a file out of the limits is skipped then
        kept, unreadable, outside, cache_info = labeled, [], [], None
        dataset = ShardStream(train.paths, config.max_seconds_per_batch, vocab, train.language or labeled[0].language,
                              normalize=model.normalize_waveforms, min_seconds=min_seconds, max_seconds=max_seconds,
                              buffer_size=train.buffer_size, seed=config.seed, rank=env.rank,
                              world_size=env.world_size, ids={u.id for u in labeled})
    else:
        # An utterance longer than a batch holds could never be batched: it is outside the limits too.
        kept, unreadable, outside = filter_by_length(labeled, min_seconds,
                                                     min(max_seconds, config.max_seconds_per_batch))
        if not kept:
            raise WavadaptError(f"no usable training utterance: {len(unreadable)} unreadable, {len(outside)} outside "
                                f"{min_seconds}-{max_seconds} s, {len(no_transcript)} without a transcript")
        dataset, cache_info = AudioDataset(kept, vocab, normalize=model.normalize_waveforms, seed=config.seed), None
    if feature_cache is not None:
        dataset, cache_info = _cached(model, dataset, Path(feature_cache), feature_cache_dtype, config.seed)

    def validate(m: CTCModel) -> dict[str, float]:
        result = evaluate(m, valid, task=task, max_seconds_per_batch=config.max_seconds_per_batch)
        return {"wer": result.wer, "cer": result.cer}

    def freeze_phase(m: CTCModel, update: int) -> None:
        m.freeze_backbone = update < method.freeze_updates

    fingerprint = backbone_fingerprint(model.backbone)  # before the trainer may shard it
    trainer = Trainer(model, params, ctc_objective(model), dataset, config, out_dir,
                      validate=validate if valid else None,
                      on_update=freeze_phase if method.method == "full" and method.freeze_updates else None,
                      # What may not take part in an update: frozen phases, dropped layers, the mask embedding unmasked
                      find_unused_parameters=bool(method.freeze_updates) or model.backbone.config.layerdrop > 0
                      or ("backbone.masked_spec_embed" in params and model.backbone.config.mask_time_prob == 0),
                      fsdp_units=list(model.backbone.encoder.layers))
    trainer.start({
        "task": task, "method": asdict(method), "train": asdict(config), "augment": asdict(augment),
        "backbone": {**(model.source or {}), "fingerprint": fingerprint},
        "data": data_source, "languages": sorted({u.language for u in kept}),
        "train_utterances": len(kept), "dropped_by_length": len(outside), "feature_cache": cache_info,
        "streamed": streamed,
        # Files dropped before training; those that fail to decode later are counted in log.csv.
        "skipped": {"unreadable": unreadable, "no_transcript": no_transcript, "foreign_letters": foreign,
                    "outside_length": outside},
        "dropped_characters": dropped}, resume)
    history = trainer.train()
    if trainer.env.main:
        model = trainer.trained_model
        model.eval()
        if method.method in ("full", "top-n-full"):
            save_backbone(model.backbone, out_dir / "backbone")
        save_task(model, task, out_dir)
    return history


def _cached(model: CTCModel, audio: AudioDataset, root: Path, dtype: torch.dtype, seed: int
            ) -> tuple[CachedFeatureDataset, dict]:
    """The cached counterpart of ``audio``: the same utterances, labels and lengths (so the same batches); files
    that fail to decode while the cache is built are left out and counted in run.json's ``feature_cache``."""
    utterances = audio.utterances
    return cached_dataset(model, utterances, keyed_dir(root, model, utterances), dtype, Distributed.from_env(),
                          seed=seed, labels={u.id: audio.labels(u) for u in utterances},
                          num_samples={u.id: u.num_samples for u in utterances})
