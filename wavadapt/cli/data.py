"""Commands that read, check and build corpora: check, synth, prepare, vocab, lm."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    CORPUS_HELP,
    CorpusArgument,
    Progress,
    RawFormatOption,
)
from wavadapt.cli.program import app
from wavadapt.errors import WavadaptError


@app.command()
def check(
    data: CorpusArgument,
    split: Annotated[str | None, typer.Option(help="Split to check (default: the only one, else train).")] = None,
    language: Annotated[str | None, typer.Option(help="Language directory / transcript normalisation.")] = None,
    vocab: Annotated[Path | None, typer.Option(help="vocab.json, dict.ltr.txt or a task file "
                                               "(adapter.<task>.json): report unknown characters.")] = None,
    min_seconds: Annotated[float, typer.Option(help="Shorter files are reported.")] = 0.5,
    max_seconds: Annotated[float, typer.Option(help="Longer files are reported.")] = 30.0,
    raw_format: RawFormatOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    progress: Progress = True,
) -> None:
    """Find the unusable files of a corpus.

    Every file is decoded; unreadable, truncated, too short or too long files, missing transcripts, foreign
    letters and characters normalisation drops are each named. Exit status 1 if any file is unusable.
    """
    import json

    from wavadapt.data.check import check_corpus
    from wavadapt.data.corpora import corpus_languages, open_corpora
    from wavadapt.data.text import Vocabulary

    languages = [language] if language else corpus_languages(data) or [None]  # every language of a corpus root
    utterances = open_corpora(data, split, languages, raw_format)
    vocabulary = Vocabulary.load(vocab) if vocab is not None else None
    report = check_corpus(utterances, vocabulary, min_seconds, max_seconds, progress=progress and not json_output)
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
    progress: Progress = True,
) -> None:
    """Synthesise a small multilingual corpus with espeak-ng.

    Speaks real sentences (the fortunes packages) with espeak-ng voices: English in the LibriSpeech layout, the
    others in Common Voice's. For tests and tiny experiments: synthetic voices are not real speech.
    """
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
    """Fetch a real transcribed corpus from Debian packages.

    Downloads the .deb packages with apt-get (or reads them from --packages), pairs each recording with its
    transcript, splits by scene so no line is in two splits, and writes <split>.tsv manifests that every command
    reads.
    """
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
    source: Annotated[str, typer.Argument(metavar="DATA", help=f"{CORPUS_HELP} Or a .txt file, one transcript per "
                                          "line.")],
    language: Annotated[str, typer.Option(help="Language whose normalisation applies (en, es, de, it, ...).")],
    out: Annotated[Path, typer.Option(help="Where to write the HF vocab.json.")] = Path("vocab.json"),
    fairseq_dict: Annotated[Path | None, typer.Option(help="Also write fairseq's dict.ltr.txt here.")] = None,
    split: Annotated[str, typer.Option(help="Corpus split whose transcripts are counted.")] = "train",
) -> None:
    """Build a CTC character vocabulary from transcripts.

    Letters by descending frequency after the language's normalisation, with CTC's blank, padding and word
    delimiter; writes transformers' vocab.json (and fairseq's dict.ltr.txt).
    """
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import SPECIAL_TOKENS, Vocabulary

    if source.endswith(".txt") and Path(source).is_file():
        transcripts = Path(source).read_text(encoding="utf-8").splitlines()
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
    corpus: Annotated[str | None, typer.Option(metavar="DATA", help="Also the transcripts of a corpus (any that "
                                               "`evaluate` reads) ...")] = None,
    split: Annotated[str, typer.Option(help="... of this split (never the test split you will score).")] = "train",
    order: Annotated[int, typer.Option(help="n-gram order.")] = 3,
    out: Annotated[Path, typer.Option(help="Where to write the ARPA model.")] = Path("lm.arpa"),
    discount_fallback: Annotated[bool, typer.Option("--discount-fallback", help="Fixed discounts (0.5, 1, 1.5) "
                                                    "where the text is too small for Kneser-Ney's estimate "
                                                    "(lmplz's --discount_fallback).")] = False,
) -> None:
    """Build a word n-gram LM (ARPA) for beam search.

    Interpolated modified Kneser-Ney, as KenLM's lmplz estimates it, from text files and / or a corpus split's
    transcripts, normalised as the transcripts are.
    """
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


@app.command()
def shard(
    data: CorpusArgument,
    out: Annotated[Path, typer.Option(help="Folder to write the shards into.")],
    split: Annotated[str, typer.Option(help="Split(s) to write, comma-separated: train,dev,test.")] = "train",
    language: Annotated[str | None, typer.Option(help="Language directory / the language of the records.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="webdataset (OUT/<split>-NNNNNN.tar: each "
                                               "utterance's audio as stored and a .json of id, text, language, "
                                               "speaker) or shar (Lhotse Shar in OUT/<split>/, audio as FLAC).")
                             ] = "webdataset",
    shard_size: Annotated[int, typer.Option(help="Utterances per shard.")] = 1000,
    raw_format: RawFormatOption = None,
) -> None:
    """Write a corpus as WebDataset or Lhotse Shar shards.

    Any corpus wavadapt reads; what `finetune` and `pretrain` then read back, also behind a URL (WebDataset). An
    unreadable file is named and left out.
    """
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.stores.lhotse_cuts import write_shar
    from wavadapt.data.stores.tar_shards import write_shards

    if output_format not in ("webdataset", "shar"):
        raise WavadaptError(f"--format {output_format!r}: choose webdataset or shar")
    if shard_size < 1:
        raise WavadaptError(f"--shard-size {shard_size}: give 1 or more utterances per shard")
    for name in [s.strip() for s in split.split(",") if s.strip()]:
        utterances = open_corpus(data, name, language, raw_format)
        files, written = (write_shards(utterances, out, name, shard_size) if output_format == "webdataset"
                          else write_shar(utterances, out / name, shard_size))
        left_out = f" ({len(utterances) - written} unreadable, left out)" if written < len(utterances) else ""
        typer.echo(f"{name}: {written} utterances{left_out} -> {len(files)} files in {out}")
