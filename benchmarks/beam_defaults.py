"""Where the beam search's defaults come from: WER and CER of LM weight x word score on a finished demo's dev split.

Each fine-tuned model of the demo's language decodes the dev split once (greedy, and its log-probabilities kept);
every (LM weight, word score) pair then runs the beam search with the demo's word 3-gram (from the train
transcripts) on the same log-probabilities. Dev, not test: defaults chosen on the test split would flatter it.

    python benchmarks/beam_defaults.py --demo demo_out [--language nl] [--beam 50]
"""

import argparse
import itertools
import os
from pathlib import Path

import jiwer

from wavadapt.data.batching import filter_by_length
from wavadapt.data.corpora import open_corpus
from wavadapt.data.text import normalize_text
from wavadapt.decoding import DecoderConfig, decode_in_processes, texts
from wavadapt.inference.engine import decode_utterances, evaluating
from wavadapt.interop.loading import load_asr_model

WEIGHTS = (0.5, 1.0, 2.0)
SCORES = (-1.0, 0.0, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wavadapt demo --out DIR`")
    parser.add_argument("--language", default="nl")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--backbone", default="tiny-nl-real", help="what the adapter runs started from")
    args = parser.parse_args()
    utterances = filter_by_length(open_corpus(args.demo / "corpus" / args.language, args.split)).kept
    references = [normalize_text(u.text, args.language) for u in utterances]
    lm = args.demo / "lm" / f"{args.language}.arpa"
    print(f"{len(utterances)} {args.split} utterances; LM {lm}; beam {args.beam}")
    print(f"{'method':<10}{'LM weight':>10}{'word score':>11}{'WER':>9}{'CER':>9}")
    totals: dict[tuple[float, float], list[float]] = {}
    for run in sorted((args.demo / "finetune" / args.language).iterdir()):
        if not (run / "eval.json").is_file() or "scratch" in run.name:
            continue
        task_file = run / f"adapter.{args.language}.json"  # on the backbone the run trained, else the one it started on
        model = load_asr_model(run / "backbone", [task_file]) if (run / "backbone").is_dir() else load_asr_model(
            args.backbone, [task_file])
        with evaluating(model):
            greedy, emissions = decode_utterances(model, utterances, 60.0, keep_emissions=True)
        ids = [u.id for u in utterances]
        print(f"{run.name:<10}{'greedy':>21}{jiwer.wer(references, [greedy[i] for i in ids]):>9.2%}"
              f"{jiwer.cer(references, [greedy[i] for i in ids]):>9.2%}")
        for weight, score in itertools.product(WEIGHTS, SCORES):
            config = DecoderConfig("beam", beam_size=args.beam, lm=lm, lm_weight=weight, word_score=score)
            hypotheses = texts(decode_in_processes(config, model.vocabularies[model.active],
                                                   [emissions[i] for i in ids], os.cpu_count() or 1))
            wer, cer = jiwer.wer(references, hypotheses), jiwer.cer(references, hypotheses)
            totals.setdefault((weight, score), []).append(wer)
            print(f"{run.name:<10}{weight:>10g}{score:>11g}{wer:>9.2%}{cer:>9.2%}")
    (weight, score), wers = min(totals.items(), key=lambda item: sum(item[1]))
    print(f"best on average over the methods: LM weight {weight:g}, word score {score:g} "
          f"(WER {sum(wers) / len(wers):.2%})")


if __name__ == "__main__":
    main()
