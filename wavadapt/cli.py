"""`wavadapt <command>`: each command is a typed function whose signature is its command line."""

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from wavadapt.errors import WarningLines, WavadaptError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Bottleneck adapters for wav2vec 2.0 / HuBERT / WavLM: adapter transfer and continual pre-training.",
)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error (also: "
                                        "WAVADAPT_DEBUG=1).")] = False,
) -> None:
    if debug:
        os.environ["WAVADAPT_DEBUG"] = "1"


# Options shared by several commands.
Jobs = Annotated[int, typer.Option(help="Independent runs (fine-tuning runs, continual runs, probes) at a time, each a "
                                   "process of one thread: on a CPU, one per core trains small models fastest.")]
Amp = Annotated[str, typer.Option(help="auto | bf16 | fp16 | none")]
ValidateEvery = Annotated[int, typer.Option(help="Validate every N updates (0: at the end).")]
CheckpointEvery = Annotated[int, typer.Option(help="Checkpoint every N updates (0: at the end).")]
NumWorkers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")]
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


# --- data commands ---


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="A corpus directory or manifest (see `open_corpus`).")],
    split: Annotated[str | None, typer.Option(help="Split to check (default: the only one, else train).")] = None,
    language: Annotated[str | None, typer.Option(help="Language directory / transcript normalisation.")] = None,
    vocab: Annotated[Path | None, typer.Option(help="vocab.json, dict.ltr.txt or a task file "
                                               "(adapter.<task>.json): report unknown characters.")] = None,
    min_seconds: Annotated[float, typer.Option(help="Shorter files are reported.")] = 0.5,
    max_seconds: Annotated[float, typer.Option(help="Longer files are reported.")] = 30.0,
    raw_format: RawFormatOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Decode every file of a corpus and list each problem file; exit status 1 if any is unusable."""
    import json

    from wavadapt.data.check import check_corpus
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import Vocabulary

    utterances = open_corpus(data, split, language, raw_format)
    vocabulary = Vocabulary.load(vocab) if vocab is not None else None
    report = check_corpus(utterances, vocabulary, min_seconds, max_seconds, progress=not json_output)
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if json_output else report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the corpus into (one folder per language).")],
    languages: Annotated[str, typer.Option(help="Comma-separated languages: en (LibriSpeech layout), es, de, it.")] = (
        "en,es,de,it"
    ),
    pretrain_minutes: Annotated[float, typer.Option(help="Minutes of unlabeled pre-training audio per language.")] = 10,
    train_minutes: Annotated[float, typer.Option(help="Minutes of labeled fine-tuning audio per language.")] = 3,
    dev_minutes: Annotated[float, typer.Option(help="Minutes of dev audio per language.")] = 1,
    test_minutes: Annotated[float, typer.Option(help="Minutes of test audio per language.")] = 1,
    speakers: Annotated[int, typer.Option(help="Synthetic speakers (espeak-ng voice variants) per language.")] = 4,
    noise: Annotated[float, typer.Option(help="Typical RMS of added white/pink noise (0 for none).")] = 0.003,
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical corpus.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Speak real sentences with espeak-ng into a small multilingual corpus (LibriSpeech + Common Voice layouts)."""
    import time

    from wavadapt.data.synth import synthesize_corpus

    minutes = {"pretrain": pretrain_minutes, "train": train_minutes, "dev": dev_minutes, "test": test_minutes}
    start = time.perf_counter()
    corpus = synthesize_corpus(
        out_dir,
        tuple(lang.strip() for lang in languages.split(",") if lang.strip()),
        minutes=minutes,
        speakers=speakers,
        noise=noise,
        seed=seed,
        progress=progress,
    )
    elapsed = time.perf_counter() - start
    total = 0.0
    typer.echo(f"{'language':<9}{'layout':<13}{'split':<10}{'utterances':>11}{'minutes':>9}")
    for language, entry in corpus["languages"].items():
        for split, info in entry["splits"].items():
            total += info["seconds"]
            row = f"{language:<9}{entry['layout']:<13}{split:<10}{info['utterances']:>11}{info['seconds'] / 60:>9.2f}"
            typer.echo(row)
    typer.echo(f"{total / 60:.1f} min of audio in {elapsed:.0f} s ({total / elapsed:.0f}x real time) -> {out_dir}")


@app.command()
def prepare(
    corpus: Annotated[str, typer.Argument(help="fillets-ng (acted game dialogue: nl, cs, en) or "
                                          "pocketsphinx-testdata (47 s of read English, a test set).")],
    out: Annotated[Path, typer.Option(help="Corpus directory to write: <split>.tsv manifests, audio/, prepare.json.")],
    language: Annotated[str, typer.Option(help="fillets-ng: the recordings' language (its Debian package "
                                          "fillets-ng-data-LANG; en is in fillets-ng-data).")] = "nl",
    packages: Annotated[Path | None, typer.Option(help="A folder holding the .deb files (offline); default: "
                                                  "apt-get download.")] = None,
    seed: Annotated[int, typer.Option(help="fillets-ng: the order in which whole levels fill test, dev, "
                                      "train.")] = 0,
    test_utterances: Annotated[int, typer.Option(help="fillets-ng: levels go to test until it holds this many.")] = 150,
    dev_utterances: Annotated[int, typer.Option(help="fillets-ng: then to dev until it holds this many.")] = 75,
) -> None:
    """Fetch a real transcribed corpus from Debian's packages and write it as manifests every command reads."""
    from wavadapt.data.prepare import prepare_corpus

    if corpus == "pocketsphinx-testdata":
        language = "en"
    info = prepare_corpus(corpus, out, language, packages, seed, test_utterances, dev_utterances)
    typer.echo(f"{'split':<7}{'utterances':>11}{'minutes':>9}{'speakers':>10}")
    for split, size in info["splits"].items():
        typer.echo(f"{split:<7}{size['utterances']:>11}{size['seconds'] / 60:>9.1f}{size['speakers']:>10}")
    for reason, entry in info["dropped"].items():
        typer.echo(f"left out ({reason}): {entry['count']}")
    typer.echo(f"{info['language']} from {', '.join(f'{p} {v}' for p, v in info['packages'].items())} -> {out}")


@app.command()
def vocab(
    source: Annotated[
        Path, typer.Argument(help="A corpus directory or manifest, or a .txt file with one transcript per line.")
    ],
    language: Annotated[str, typer.Option(help="Language whose normalisation applies (en, es, de, it, ...).")],
    out: Annotated[Path, typer.Option(help="Where to write the HF vocab.json.")] = Path("vocab.json"),
    fairseq_dict: Annotated[Path | None, typer.Option(help="Also write fairseq's dict.ltr.txt here.")] = None,
    split: Annotated[str, typer.Option(help="Corpus split whose transcripts are counted.")] = "train",
) -> None:
    """Build the CTC character vocabulary of a corpus's transcripts (letters by descending frequency)."""
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import SPECIAL_TOKENS, Vocabulary

    if source.suffix == ".txt" and source.is_file():
        transcripts = source.read_text(encoding="utf-8").splitlines()
    else:
        transcripts = [u.text for u in open_corpus(source, split, language) if u.text]
    vocabulary = Vocabulary.build(transcripts, language)
    vocabulary.save_json(out)
    if fairseq_dict is not None:
        vocabulary.save_fairseq_dict(fairseq_dict)
    letters = "".join(vocabulary.tokens[len(SPECIAL_TOKENS) + 1 :])
    typer.echo(f"{out}: {len(vocabulary)} tokens from {len(transcripts)} transcripts; letters: {letters}")


@app.command("lm")
def language_model(
    language: Annotated[str, typer.Option(help="Language whose normalisation applies (en, es, de, it, ...).")],
    text: Annotated[list[Path] | None, typer.Argument(help="Text files, one sentence per line.")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Also the transcripts of a corpus (a directory or manifest, as "
                                                "`evaluate` reads) ...")] = None,
    split: Annotated[str, typer.Option(help="... of this split (never the test split you will score).")] = "train",
    order: Annotated[int, typer.Option(help="n-gram order.")] = 3,
    out: Annotated[Path, typer.Option(help="Where to write the ARPA model.")] = Path("lm.arpa"),
    discount_fallback: Annotated[bool, typer.Option("--discount-fallback", help="Fixed discounts (0.5, 1, 1.5) "
                                                    "where the text is too small for Kneser-Ney's estimate "
                                                    "(lmplz's --discount_fallback).")] = False,
) -> None:
    """Build a word n-gram LM (interpolated modified Kneser-Ney, as KenLM's lmplz) from text files and / or a
    corpus split's transcripts, as ARPA."""
    from wavadapt.data.text import normalize_text
    from wavadapt.decoding.ngram import arpa_stats, build_arpa, corpus_sentences

    text = text or []
    if not text and corpus is None:
        raise WavadaptError("no text: give text files, or --corpus (with --split) for a corpus's transcripts")
    if missing := [p for p in text if not p.is_file()]:
        raise WavadaptError(f"{missing[0]}: no such text file")
    sentences = [normalize_text(line, language) for path in text
                 for line in path.read_text(encoding="utf-8").splitlines()]
    if corpus is not None:
        sentences += corpus_sentences(corpus, split, language)
    build_arpa(sentences, order, out, discount_fallback)
    typer.echo(f"{out}: " + ", ".join(f"{c} {n}-grams" for n, c in arpa_stats(out).items()))


# --- model commands ---

ModelOption = Annotated[
    str,
    typer.Option(help="A preset (tiny, base, large: random weights, seed 0), a Hugging Face checkpoint directory "
                 "(e.g. a run's backbone/) or a fairseq .pt."),
]
AdapterOption = Annotated[
    list[Path] | None,
    typer.Option(help="A task file (adapter.<task>.json); repeat to stack, the language adapter first."),
]
TaskOption = Annotated[str | None, typer.Option(help="Task to run (default: the last task file's).")]
VocabOption = Annotated[Path | None, typer.Option(help="The dict.ltr.txt of a fine-tuned fairseq checkpoint, where "
                                                 "it is not beside the .pt.")]
# The decoder: greedy, or flashlight's beam search with a KenLM word LM and a lexicon (DecoderConfig).
DecoderKind = Annotated[str | None, typer.Option("--decoder", help="greedy, or beam (CTC beam search; the default "
                                                 "when --lm or --lexicon is given).")]
BeamSize = Annotated[int, typer.Option(help="Beam search: hypotheses kept per frame.")]
LmOption = Annotated[Path | None, typer.Option("--lm", help="Beam search with this KenLM word n-gram LM (.arpa, "
                                               "or a .bin with --lexicon; `wavadapt lm` builds one).")]
LmWeight = Annotated[float, typer.Option(help="Beam search: weight of the LM's log10 probabilities.")]
WordScore = Annotated[float, typer.Option(help="Beam search: added per word (insertion bonus).")]
LexiconOption = Annotated[Path | None, typer.Option(help="Beam search emits only this lexicon's words (lines of "
                                                    "`word` or `word  s p e l l i n g`).")]


def _decoder_config(kind: str | None, beam_size: int, lm: Path | None, lm_weight: float, word_score: float,
                    lexicon: Path | None):
    from wavadapt.decoding import DecoderConfig

    kind = kind or ("beam" if lm or lexicon else "greedy")
    return DecoderConfig(kind, beam_size=beam_size, lm=lm, lm_weight=lm_weight, word_score=word_score,
                         lexicon=lexicon)


def _asr_model(model: str, adapters: list[Path] | None, task: str | None, family: str | None, trust_pickle: bool,
               vocab: Path | None = None):
    """The backbone with its task files loaded and ``task`` (or the last loaded one) active."""
    from wavadapt.interop.loading import load_asr_model

    asr = load_asr_model(model, adapters or [], trust_pickle=trust_pickle, family=family, task=task, vocab=vocab)
    if asr.active is None:
        raise WavadaptError("no task to run: pass a task file with --adapter")
    return asr


@app.command("evaluate")
def evaluate_corpus(
    data: Annotated[Path, typer.Argument(help="A corpus directory or manifest (see `open_corpus`).")],
    model: ModelOption,
    adapter: AdapterOption = None,
    task: TaskOption = None,
    split: Annotated[str, typer.Option(help="Split to decode.")] = "test",
    language: Annotated[str | None, typer.Option(help="Language directory / transcript normalisation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write hyp.<task>.txt and ref.<task>.txt here.")] = None,
    max_seconds_per_batch: Annotated[float, typer.Option(help="Seconds of padded audio per batch.")] = 60.0,
    family: Family = None,
    trust_pickle: TrustPickle = False,
    vocab: VocabOption = None,
    raw_format: RawFormatOption = None,
    decoder: DecoderKind = None,
    beam_size: BeamSize = 50,
    lm: LmOption = None,
    lm_weight: LmWeight = 2.0,
    word_score: WordScore = 0.0,
    lexicon: LexiconOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Decode a corpus split (greedy, or beam search with greedy's scores beside) and print WER / CER per
    language."""
    import json

    from wavadapt.data.corpora import open_corpus
    from wavadapt.decoding import make_decoder
    from wavadapt.evaluation.corpus import evaluate

    config = _decoder_config(decoder, beam_size, lm, lm_weight, word_score, lexicon)
    asr = _asr_model(model, adapter, task, family, trust_pickle, vocab)
    make_decoder(config, asr.vocabularies[asr.active])  # a bad LM or lexicon fails before the decoding
    result = evaluate(asr, open_corpus(data, split, language, raw_format), max_seconds_per_batch=max_seconds_per_batch,
                      out_dir=out, decoder=config)
    typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if json_output else result.summary())


@app.command("transcribe")
def transcribe_files(
    files: Annotated[list[Path], typer.Argument(help="Audio files (any format soundfile reads, any rate, mono or "
                                                "stereo; headerless PCM with --raw-format) or .tsv/.jsonl manifests "
                                                "(path, and a task or language column to pick each file's task).")],
    model: ModelOption,
    adapter: AdapterOption = None,
    task: TaskOption = None,
    output_format: Annotated[str, typer.Option("--format", help="tsv (file TAB transcript), jsonl (with word "
                                               "times), srt or vtt (subtitles, one file per input in --out).")] = "tsv",
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout: a file (tsv, jsonl) or a directory "
                                             "(srt, vtt).")] = None,
    max_seconds_per_batch: Annotated[float | None, typer.Option(help="Padded audio seconds per batch (default: "
                                                                "12.5 on CPU, 200 on GPU).")] = None,
    chunk_seconds: Annotated[float, typer.Option(help="Longer audio is decoded in windows of this length, cut in "
                                                 "pauses.")] = 30.0,
    family: Family = None,
    trust_pickle: TrustPickle = False,
    vocab: VocabOption = None,
    raw_format: RawFormatOption = None,
    precision: Annotated[str, typer.Option(help="fp32, or bf16 / fp16 autocast on a GPU.")] = "fp32",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone (minutes to compile "
                                                "each new batch shape; for long runs).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    decoder: DecoderKind = None,
    beam_size: BeamSize = 50,
    lm: LmOption = None,
    lm_weight: LmWeight = 2.0,
    word_score: WordScore = 0.0,
    lexicon: LexiconOption = None,
) -> None:
    """Transcribe many files in length-sorted batches that mix tasks (greedy CTC, or beam search with an LM); each
    unreadable file gets one error line on stderr, the others are still transcribed, and the exit status is
    then 1."""
    from wavadapt.data.audio import RawFormat, is_headerless
    from wavadapt.data.corpora import read_manifest
    from wavadapt.decoding import DecoderPool
    from wavadapt.inference import transcription
    from wavadapt.inference.formats import FORMATS, SUBTITLES, jsonl_line, subtitles, tsv_line
    from wavadapt.inference.transcription import Request, transcribe_requests

    if output_format not in FORMATS:
        raise WavadaptError(f"--format {output_format!r}: choose from {', '.join(FORMATS)}")
    if output_format in SUBTITLES and out is None:
        raise WavadaptError(f"--format {output_format} writes one file per input: give the directory with --out")
    raw = str(RawFormat.parse(raw_format)) if raw_format else None  # a typo fails before the model loads
    config = _decoder_config(decoder, beam_size, lm, lm_weight, word_score, lexicon)
    asr = _asr_model(model, adapter, task, family, trust_pickle, vocab)
    requests = []
    for f in files:
        if f.suffix in (".tsv", ".jsonl") and f.is_file():
            requests += [Request(u.path, _task_of(asr, u.task, u.language), u.raw_format or raw, config)
                         for u in read_manifest(f)]
        else:
            requests.append(Request(f, asr.active, raw if is_headerless(f) else None, config))
    pool = DecoderPool()
    for t in dict.fromkeys(r.task for r in requests if r.task in asr.vocabularies):  # a bad LM fails here, first
        pool.get(config, asr.vocabularies[t])
    if compile_model:
        transcription.compile_model(asr)
    results = transcribe_requests(asr, requests, max_seconds_per_batch, chunk_seconds,
                                  progress=progress and len(requests) > 8, precision=precision, pool=pool)
    good = [t for t in results if t.error is None]
    for t in results:
        if t.error is not None:
            typer.echo(f"error: {t.error}", err=True)
    if output_format in SUBTITLES:
        out.mkdir(parents=True, exist_ok=True)
        for t in good:
            target = out / f"{Path(t.path).stem}.{output_format}"
            target.write_text(subtitles(t, output_format), encoding="utf-8")
            typer.echo(target)
    else:
        line = tsv_line if output_format == "tsv" else jsonl_line
        text = "".join(line(t) + "\n" for t in good)
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.write_text(text, encoding="utf-8")
    if len(good) < len(results):
        typer.echo(f"{len(results) - len(good)} of {len(results)} files could not be read", err=True)
        raise typer.Exit(1)


def _task_of(asr, task: str | None, language: str) -> str:
    """A manifest row's task: its task column, else the task named like its language (an MMS language), else the
    active one."""
    return task or (language if language in asr.heads else asr.active)


@app.command()
def params(
    model: Annotated[
        str, typer.Argument(help="A preset (tiny, base, large), a Hugging Face checkpoint directory or a fairseq .pt.")
    ],
    method: Annotated[
        str | None, typer.Option(help="full, top-n-full, adapters (default), top-n-adapters or head-only.")
    ] = None,
    top_n: Annotated[int | None, typer.Option(help="N of the top-n methods: the top N transformer layers.")] = None,
    adapter_size: Annotated[int, typer.Option(help="Adapter bottleneck size.")] = 256,
    adapter_form: AdapterForm = "houlsby",
    vocab_size: Annotated[
        int | None, typer.Option(help="CTC output tokens (default 32: fairseq's LibriSpeech letter dictionary).")
    ] = None,
    vocab: Annotated[Path | None, typer.Option(help="vocab.json or dict.ltr.txt whose size sets the head.")] = None,
    family: Family = None,
    trust_pickle: TrustPickle = False,
    all_methods: Annotated[
        bool, typer.Option("--all", help="Every method, with both top-N methods for N = 1 .. layers.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the account as JSON.")] = False,
) -> None:
    """Count the total, trainable and frozen parameters of a fine-tuning method (the paper's percentages)."""
    import json

    from wavadapt.data.text import Vocabulary
    from wavadapt.experiments.accounting import (
        LIBRISPEECH_VOCAB_SIZE,
        all_accounts,
        backbone_factory,
        format_account,
        format_table,
        method_account,
    )
    from wavadapt.training.methods import MethodConfig

    if all_methods and (method is not None or top_n is not None):
        raise WavadaptError("--all lists every method: drop --method and --top-n")
    if vocab is not None and vocab_size is not None:
        raise WavadaptError("give --vocab or --vocab-size, not both")
    config = None if all_methods else MethodConfig(method or "adapters", top_n=top_n, adapter_size=adapter_size,
                                                   adapter_form=adapter_form)
    if vocab is not None:
        tokens = Vocabulary.load(vocab)
    else:
        tokens = vocab_size or LIBRISPEECH_VOCAB_SIZE
    factory = backbone_factory(model, family, trust_pickle)
    if all_methods:
        accounts = all_accounts(factory, adapter_size, tokens, adapter_form)
        output = {"accounts": [a.to_dict() for a in accounts]} if json_output else format_table(accounts, model)
    else:
        account = method_account(factory, config, tokens)
        output = account.to_dict() if json_output else format_account(account, model)
    typer.echo(json.dumps(output, indent=2) if json_output else output)


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="A preset (tiny, base, large), a Hugging Face checkpoint directory or a fairseq .pt.")
    ],
    family: Family = None,
    pretraining: Annotated[
        bool, typer.Option("--pretraining", help="Include wav2vec 2.0's quantizer and projections.")
    ] = False,
    trust_pickle: TrustPickle = False,
    adapters: Annotated[Path | None, typer.Option(help="A directory of task files to list with the model's own "
                                                  "tasks, each with its parameters and memory.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise a backbone's architecture and count its parameters by component; list the tasks it serves (its
    own, a fine-tuned or MMS checkpoint's, and those of --adapters)."""
    import json

    import torch

    from wavadapt.model.backbone import (
        PRESETS,
        build_backbone,
        build_pretraining_model,
        describe,
        format_description,
        load_backbone,
        load_pretraining_model,
    )

    if model in PRESETS:
        family = family or "wav2vec2"
        if pretraining and family != "wav2vec2":
            raise WavadaptError(f"--pretraining needs the wav2vec2 family, not {family}")
        with torch.device("meta"):  # counting needs shapes only: even large builds instantly
            built = build_pretraining_model(model) if pretraining else build_backbone(model, family)
    elif family is not None:
        raise WavadaptError("--family applies to presets only: a checkpoint names its own family")
    else:
        load = load_pretraining_model if pretraining else load_backbone
        built = load(model, trust_pickle=trust_pickle)
    summary = describe(built)
    if adapters is not None or model not in PRESETS:
        from wavadapt.inference.registry import Registry, format_tasks

        registry = Registry.load(model, Registry.task_files(adapters) if adapters else [], trust_pickle=trust_pickle)
        summary["tasks"] = [t.to_dict() for t in registry.tasks()]
        summary["backbone_bytes"] = registry.backbone_bytes()
    text = format_description(summary)
    if summary.get("tasks"):
        text += "\n" + format_tasks(registry)
    typer.echo(json.dumps(summary, indent=2) if json_output else text)


@app.command()
def export(
    model: ModelOption,
    out: Annotated[Path, typer.Option(help="Output: a directory (mms) or a .pt file (fairseq).")],
    files: Annotated[list[Path] | None, typer.Argument(help="Task files (adapter.<task>.json) to export, loaded in "
                                                        "order onto --model.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mms: transformers' MMS layout (mms-form tasks; the first "
                                     "is the main language). fairseq: a fairseq 0.12 checkpoint of the backbone, "
                                     "or of one task without adapters (a fine-tuned Wav2VecCtc + dict.ltr.txt).")] = (
        "mms"
    ),
    task: Annotated[list[str] | None, typer.Option(help="Also export this task of the model itself (e.g. a "
                                                   "language of an MMS directory); repeat.")] = None,
    family: Family = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Write tasks in another toolkit's layout: `--format mms` gives a directory that transformers'
    `Wav2Vec2ForCTC.from_pretrained(DIR, target_lang=...)` and `load_adapter(...)` load; `--format fairseq` a
    checkpoint fairseq's `load_model_ensemble_and_task` loads."""
    from wavadapt.interop.fairseq import export_fairseq
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.interop.mms import export_mms
    from wavadapt.model.checkpoint import load_task

    if fmt not in ("mms", "fairseq"):
        raise WavadaptError(f"--format {fmt!r}: choose mms or fairseq (a Houlsby-form adapter task stays a wavadapt "
                            "task file: neither transformers nor fairseq has a module for it)")
    asr = load_asr_model(model, [], trust_pickle=trust_pickle, family=family)
    tasks = [*(task or []), *(load_task(asr, f) for f in files or [])]
    if fmt == "fairseq":
        if len(tasks) > 1:
            raise WavadaptError(f"a fairseq checkpoint holds one task; got {', '.join(tasks)}")
        typer.echo(f"{export_fairseq(asr, tasks[0] if tasks else None, out)}: {tasks[0] if tasks else 'backbone'}")
        return
    if not tasks:
        raise WavadaptError("nothing to export: give task files or --task")
    typer.echo(f"{export_mms(asr, tasks, out)}: {', '.join(tasks)} in the MMS layout")


@app.command()
def serve(
    model: ModelOption,
    adapters: Annotated[Path | None, typer.Option(help="A directory of task files (adapter.<task>.json) to serve "
                                                  "beside the model's own tasks.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default: only this machine).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8000,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its batch.")] = (
        10.0
    ),
    max_batch_seconds: Annotated[float | None, typer.Option(help="Padded audio seconds per batch (default: 12.5 "
                                                            "on CPU, 200 on GPU).")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait; more get 429 with Retry-After.")] = 256,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (413 beyond).")] = 25.0,
    max_audio_seconds: Annotated[float, typer.Option(help="Longest audio (413 beyond).")] = 600.0,
    api_key: Annotated[str | None, typer.Option(envvar="WAVADAPT_API_KEY", help="Refuse /v1 and /metrics requests "
                                                "without Authorization: Bearer KEY (401).")] = None,
    trust_pickle: TrustPickle = False,
    decoder: Annotated[str, typer.Option("--decoder", help="Every task's default decoder: greedy, or beam (with "
                                         "the task's lm.<task>.arpa|.bin and lexicon.<task>.txt from --adapters, "
                                         "where there); a request may choose its own.")] = "greedy",
    beam_size: BeamSize = 50,
    lm_weight: LmWeight = 2.0,
    word_score: WordScore = 0.0,
) -> None:
    """Serve the model's tasks over an OpenAI-compatible HTTP API (POST /v1/audio/transcriptions, GET /v1/models),
    with /health, Prometheus /metrics and a page at / to try it; requests share mixed-task batches."""
    from wavadapt.inference.server import serve as run_server

    run_server(model, adapters, host, port, trust_pickle=trust_pickle, echo=typer.echo,
               decoder=_decoder_config(decoder, beam_size, None, lm_weight, word_score, None), max_wait_ms=max_wait_ms,
               max_batch_seconds=max_batch_seconds, max_queue=max_queue, max_upload_mb=max_upload_mb,
               max_audio_seconds=max_audio_seconds, api_key=api_key)


# --- training commands ---


@app.command()
def finetune(
    data: Annotated[Path, typer.Argument(help="Labeled corpus: synth root, LibriSpeech / Common Voice dir, manifest.")],
    language: Annotated[str, typer.Option(help="Language of the data (text normalisation, corpus folder).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, logs, task file, backbone if changed.")],
    model: Annotated[str, typer.Option(help="Backbone: preset (fresh weights), HF checkpoint dir, fairseq .pt.")] = (
        "tiny"
    ),
    method: Annotated[str, typer.Option(help="full | top-n-full | adapters | top-n-adapters | head-only")] = "adapters",
    top_n: Annotated[int | None, typer.Option(help="N of the top-n methods.")] = None,
    adapter_size: Annotated[int, typer.Option(help="Adapter bottleneck size (papers: 256).")] = 256,
    adapter_form: AdapterForm = "houlsby",
    task: Annotated[str | None, typer.Option(help="Task name (default: the language; e.g. es/asr).")] = None,
    adapter: Annotated[list[Path] | None, typer.Option(help="Adapter files to load first.")] = None,
    stack_on: Annotated[str | None, typer.Option(help="Stack the new task adapter on this loaded adapter set.")] = None,
    split: Annotated[str, typer.Option(help="Training split.")] = "train",
    valid_split: Annotated[str | None, typer.Option(help="Validation split (WER/CER); '' for none.")] = "dev",
    max_updates: Annotated[int, typer.Option(help="Updates to train.")] = 20000,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    update_freq: Annotated[int, typer.Option(help="Micro-batches per update (gradient accumulation).")] = 1,
    max_seconds_per_batch: Annotated[float, typer.Option(help="Audio seconds per micro-batch per process.")] = 200.0,
    freeze_updates: Annotated[int, typer.Option(help="full: updates that train only the head first.")] = 0,
    clip_norm: Annotated[float, typer.Option(help="Gradient-norm clipping (0: none).")] = 0.0,
    mask_time_prob: Annotated[float, typer.Option(help="SpecAugment time-mask probability.")] = 0.65,
    mask_feature_prob: Annotated[float, typer.Option(help="SpecAugment channel-mask probability.")] = 0.5,
    layerdrop: Annotated[float, typer.Option(help="Probability of skipping a transformer layer.")] = 0.05,
    amp: Amp = "auto",
    validate_every: ValidateEvery = 0,
    checkpoint_every: CheckpointEvery = 0,
    num_workers: NumWorkers = 0,
    seed: Annotated[int, typer.Option()] = 0,
    feature_cache: FeatureCache = False,
    feature_cache_dir: Annotated[Path | None, typer.Option(help="Root of --feature-cache's caches (implies "
                                                           "--feature-cache; default OUT/feature_cache): one per CNN "
                                                           "and utterance set, shared by the runs given one root.")
                                 ] = None,
    keep_foreign_letters: Annotated[bool, typer.Option("--keep-foreign-letters", help="Train on transcripts with "
                                                       "letters outside the language's alphabet too, without those "
                                                       "letters (default: skipped and counted).")] = False,
    resume: Resume = False,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
) -> None:
    """Fine-tune CTC ASR with one of the methods; launch with torchrun to use several processes / GPUs."""
    from wavadapt.data.corpora import open_corpus
    from wavadapt.interop.loading import load_asr_model
    from wavadapt.training.finetune import AugmentConfig
    from wavadapt.training.finetune import finetune as run
    from wavadapt.training.loop import TrainConfig
    from wavadapt.training.methods import MethodConfig

    asr = load_asr_model(model, adapter or [], trust_pickle=trust_pickle)
    method_config = MethodConfig(method, top_n, adapter_size, freeze_updates, stack_on, adapter_form)
    config = TrainConfig(max_updates=max_updates, lr=lr, update_freq=update_freq, clip_norm=clip_norm,
                         max_seconds_per_batch=max_seconds_per_batch, amp=amp, validate_every=validate_every,
                         checkpoint_every=checkpoint_every, num_workers=num_workers, seed=seed)
    augment = AugmentConfig(mask_time_prob=mask_time_prob, mask_feature_prob=mask_feature_prob, layerdrop=layerdrop)
    valid = open_corpus(data, valid_split, language, raw_format) if valid_split else None
    history = run(asr, task or language, open_corpus(data, split, language, raw_format), method_config, config, out,
                  valid=valid, augment=augment, resume=resume,
                  feature_cache=_cache_dir(out, feature_cache, feature_cache_dir), keep_foreign=keep_foreign_letters)
    if history:
        last = history[-1]
        typer.echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))


@app.command()
def pretrain(
    data: Annotated[Path, typer.Argument(help="Unlabeled corpus: synth root, LibriSpeech / Common Voice, manifest.")],
    language: Annotated[str, typer.Option(help="Language(s) of the data, comma-separated for joint multilingual "
                                          "pre-training on mixed-language batches (the default task name).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, logs, model/ (HF), pretraining.safetensors.")],
    model: Annotated[str, typer.Option(help="tiny | base | large (fresh weights), HF pre-training dir, fairseq .pt, "
                                       "or a run directory (pretraining.json).")] = "tiny",
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
    amp: Amp = "auto",
    validate_every: ValidateEvery = 0,
    checkpoint_every: CheckpointEvery = 0,
    num_workers: NumWorkers = 0,
    seed: Annotated[int, typer.Option()] = 0,
    keep_snapshots: KeepSnapshots = False,
    feature_cache: FeatureCache = False,
    feature_cache_dir: FeatureCacheDir = None,
    resume: Resume = False,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
) -> None:
    """wav2vec 2.0 self-supervised pre-training (contrastive + diversity loss); launch with torchrun for GPUs."""
    from dataclasses import replace

    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.pretrain import build_model
    from wavadapt.training.pretrain import pretrain as run

    name, r = _pretrain_recipe(preset, model, max_updates=max_updates, lr=lr, warmup_updates=warmup_updates,
                               max_seconds_per_batch=max_seconds_per_batch, update_freq=update_freq, amp=amp,
                               validate_every=validate_every, checkpoint_every=checkpoint_every,
                               num_workers=num_workers, seed=seed)
    languages = [lang.strip() for lang in language.split(",") if lang.strip()]
    task = task or "+".join(languages)
    pt = build_model(model, task, name, trust_pickle=trust_pickle, seed=seed,
                     codevectors_per_group=codevectors_per_group)
    objective = {"feature_grad_mult": feature_grad_mult, "diversity_weight": diversity_weight,
                 "feature_penalty_weight": feature_penalty_weight}
    pt.config = replace(pt.config, **{k: v for k, v in objective.items() if v is not None})
    valid = [u for lang in languages for u in open_corpus(data, valid_split, lang, raw_format)] if valid_split else None
    history = run(pt, task, [u for lang in languages for u in open_corpus(data, split, lang, raw_format)], r.train,
                  out,
                  crop_seconds=r.crop_seconds if crop_seconds is None else crop_seconds,
                  min_seconds=r.min_seconds if min_seconds is None else min_seconds, valid=valid, resume=resume,
                  keep_snapshots=keep_snapshots, feature_cache=_cache_dir(out, feature_cache, feature_cache_dir))
    _echo_last(history)


@app.command()
def continual(
    data: Annotated[Path, typer.Argument(help="Unlabeled corpus of the new language.")],
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
    seed: Annotated[int, typer.Option()] = 0,
    keep_snapshots: KeepSnapshots = False,
    feature_cache: FeatureCache = False,
    feature_cache_dir: FeatureCacheDir = None,
    resume: Resume = False,
    trust_pickle: TrustPickle = False,
    raw_format: RawFormatOption = None,
) -> None:
    """Learn a new language's self-supervised representation on top of a pre-trained model (cwav2vec 2.0
    or a baseline); earlier tasks keep their heads."""
    import torch

    from wavadapt.data.corpora import open_corpus
    from wavadapt.training.continual import ContinualConfig, prepare_continual
    from wavadapt.training.pretrain import build_model
    from wavadapt.training.pretrain import pretrain as run

    name, r = _pretrain_recipe(preset, "base", max_updates=max_updates, lr=lr, warmup_updates=warmup_updates,
                               max_seconds_per_batch=max_seconds_per_batch, update_freq=update_freq, amp=amp,
                               validate_every=validate_every, checkpoint_every=checkpoint_every,
                               num_workers=num_workers, seed=seed)
    pt = build_model(model, from_task, name, trust_pickle=trust_pickle, seed=seed)
    task = task or language
    torch.manual_seed(seed)  # the new adapters and heads
    trainable, regularizer = prepare_continual(pt, task, ContinualConfig(method, l2_weight, adapter_size))
    r.train.extra = {"continual_method": method, "l2_weight": l2_weight, "adapter_size": adapter_size}
    valid = open_corpus(data, valid_split, language, raw_format) if valid_split else None
    history = run(pt, task, open_corpus(data, split, language, raw_format), r.train, out, trainable=trainable,
                  crop_seconds=r.crop_seconds if crop_seconds is None else crop_seconds, min_seconds=r.min_seconds,
                  valid=valid, resume=resume, regularizer=regularizer, keep_snapshots=keep_snapshots,
                  feature_cache=_cache_dir(out, feature_cache, feature_cache_dir))
    _echo_last(history)


def _pretrain_recipe(preset: str | None, model: str, **options):
    """The name and the pre-training recipe ``preset`` (default: ``model`` if it names a preset, else base)
    with the options given on the command line."""
    from wavadapt.model.backbone import PRESETS
    from wavadapt.training.pretrain import recipe

    name = preset or (model if model in PRESETS else "base")
    return name, recipe(name, **{k: v for k, v in options.items() if v is not None})


def _cache_dir(out: Path, enabled: bool, directory: Path | None) -> Path | None:
    """The feature cache directory of --feature-cache / --feature-cache-dir, or None."""
    if directory is not None:
        return directory
    return out / "feature_cache" if enabled else None


def _echo_last(history: list[dict]) -> None:
    if history:
        last = history[-1]
        typer.echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))


@app.command("evaluate-continual")
def evaluate_continual_runs(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: the first task's pretrain run and each "
                                               "method's continual run (--keep-snapshots adds learning curves).")],
    data: Annotated[Path, typer.Option(help="Labeled corpus with train / dev / test splits per language.")],
    out: Annotated[Path, typer.Option(help="Where forgetting.csv/json, efficiency.csv/json and the fine-tuning "
                                      "runs go.")],
    language: Annotated[list[str] | None, typer.Option(help="Probe only this language (repeat; default: every "
                                                       "language a checkpoint has learnt).")] = None,
    max_updates: Annotated[int, typer.Option(help="Fine-tuning updates per checkpoint and language.")] = 20000,
    lr: Annotated[float, typer.Option(help="Fine-tuning peak learning rate.")] = 5e-5,
    adapter_size: Annotated[int, typer.Option(help="Task adapter bottleneck size.")] = 256,
    max_seconds_per_batch: Annotated[float, typer.Option(help="Audio seconds per batch.")] = 200.0,
    train_split: Annotated[str, typer.Option(help="Fine-tuning split.")] = "train",
    test_split: Annotated[str, typer.Option(help="Split scored with WER / CER.")] = "test",
    ssl_split: Annotated[str, typer.Option(help="Split of the self-supervised loss.")] = "dev",
    ssl_crop_seconds: Annotated[float | None, typer.Option(help="Crop for the self-supervised loss.")] = None,
    mask_time_prob: Annotated[float, typer.Option(help="SpecAugment time-mask probability.")] = 0.65,
    mask_feature_prob: Annotated[float, typer.Option(help="SpecAugment channel-mask probability.")] = 0.5,
    target_loss: Annotated[float | None, typer.Option(help="Report the training time to this validation loss.")] = (
        None
    ),
    seed: Annotated[int, typer.Option(help="Fine-tuning and masking seed: equal models score equally.")] = 0,
    decoder: DecoderKind = None,
    beam_size: BeamSize = 50,
    lm: Annotated[list[str] | None, typer.Option("--lm", help="LANG=PATH: the beam search's KenLM word LM for a "
                                                 "language (repeat per language).")] = None,
    lm_weight: LmWeight = 2.0,
    word_score: WordScore = 0.0,
    jobs: Jobs = 1,
    feature_cache: Annotated[bool, typer.Option("--feature-cache", help="Fine-tune on the frozen CNN's output, "
                                                "computed once per CNN and language in OUT/feature_cache (the "
                                                "checkpoints of methods that freeze the CNN share it).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Forgetting and efficiency of continual pre-training: fine-tune every checkpoint on every language it has
    learnt (WER / CER, self-supervised loss) and time each method's run (cwav2vec 2.0 paper, Figs. 4-6)."""
    import json

    from wavadapt.decoding.files import arpa_unigrams
    from wavadapt.experiments.forgetting import ProbeConfig, evaluate_continual
    from wavadapt.training.finetune import AugmentConfig

    lms = {}
    for item in lm or ():
        language, _, path = item.partition("=")
        if not (language and path):
            raise WavadaptError(f"--lm {item!r}: give LANG=PATH, e.g. en=lm.en.arpa")
        lms[language] = Path(path)
        arpa_unigrams(lms[language])  # a bad file fails now, not after the first fine-tuning
    beam = _decoder_config(decoder or ("beam" if lms else None), beam_size, None, lm_weight, word_score, None)
    config = ProbeConfig(data, max_updates=max_updates, lr=lr, adapter_size=adapter_size,
                         max_seconds_per_batch=max_seconds_per_batch, train_split=train_split, test_split=test_split,
                         ssl_split=ssl_split, ssl_crop_seconds=ssl_crop_seconds, seed=seed,
                         augment=AugmentConfig(mask_time_prob=mask_time_prob, mask_feature_prob=mask_feature_prob),
                         decoder=beam if beam.kind == "beam" else None, lms=lms,
                         feature_cache=out / "feature_cache" if feature_cache else None)
    report = evaluate_continual(runs, config, out, target_loss, language or None,
                                echo=lambda line: typer.echo(line, err=True), jobs=jobs)  # stdout stays JSON
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_output else report.summary())


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Experiment directory: params.json, finetune/<lang>/<name>/, "
                                            "continual/<method>/, evaluate-continual/ (any may be missing).")],
    out: Annotated[Path | None, typer.Option(help="Where report.md and the plots go (default: RUN_DIR/report).")] = (
        None
    ),
    target_cer: Annotated[float, typer.Option(help="Validation CER (a fraction) whose first logged update each "
                                              "fine-tuning run reports.")] = 0.5,
) -> None:
    """Markdown report with PNG plots of an experiment: parameters, WER / CER, top-N curves, updates to a target
    CER, forgetting and continual pre-training efficiency; prints the fine-tuning results."""
    from wavadapt.experiments.report import write_report

    typer.echo(write_report(run_dir, out, target_cer).summary)


@app.command("run")
def run_recipe(
    recipe: Annotated[str, typer.Argument(help="A YAML recipe file, or the name of a packaged one (demo, "
                                          "thomas2022_adapters, kessler2022_cwav2vec): corpus, backbone, pretrain, "
                                          "params, finetune, continual, evaluate_continual, report.")],
    out: Annotated[Path, typer.Option(help="Experiment directory (the layout `wavadapt report` reads); finished "
                                      "runs in it are kept, so running again resumes.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the full plan, then run every step at toy "
                                          "scale (synthetic corpus, tiny backbone, 1 update) to check the "
                                          "wiring.")] = False,
    jobs: Jobs = 1,
) -> None:
    """Run an experiment grid from a YAML recipe: pre-training, fine-tuning sweeps, continual pre-training,
    their evaluation and the report."""
    from wavadapt.experiments.grid import load_experiment, recipe_path, run_experiment

    run_experiment(load_experiment(recipe_path(recipe)), out, dry_run=dry_run, echo=typer.echo, jobs=jobs)


# --- demo ---


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Experiment directory: corpus, runs, report.")] = Path("demo_out"),
    full: Annotated[bool, typer.Option(help="The larger synthetic grid (recipe demo_full: English + Spanish by "
                                       "espeak-ng, more updates, top-N sweeps, both languages fine-tuned), for a GPU "
                                       "or hours of CPU.")] = False,
    jobs: Annotated[int | None, typer.Option(help="Runs at a time, each a process of one thread (default: one per "
                                             "CPU core; one on a GPU).")] = None,
) -> None:
    """The packaged demo recipe end to end on 2 CPU cores, on real speech: fetch the Dutch and Czech actors of
    Fish Fillets NG from Debian's packages, fine-tune the shipped tiny wav2vec 2.0 that has heard Dutch
    (tiny-nl-real) with full fine-tuning / from scratch / adapters, continue it on Czech with the four continual
    methods, probe every checkpoint on Dutch, write the report."""
    import torch

    from wavadapt.experiments.grid import load_experiment, recipe_path, run_experiment

    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    run_experiment(load_experiment(recipe_path("demo_full" if full else "demo")), out, echo=typer.echo, jobs=jobs)


def main() -> None:
    """Console entry point: an error becomes one ``error: ...`` line on stderr and a non-zero exit status;
    ``--debug`` (or WAVADAPT_DEBUG=1) shows the Python traceback instead."""
    logger = logging.getLogger("wavadapt")
    if not any(isinstance(h, WarningLines) for h in logger.handlers):
        logger.addHandler(WarningLines())
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except WavadaptError as e:
        if _debug():
            raise
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    except Exception as e:  # a bug, or a failure wavadapt does not know yet: still one line, never a traceback
        if _debug():
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        typer.echo(f"error: {type(e).__name__}{': ' + reason if reason else ''} (run with --debug for the "
                   "traceback)", err=True)
        raise SystemExit(2) from None


def _debug() -> bool:
    return os.environ.get("WAVADAPT_DEBUG", "") not in ("", "0")
