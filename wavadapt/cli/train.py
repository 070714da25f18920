"""The command that fine-tunes: finetune (CTC ASR, or a language identifier); the helpers of every training command."""

import os
from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    AdapterForm,
    Amp,
    CheckpointEvery,
    CorpusArgument,
    FeatureCache,
    LanguageTemperature,
    NumWorkers,
    Overwrite,
    Progress,
    RawFormatOption,
    Resume,
    Seed,
    Stream,
    TrustPickle,
    ValidateEvery,
    stream_shards,
)
from wavadapt.cli.program import app
from wavadapt.errors import WavadaptError


@app.command()
def finetune(
    data: CorpusArgument,
    language: Annotated[str, typer.Option(help="Language of the data (text normalisation, corpus folder); with "
                                          "--objective lid the languages to identify, comma-separated.")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, logs, task file, backbone if changed.")],
    model: Annotated[str, typer.Option(help="The model to start from: a shipped one (tiny-nl-real), a pretrain or "
                                       "fine-tuning run's folder, a Hugging Face checkpoint directory, a fairseq .pt, "
                                       "or a preset (tiny, base, large: random weights, for tests).")],
    method: Annotated[str, typer.Option(help="full | top-n-full | adapters | top-n-adapters | head-only")] = "adapters",
    top_n: Annotated[int | None, typer.Option(help="N of the top-n methods.")] = None,
    adapter_size: Annotated[int | None, typer.Option(help="Adapter bottleneck size (default: the papers' 256; 64 on "
                                                     "tiny models).")] = None,
    adapter_form: AdapterForm = "houlsby",
    task: Annotated[str | None, typer.Option(help="Task name (default: the language; e.g. es/asr).")] = None,
    adapter: Annotated[list[Path] | None, typer.Option(help="Adapter files to load first.")] = None,
    stack_on: Annotated[str | None, typer.Option(help="Stack the new task adapter on this loaded adapter set.")] = None,
    split: Annotated[str, typer.Option(help="Training split.")] = "train",
    valid_split: Annotated[str | None, typer.Option(help="Validation split (WER/CER); '' for none.")] = "dev",
    max_updates: Annotated[int, typer.Option(help="Updates to train.")] = 20000,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: full and top-n-full 5e-5, the adapter "
                                             "methods 1e-3; on tiny models such as the shipped ones 1e-3 and "
                                             "1e-2).")] = None,
    update_freq: Annotated[int, typer.Option(help="Micro-batches per update (gradient accumulation).")] = 1,
    max_seconds_per_batch: Annotated[float, typer.Option(help="Audio seconds per micro-batch per process.")] = 200.0,
    freeze_updates: Annotated[int, typer.Option(help="full: updates that train only the head first.")] = 0,
    clip_norm: Annotated[float, typer.Option(help="Gradient-norm clipping (0: none).")] = 0.0,
    mask_time_prob: Annotated[float | None, typer.Option(help="SpecAugment time-mask probability (default: "
                                                         "fairseq's 0.65; 0.1 on tiny models).")] = None,
    mask_feature_prob: Annotated[float | None, typer.Option(help="SpecAugment channel-mask probability (default: "
                                                            "0.5; 0 on tiny models).")] = None,
    layerdrop: Annotated[float | None, typer.Option(help="Probability of skipping a transformer layer (default: "
                                                    "0.05; 0 on tiny models).")] = None,
    language_temperature: LanguageTemperature = None,
    stream: Stream = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Under torchrun: shard the parameters, gradients and optimizer "
                                       "state over the processes (FSDP, one unit per encoder layer) instead of a "
                                       "whole copy in each, for full fine-tuning of models that do not fit one "
                                       "device.")] = False,
    amp: Amp = "auto",
    validate_every: ValidateEvery = 0,
    checkpoint_every: CheckpointEvery = 0,
    num_workers: NumWorkers = 0,
    seed: Seed = 0,
    feature_cache: FeatureCache = False,
    feature_cache_dir: Annotated[Path | None, typer.Option(help="Root of --feature-cache's caches (implies "
                                                           "--feature-cache; default OUT/feature_cache): one per CNN "
                                                           "and utterance set, shared by the runs given one root.")
                                 ] = None,
    keep_foreign_letters: Annotated[bool, typer.Option("--keep-foreign-letters", help="Train on transcripts with "
                                                       "letters outside the language's alphabet too, without those "
                                                       "letters (default: skipped and counted).")] = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
    objective: Annotated[str, typer.Option(help="ctc (speech recognition) or lid (spoken language identification "
                                           "on the frozen backbone: writes adapter.lid.*, for --task auto).")] = "ctc",
    lid_layer: Annotated[int | None, typer.Option(help="--objective lid: the encoder layer whose frames it pools "
                                                  "(default: the middle one).")] = None,
) -> None:
    """Fine-tune ASR, or a language identifier.

    The papers' methods: full, top-n-full, adapters, top-n-adapters, head-only. Launch with torchrun for several
    processes or GPUs.
    """
    from dataclasses import replace

    from wavadapt.data.corpora import open_corpus
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.training.finetune import AugmentConfig
    from wavadapt.training.finetune import finetune as run
    from wavadapt.training.loop import TrainConfig
    from wavadapt.training.methods import MethodConfig, default_adapter_size, default_lr
    from wavadapt.training.run_folder import claim, data_source

    if objective not in ("ctc", "lid"):
        raise WavadaptError(f"--objective {objective!r}: choose ctc or lid")
    if language_temperature is not None and objective != "lid":
        raise WavadaptError("--language-temperature weighs the languages of --objective lid (a CTC task has one)")
    shards = stream_shards(data, split, language) if stream else None  # before a model loads
    if fsdp and int(os.environ.get("WORLD_SIZE", 1)) < 2:
        raise WavadaptError("--fsdp shards the model over torchrun's processes: launch with torchrun "
                            "--nproc_per_node N (one process holds the whole model anyway)")
    if stream and objective == "lid":
        raise WavadaptError("--stream trains CTC tasks; the language identifier reads an indexed corpus")
    claim(out, resume=resume, overwrite=overwrite)  # before a model loads for minutes
    asr = load_asr_model(model, adapter or [], trust_pickle=trust_pickle)
    hidden = asr.backbone.config.hidden_size  # tiny models take other defaults than Base (methods.SMALL_MODEL)
    if objective == "lid":
        return _train_language_id(asr, data, language, out, split, valid_split, lid_layer, raw_format,
                                  TrainConfig(max_updates=max_updates, lr=lr or 1e-3, update_freq=update_freq,
                                              max_seconds_per_batch=max_seconds_per_batch, amp=amp,
                                              validate_every=validate_every, checkpoint_every=checkpoint_every,
                                              num_workers=num_workers, seed=seed, progress=progress,
                                              language_temperature=1.0 if language_temperature is None
                                              else language_temperature),
                                  resume, overwrite)
    method_config = MethodConfig(method, top_n, adapter_size or default_adapter_size(hidden), freeze_updates, stack_on,
                                 adapter_form)
    lr = lr or default_lr(method, hidden)
    config = TrainConfig(max_updates=max_updates, lr=lr, update_freq=update_freq, clip_norm=clip_norm,
                         max_seconds_per_batch=max_seconds_per_batch, amp=amp, validate_every=validate_every,
                         checkpoint_every=checkpoint_every, num_workers=num_workers, seed=seed, progress=progress,
                         fsdp=fsdp)
    given = {"mask_time_prob": mask_time_prob, "mask_feature_prob": mask_feature_prob, "layerdrop": layerdrop}
    augment = replace(AugmentConfig.for_size(hidden), **{k: v for k, v in given.items() if v is not None})
    valid = open_corpus(data, valid_split, language, raw_format) if valid_split else None
    train = shards or open_corpus(data, split, language, raw_format)
    history = run(asr, task or language, train, method_config, config, out,
                  valid=valid, augment=augment, resume=resume,
                  feature_cache=cache_dir(out, feature_cache, feature_cache_dir), keep_foreign=keep_foreign_letters,
                  overwrite=overwrite, data_source=data_source(data, split, language))
    echo_last(history, "utterance")  # the CTC loss sums over each utterance's frames


def _train_language_id(asr, data: Path, language: str, out: Path, split: str, valid_split: str | None,
                       layer: int | None, raw_format: str | None, config, resume: bool, overwrite: bool) -> None:
    from wavadapt.data.corpora import language_list, open_corpora
    from wavadapt.training.language_id import train_language_id
    from wavadapt.training.run_folder import data_source

    languages = language_list(language)
    valid = open_corpora(data, valid_split, languages, raw_format) if valid_split else None
    echo_last(train_language_id(asr, languages, open_corpora(data, split, languages, raw_format), config, out, layer,
                                 valid=valid, resume=resume, overwrite=overwrite,
                                 data_source=data_source(data, split, language)), "utterance")


def cache_dir(out: Path, enabled: bool, directory: Path | None) -> Path | None:
    """The feature cache directory of --feature-cache / --feature-cache-dir, or None."""
    if directory is not None:
        return directory
    return out / "feature_cache" if enabled else None


def echo_last(history: list[dict], loss_per: str) -> None:
    """The last logged row of a run's training log, as people read it: the loss and what it is averaged over, the
    validation scores in percent."""
    from wavadapt.training.loop import shown

    if not history:
        return
    last = history[-1]
    parts = [f"update {int(last['update'])}"] + ([f"loss {last['loss']:.4g} per {loss_per}"] if "loss" in last else [])
    parts += [f"validation {k[6:]} {shown(k, v)}" for k, v in last.items() if k.startswith("valid_")]
    typer.echo(", ".join(parts))
