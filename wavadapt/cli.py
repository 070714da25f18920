"""`wavadapt <command>`: each command is a typed function whose signature is its command line."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.errors import WavadaptError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Bottleneck adapters for wav2vec 2.0 / HuBERT / WavLM: adapter transfer and continual pre-training.",
)


# --- data commands ---


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="A corpus directory or manifest (see `open_corpus`).")],
    split: Annotated[str | None, typer.Option(help="Split to check (default: the only one, else train).")] = None,
    language: Annotated[str | None, typer.Option(help="Language directory / transcript normalisation.")] = None,
    vocab: Annotated[Path | None, typer.Option(help="vocab.json or dict.ltr.txt: report unknown characters.")] = None,
    min_seconds: Annotated[float, typer.Option(help="Shorter files are reported.")] = 0.5,
    max_seconds: Annotated[float, typer.Option(help="Longer files are reported.")] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Decode every file of a corpus and list each problem file; exit status 1 if any is unusable."""
    import json

    from wavadapt.data.check import check_corpus
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import Vocabulary

    utterances = open_corpus(data, split, language)
    vocabulary = None
    if vocab is not None:
        vocabulary = Vocabulary.load_json(vocab) if vocab.suffix == ".json" else Vocabulary.from_fairseq_dict(vocab)
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


# --- model commands ---


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="A preset (tiny, base, large), a Hugging Face checkpoint directory or a fairseq .pt.")
    ],
    family: Annotated[str | None, typer.Option(help="Family of a preset: wav2vec2 (default), hubert or wavlm.")] = None,
    pretraining: Annotated[
        bool, typer.Option("--pretraining", help="Include wav2vec 2.0's quantizer and projections.")
    ] = False,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow reading a fairseq .pt: a pickle, which can run code.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise a backbone's architecture and count its parameters by component."""
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
    typer.echo(json.dumps(summary, indent=2) if json_output else format_description(summary))


# --- demo ---


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="Where the corpus, vocabularies and results go.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Seed of the corpus and the model.")] = 0,
) -> None:
    """Run the end-to-end demo on a freshly synthesised English + Spanish corpus."""
    from wavadapt.demo import run_demo

    run_demo(out_dir, seed, echo=typer.echo)


def main() -> None:
    """Console entry point: known errors become one line on stderr and exit status 1."""
    try:
        app()
    except WavadaptError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
