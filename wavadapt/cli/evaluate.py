"""Commands that score models: evaluate (WER / CER of a corpus), evaluate-continual (forgetting)."""

from pathlib import Path
from typing import Annotated

import typer

from wavadapt.cli.options import (
    AdapterOption,
    BeamSize,
    CorpusArgument,
    DecoderKind,
    DeviceOption,
    Family,
    Jobs,
    LexiconOption,
    LmOption,
    LmWeight,
    ModelOption,
    RawFormatOption,
    TaskOption,
    TrustPickle,
    VocabOption,
    WordScore,
    asr_model,
    decoder_config,
)
from wavadapt.cli.program import app
from wavadapt.errors import WavadaptError


@app.command("evaluate")
def evaluate_corpus(
    data: CorpusArgument,
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
    lm_weight: LmWeight = None,
    word_score: WordScore = None,
    lexicon: LexiconOption = None,
    combine: Annotated[str, typer.Option(help="With --task auto or a+b: uniform, lid or entropy (see transcribe).")
                       ] = "lid",
    lid_threshold: Annotated[float, typer.Option(help="With --task auto: see transcribe.")] = 0.5,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Score a task on a corpus: WER / CER per language.

    Greedy decoding, or a beam search with an LM (then greedy's scores of the same logits beside it). Rates are
    corpus-level: edits over all reference words (characters). --language takes several languages, comma-separated
    (a corpus with a folder per language). --task lid scores a language identifier instead: its accuracy and
    confusion matrix.
    """
    import json

    from wavadapt.data.corpora import language_list, open_corpora
    from wavadapt.decoding import make_decoder
    from wavadapt.evaluation.corpus import evaluate
    from wavadapt.model.auto_routing import AUTO, AutoConfig
    from wavadapt.model.checkpoint import LANGUAGE_ID

    languages = language_list(language) if language else [None]
    utterances = open_corpora(data, split, languages, raw_format)
    routed = task is not None and (task in (AUTO, LANGUAGE_ID) or "+" in task)
    config = decoder_config(decoder, beam_size, lm, lm_weight, word_score, lexicon)  # a bad LM fails before loading
    asr = asr_model(model, adapter, task, family, trust_pickle, vocab, device)
    if task == LANGUAGE_ID:
        from wavadapt.evaluation.language_id import identify_corpus

        identified = identify_corpus(asr, utterances, max_seconds_per_batch)
        typer.echo(json.dumps(identified.to_dict(), indent=2) if json_output else identified.summary())
        return
    if not routed:
        make_decoder(config, asr.vocabularies[asr.active])  # a bad LM or lexicon fails before the decoding
    result = evaluate(asr, utterances, task=task if routed else None, max_seconds_per_batch=max_seconds_per_batch,
                      language=language if len(languages) == 1 else None, out_dir=out, decoder=config,
                      auto=AutoConfig(combine, lid_threshold))
    typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if json_output else result.summary())


@app.command("evaluate-continual")
def evaluate_continual_runs(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: the first task's pretrain run and each "
                                               "method's continual run (--keep-snapshots adds learning curves).")],
    data: Annotated[str, typer.Option(metavar="DATA", help="Labeled corpus with train / dev / test splits per "
                                      "language (any corpus `evaluate` reads).")],
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
    lm_weight: LmWeight = None,
    word_score: WordScore = None,
    jobs: Jobs = 1,
    feature_cache: Annotated[bool, typer.Option("--feature-cache", help="Fine-tune on the frozen CNN's output, "
                                                "computed once per CNN and language in OUT/feature_cache (the "
                                                "checkpoints of methods that freeze the CNN share it).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the evaluation in --out (its probes are "
                                            "deleted).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure forgetting and efficiency of continual runs.

    Fine-tunes every checkpoint of every run on every language it has learnt (WER / CER), measures the self-
    supervised loss on each, and times each method's run (the cwav2vec 2.0 paper, Figs. 4-6).
    """
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
    beam = decoder_config(decoder or ("beam" if lms else None), beam_size, None, lm_weight, word_score, None)
    config = ProbeConfig(data, max_updates=max_updates, lr=lr, adapter_size=adapter_size,
                         max_seconds_per_batch=max_seconds_per_batch, train_split=train_split, test_split=test_split,
                         ssl_split=ssl_split, ssl_crop_seconds=ssl_crop_seconds, seed=seed,
                         augment=AugmentConfig(mask_time_prob=mask_time_prob, mask_feature_prob=mask_feature_prob),
                         decoder=beam if beam.kind == "beam" else None, lms=lms,
                         feature_cache=out / "feature_cache" if feature_cache else None)
    report = evaluate_continual(runs, config, out, target_loss, language or None, overwrite=overwrite,
                                echo=lambda line: typer.echo(line, err=True), jobs=jobs)  # stdout stays JSON
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_output else report.summary())
