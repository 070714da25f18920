"""Commands that pre-train: pretrain (wav2vec 2.0), continual (a new language)."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    Amp,
    CheckpointEvery,
    CorpusArgument,
    FeatureCache,
    FeatureCacheDir,
    KeepSnapshots,
    LanguageTemperature,
    NumWorkers,
    Overwrite,
    Progress,
    RawFormatOption,
    Resume,
    Seed,
    SslValidSplit,
    Stream,
    TrustPickle,
    ValidateEvery,
    WarmupUpdates,
    stream_shards,
)
from wavadapt.cli.program import app
from wavadapt.cli.train import cache_dir, echo_last


@app.command()
def pretrain(
    data: CorpusArgument,
    language: Annotated[str, typer.Option(help="Language(s) of the data, comma-separated for joint multilingual "
                                          "pre-training on mixed-language batches (the default task name).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, logs, model/ (HF), pretraining.safetensors.")],
    model: Annotated[str, typer.Option(help="tiny | base | large (fresh weights), HF pre-training dir, fairseq .pt, "
                                       "or a pretrain run's folder to continue from.")],
    preset: Annotated[str | None, typer.Option(help="Recipe tiny | base | large (default: --model's preset, "
                                               "else base); the options below override it.")] = None,
    task: Annotated[str | None, typer.Option(help="Head to train (default: the language).")] = None,
    split: Annotated[str, typer.Option(help="Training split.")] = "pretrain",
    valid_split: SslValidSplit = None,
    max_updates: Annotated[int | None, typer.Option(help="Updates to train.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    warmup_updates: WarmupUpdates = None,
    update_freq: Annotated[int | None, typer.Option(help="Micro-batches per update (default: the recipe's GPUs / "
                                                    "processes, e.g. 64 for Base on one GPU).")] = None,
    max_seconds_per_batch: Annotated[float | None, typer.Option(help="Audio seconds per micro-batch per process.")] = (
        None
    ),
    crop_seconds: Annotated[float | None, typer.Option(help="Random crop of longer utterances (Base: 15.6 s).")] = None,
    min_seconds: Annotated[float | None, typer.Option(help="Skip shorter utterances (Base: 2 s).")] = None,
    feature_grad_mult: Annotated[float | None, typer.Option(help="CNN gradient scale (0 freezes the CNN).")] = None,
    diversity_weight: Annotated[float | None, typer.Option(help="Weight of the codebook diversity loss (alpha; "
                                                           "Base: 0.1).")] = None,
    feature_penalty_weight: Annotated[float | None, typer.Option(help="Weight of the CNN feature L2 penalty "
                                                                 "(Base: 10; tiny: 0).")] = None,
    codevectors_per_group: Annotated[int | None, typer.Option(help="Entries per quantizer codebook of a fresh "
                                                              "--model preset (V; Base: 320, tiny: 64).")] = None,
    language_temperature: LanguageTemperature = None,
    stream: Stream = False,
    amp: Amp = "auto",
    validate_every: ValidateEvery = 0,
    checkpoint_every: CheckpointEvery = 0,
    num_workers: NumWorkers = 0,
    seed: Seed = 0,
    keep_snapshots: KeepSnapshots = False,
    feature_cache: FeatureCache = False,
    feature_cache_dir: FeatureCacheDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
) -> None:
    """Pre-train wav2vec 2.0 self-supervised.

    The contrastive and diversity losses of wav2vec 2.0, as fairseq trains them. Launch with torchrun for several
    processes or GPUs.
    """
    from dataclasses import replace

    from wavadapt.data.corpora import language_list, open_corpora
    from wavadapt.training.pretrain import build_model
    from wavadapt.training.pretrain import pretrain as run
    from wavadapt.training.run_folder import claim, data_source

    languages = language_list(language)
    shards = stream_shards(data, split, languages[0] if len(languages) == 1 else None) if stream else None
    claim(out, resume=resume, overwrite=overwrite)
    name, r = _pretrain_recipe(preset, model, max_updates=max_updates, lr=lr, warmup_updates=warmup_updates,
                               max_seconds_per_batch=max_seconds_per_batch, update_freq=update_freq, amp=amp,
                               validate_every=validate_every, checkpoint_every=checkpoint_every,
                               num_workers=num_workers, seed=seed, progress=progress,
                               language_temperature=language_temperature)
    task = task or "+".join(languages)
    pt = build_model(model, task, name, trust_pickle=trust_pickle, seed=seed,
                     codevectors_per_group=codevectors_per_group)
    objective = {"feature_grad_mult": feature_grad_mult, "diversity_weight": diversity_weight,
                 "feature_penalty_weight": feature_penalty_weight}
    pt.config = replace(pt.config, **{k: v for k, v in objective.items() if v is not None})
    valid = open_corpora(data, valid_split, languages, raw_format) if valid_split else None
    history = run(pt, task, shards or open_corpora(data, split, languages, raw_format), r.train,
                  out,
                  crop_seconds=r.crop_seconds if crop_seconds is None else crop_seconds,
                  min_seconds=r.min_seconds if min_seconds is None else min_seconds, valid=valid, resume=resume,
                  keep_snapshots=keep_snapshots, feature_cache=cache_dir(out, feature_cache, feature_cache_dir),
                  overwrite=overwrite, data_source=data_source(data, split, language))
    echo_last(history, "masked frame")


@app.command()
def continual(
    data: CorpusArgument,
    language: Annotated[str, typer.Option(help="Language of the data (corpus folder; the default task name).")],
    out: Annotated[Path, typer.Option(help="Run directory (as for pretrain).")],
    model: Annotated[str, typer.Option(help="The model so far: a pretrain/continual run directory, an HF "
                                       "pre-training dir or a fairseq .pt.")],
    method: Annotated[str, typer.Option(help="warm-start | multihead | multihead-l2 | cwav2vec")] = "cwav2vec",
    task: Annotated[str | None, typer.Option(help="The new task (default: the language).")] = None,
    from_task: Annotated[str, typer.Option(help="Name of the task an HF / fairseq model has learnt.")] = "en",
    l2_weight: Annotated[float, typer.Option(help="eta of multihead-l2.")] = 1.0,
    adapter_size: Annotated[int, typer.Option(help="cwav2vec language adapter size.")] = 256,
    preset: Annotated[str | None, typer.Option(help="Recipe tiny | base | large (default: base).")] = None,
    split: Annotated[str, typer.Option(help="Training split.")] = "pretrain",
    valid_split: SslValidSplit = None,
    max_updates: Annotated[int | None, typer.Option(help="Updates to train.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (the method's own).")] = None,
    warmup_updates: WarmupUpdates = None,
    update_freq: Annotated[int | None, typer.Option(help="Micro-batches per update.")] = None,
    max_seconds_per_batch: Annotated[float | None, typer.Option(help="Audio seconds per micro-batch.")] = None,
    crop_seconds: Annotated[float | None, typer.Option(help="Random crop of longer utterances.")] = None,
    amp: Amp = "auto",
    validate_every: ValidateEvery = 0,
    checkpoint_every: CheckpointEvery = 0,
    num_workers: NumWorkers = 0,
    seed: Seed = 0,
    keep_snapshots: KeepSnapshots = False,
    feature_cache: FeatureCache = False,
    feature_cache_dir: FeatureCacheDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
) -> None:
    """Learn a new language on a pre-trained model.

    cwav2vec 2.0 (language adapters on a frozen model) or a baseline (warm-start, multihead, multihead-l2); earlier
    languages keep their heads.
    """
    import torch

    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.continual import ContinualConfig, prepare_continual
    from wavadapt.training.pretrain import build_model
    from wavadapt.training.pretrain import pretrain as run
    from wavadapt.training.run_folder import claim, data_source

    claim(out, resume=resume, overwrite=overwrite)
    name, r = _pretrain_recipe(preset, "base", max_updates=max_updates, lr=lr, warmup_updates=warmup_updates,
                               max_seconds_per_batch=max_seconds_per_batch, update_freq=update_freq, amp=amp,
                               validate_every=validate_every, checkpoint_every=checkpoint_every,
                               num_workers=num_workers, seed=seed, progress=progress)
    pt = build_model(model, from_task, name, trust_pickle=trust_pickle, seed=seed)
    task = task or language
    torch.manual_seed(seed)  # the new adapters and heads
    trainable, regularizer = prepare_continual(pt, task, ContinualConfig(method, l2_weight, adapter_size))
    r.train.extra = {"continual_method": method, "l2_weight": l2_weight, "adapter_size": adapter_size}
    valid = open_corpus(data, valid_split, language, raw_format) if valid_split else None
    history = run(pt, task, open_corpus(data, split, language, raw_format), r.train, out, trainable=trainable,
                  crop_seconds=r.crop_seconds if crop_seconds is None else crop_seconds, min_seconds=r.min_seconds,
                  valid=valid, resume=resume, regularizer=regularizer, keep_snapshots=keep_snapshots,
                  feature_cache=cache_dir(out, feature_cache, feature_cache_dir), overwrite=overwrite,
                  data_source=data_source(data, split, language))
    echo_last(history, "masked frame")


def _pretrain_recipe(preset: str | None, model: str, **options):
    """The name and the pre-training recipe ``preset`` (default: ``model`` if it names a preset, else base)
    with the options given on the command line."""
    from wavadapt.model.backbone import PRESETS
    from wavadapt.training.pretrain import recipe

    name = preset or (model if model in PRESETS else "base")
    return name, recipe(name, **{k: v for k, v in options.items() if v is not None})
