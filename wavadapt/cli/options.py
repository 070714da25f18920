"""The options several commands share, and the model and decoder they build."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.errors import WavadaptError

CORPUS_HELP = ("A corpus: a folder (written by `wavadapt prepare` or `wavadapt synth`, LibriSpeech or Common Voice), a "
               "manifest (.tsv or .jsonl with path and text columns, paths relative to the manifest; or fairseq's .tsv "
               "with its .ltr), Lhotse cuts (cuts.jsonl.gz, or a Shar folder), a Hugging Face dataset (a save_to_disk "
               "folder, Parquet files) or WebDataset shards (a folder of .tar files, a brace pattern or a URL).")
CorpusArgument = Annotated[str, typer.Argument(metavar="DATA", help=CORPUS_HELP)]
Jobs = Annotated[int, typer.Option(help="Independent runs (fine-tuning runs, continual runs, probes) at a time, each a "
                                   "process of one thread: on a CPU, one per core trains small models fastest.")]
Amp = Annotated[str, typer.Option(help="auto | bf16 | fp16 | none")]
ValidateEvery = Annotated[int, typer.Option(help="Validate every N updates (0: at the end).")]
CheckpointEvery = Annotated[int, typer.Option(help="Checkpoint every N updates (0: at the end).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars (only where stderr is a terminal: never in a "
                                         "log file).")]
Seed = Annotated[int, typer.Option(help="Seed of new weights, data order, masking and dropout: the same seed, the "
                                    "same run.")]
NumWorkers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out: its files are deleted "
                                         "(a feature cache is kept).")]
TrustPickle = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow reading a fairseq .pt: a pickle, which can run code.")
]
Family = Annotated[str | None, typer.Option(help="Family of a preset: wav2vec2 (default), hubert or wavlm.")]
KeepSnapshots = Annotated[bool, typer.Option("--keep-snapshots", help="Keep the full state of every checkpoint "
                                             "in snapshots/ (learning curves).")]
FeatureCache = Annotated[bool, typer.Option("--feature-cache", help="Train on the frozen CNN's output, computed once "
                                            "and cached in OUT/feature_cache (needs a frozen CNN; validation still "
                                            "reads audio).")]
FeatureCacheDir = Annotated[Path | None, typer.Option(help="Where --feature-cache keeps the cache (implies "
                                                      "--feature-cache; default OUT/feature_cache).")]
WarmupUpdates = Annotated[int | None, typer.Option(help="Warm-up updates (default: 8% of the updates).")]
SslValidSplit = Annotated[str | None, typer.Option(help="Validation split (loss, accuracy).")]
AdapterForm = Annotated[str, typer.Option(help="houlsby (the papers': two bottlenecks per layer) or mms (MMS's one "
                                           "adapter per pre-LN layer, exportable to transformers' MMS layout).")]
RawFormatOption = Annotated[str | None, typer.Option(help="How to read headerless PCM files (.raw, .pcm): "
                                                     "ENCODING:RATE[:CHANNELS], e.g. s16le:16000 (a manifest's "
                                                     "raw_format column overrides it per file).")]


ModelOption = Annotated[
    str,
    typer.Option(help="A preset (tiny, base, large: random weights, seed 0), a Hugging Face checkpoint directory "
                 "(e.g. a run's backbone/) or a fairseq .pt."),
]
AdapterOption = Annotated[
    list[Path] | None,
    typer.Option(help="A task file (adapter.<task>.json), or FILE:NAME to load it under another name (-- for /); "
                 "repeat to stack, the language adapter first."),
]
TaskOption = Annotated[str | None, typer.Option(help="Task to run (default: the last task file's); auto: each "
                                               "file's identified language's task (with a language identifier, "
                                               "adapter.lid.json); a+b: those tasks combined.")]
VocabOption = Annotated[Path | None, typer.Option(help="The dict.ltr.txt of a fine-tuned fairseq checkpoint, where "
                                                 "it is not beside the .pt.")]
# The decoder: greedy, or flashlight's beam search with a KenLM word LM and a lexicon (DecoderConfig).
DecoderKind = Annotated[str | None, typer.Option("--decoder", help="greedy, or beam (CTC beam search; the default "
                                                 "when --lm or --lexicon is given).")]
BeamSize = Annotated[int, typer.Option(help="Beam search: hypotheses kept per frame.")]
LmOption = Annotated[Path | None, typer.Option("--lm", help="Beam search with this KenLM word n-gram LM (.arpa, "
                                               "or a .bin with --lexicon; `wavadapt lm` builds one).")]
LmWeight = Annotated[float | None, typer.Option(help="Beam search: weight of the LM's log10 probabilities (default 1: "
                                                    "the best of benchmarks/beam_defaults.py's sweep on real Dutch).")]
WordScore = Annotated[float | None, typer.Option(help="Beam search: added per word, an insertion bonus (default 2: "
                                                      "the same sweep's best).")]
LexiconOption = Annotated[Path | None, typer.Option(help="Beam search emits only this lexicon's words (lines of "
                                                    "`word` or `word  s p e l l i n g`).")]


def decoder_config(kind: str | None, beam_size: int, lm: Path | None, lm_weight: float | None,
                    word_score: float | None, lexicon: Path | None):
    """The decoder the options choose; an LM that is no language model fails here, before a model loads."""
    from wavadapt.decoding import DecoderConfig
    from wavadapt.decoding.files import arpa_unigrams

    if lm is not None:
        arpa_unigrams(lm)
    kind = kind or ("beam" if lm or lexicon else "greedy")
    weights = {k: v for k, v in (("lm_weight", lm_weight), ("word_score", word_score)) if v is not None}
    return DecoderConfig(kind, beam_size=beam_size, lm=lm, lexicon=lexicon, **weights)


DeviceOption = Annotated[str, typer.Option("--device", help="Where the model runs: auto (the GPU when there is "
                                            "one), cpu, cuda or cuda:N.")]


def torch_device(name: str):
    """The device ``--device`` names, refused in one line where this machine has none such."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise WavadaptError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise WavadaptError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                            f"(torch {torch.__version__})")
    return device


def asr_model(model: str, adapters: list[Path] | None, task: str | None, family: str | None, trust_pickle: bool,
              vocab: Path | None = None, device: str = "auto"):
    """The backbone with its task files loaded and ``task`` (or the last loaded one) active, on ``device``; a request
    routed by language (auto, a+b) or for the identifier itself (lid) activates none."""
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.model.auto_routing import AUTO
    from wavadapt.model.checkpoint import LANGUAGE_ID

    where = torch_device(device)  # a machine without it refuses before the model loads
    routed = task is not None and (task in (AUTO, LANGUAGE_ID) or "+" in task)
    asr = load_asr_model(model, adapters or [], trust_pickle=trust_pickle, family=family,
                         task=None if routed else task, vocab=vocab)
    if asr.active is None and not routed:
        raise WavadaptError("no task to run: pass a task file with --adapter")
    return asr.to(where)


LanguageTemperature = Annotated[float | None, typer.Option(
    help="Several languages: each epoch gives a language a share of the audio proportional to its hours ** this "
         "(1: as the corpus holds them; 0.5 as XLS-R and MMS raise the smaller ones; 0: all alike).")]


Stream = Annotated[bool, typer.Option("--stream", help="Stream WebDataset shards (DATA: their folder, a brace pattern "
                                      "or a URL) instead of indexing them: each epoch reads every record once, across "
                                      "workers and processes, shuffled in a buffer of 500.")]


def stream_shards(data: str, split: str, language: str | None):
    """The shards ``--stream`` reads, checked before a model loads."""
    from wavadapt.data.shard_stream import Shards
    from wavadapt.data.stores.tar_shards import shard_paths

    paths = shard_paths(data, split)
    if paths is None:
        raise WavadaptError(f"--stream reads WebDataset shards: {data} holds none of split {split} (write them with "
                            "wavadapt shard)")
    return Shards(paths, language)

