"""Language identification, automatic routing and combined adapters, measured in one run (one thread).

On the shipped tiny-nl-real backbone: top-2 adapters (the papers' top-N method, above the identifier's layer 2, so
routing shares the layers below) are trained for English, Spanish, German and Italian on espeak-ng corpora and for
Dutch on a finished demo's real recordings; an identifier for en/es/de/nl (Italian held out) on their training
splits. Then, on the test splits:

1. identification accuracy per language, and its cost as a fraction of a transcription forward of the same batch;
2. CER with ``auto`` routing against each file on its true task (oracle), and the throughput of the two;
3. the held-out Italian: CER of each single adapter (the best is the bar), of en+es+de combined uniformly, by the
   identifier's posterior, by entropy minimisation (EMEA), and of Italian's own adapter (the ceiling).

Trained adapters and the identifier are kept in ``--work`` and reused by the next run.

    python benchmarks/language_id.py --demo demo_out [--updates 1000] [--work /tmp/wavadapt-lid]
"""

import argparse
import time
from pathlib import Path

import torch

from wavadapt.data.corpora import open_corpus
from wavadapt.data.synth import synthesize_corpus
from wavadapt.evaluation.corpus import evaluate
from wavadapt.evaluation.language_id import identify_corpus
from wavadapt.inference.transcription import Request, transcribe_requests
from wavadapt.interop.loading import load_asr_model
from wavadapt.model.auto_routing import AutoConfig
from wavadapt.training.finetune import AugmentConfig, finetune
from wavadapt.training.language_id import train_language_id
from wavadapt.training.loop import TrainConfig
from wavadapt.training.methods import MethodConfig

BACKBONE = "tiny-nl-real"
SYNTH = ("en", "es", "de", "it")
IDENTIFIED = ("en", "es", "de", "nl")
HELD_OUT, DONORS = "it", ("en", "es", "de")
LAYER = 2
MINUTES = {"train": 5.0, "dev": 0.5, "test": 1.5}


def corpora(work: Path, demo: Path) -> dict[str, dict[str, list]]:
    synth = work / "synth"
    if not (synth / "corpus.json").exists():
        synthesize_corpus(synth, SYNTH, minutes=MINUTES, seed=0, progress=False)
    found = {lang: {s: open_corpus(synth, s, lang) for s in MINUTES} for lang in SYNTH}
    found["nl"] = {s: open_corpus(demo / "corpus" / "nl", s)[:300 if s == "train" else 80] for s in MINUTES}
    return found


def trained_task(work: Path, language: str, data: dict[str, list], updates: int) -> Path:
    out = work / "tasks" / language
    if not (out / f"adapter.{language}.json").exists():
        model = load_asr_model(BACKBONE, [])
        config = TrainConfig(max_updates=updates, lr=1e-2, max_seconds_per_batch=10, progress=False)  # as the demo
        finetune(model, language, data["train"], MethodConfig("top-n-adapters", top_n=2, adapter_size=64), config, out,
                 augment=AugmentConfig.for_size(model.hidden_size), overwrite=True, feature_cache=work / "cache")
    return out / f"adapter.{language}.json"


def trained_identifier(work: Path, data: dict[str, dict[str, list]], updates: int) -> Path:
    out = work / "lid"
    if not (out / "adapter.lid.json").exists():
        model = load_asr_model(BACKBONE, [])
        train = [u for lang in IDENTIFIED for u in data[lang]["train"]]
        train_language_id(model, list(IDENTIFIED), train, TrainConfig(max_updates=updates, lr=1e-3,
                          max_seconds_per_batch=10, progress=False), out, LAYER, overwrite=True)
    return out / "adapter.lid.json"


def cpu_seconds(run) -> tuple[object, float]:
    start = time.process_time()
    result = run()
    return result, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `wavadapt demo --out DIR`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wavadapt-lid"))
    parser.add_argument("--updates", type=int, default=1000, help="updates per adapter task and for the identifier")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = corpora(args.work, args.demo)
    tasks = {lang: trained_task(args.work, lang, data[lang], args.updates) for lang in (*SYNTH, "nl")}
    lid = trained_identifier(args.work, data, args.updates)
    model = load_asr_model(BACKBONE, [tasks[lang] for lang in IDENTIFIED] + [lid])
    test = [u for lang in IDENTIFIED for u in data[lang]["test"]]
    print(f"backbone {BACKBONE}; top-2 adapters and an identifier at layer {LAYER}, {args.updates} updates each; "
          f"test: {len(test)} utterances in {', '.join(IDENTIFIED)}; one thread")

    identified = identify_corpus(model, test)
    print(identified.summary())
    requests = [Request(u.path, u.language) for u in test]
    _, oracle_time = cpu_seconds(lambda: transcribe_requests(model, requests))
    _, lid_time = cpu_seconds(lambda: identify_corpus(model, test, max_seconds_per_batch=12.5))  # as transcription
    print(f"identification costs {lid_time / oracle_time:.2f}x of transcribing the same files (both batched)")

    auto_requests = [Request(u.path, "auto") for u in test]
    routed, auto_time = cpu_seconds(lambda: transcribe_requests(model, auto_requests))
    print(f"throughput of auto against the oracle task: {oracle_time / auto_time:.2f}x "
          f"({oracle_time:.1f} and {auto_time:.1f} CPU s); routed to the true task: "
          f"{sum(t.task == u.language for t, u in zip(routed, test, strict=True)) / len(test):.1%}")
    print(f"{'language':>10}{'oracle CER':>12}{'auto CER':>10}")
    for lang in IDENTIFIED:
        oracle = evaluate(model, data[lang]["test"], task=lang)
        auto = evaluate(model, data[lang]["test"], task="auto")
        print(f"{lang:>10}{oracle.cer:>12.2%}{auto.cer:>10.2%}  ({auto.cer / max(oracle.cer, 1e-9):.2f}x)")

    italian = data[HELD_OUT]["test"]
    print(f"held-out {HELD_OUT} ({len(italian)} test utterances), adapters of {', '.join(DONORS)}:")
    single = {lang: evaluate(model, italian, task=lang, language=HELD_OUT).cer for lang in DONORS}
    for lang, cer in single.items():
        print(f"  {lang} adapter alone: CER {cer:.2%}")
    combination = "+".join(DONORS)
    for combine in ("uniform", "lid", "entropy"):
        result = evaluate(model, italian, task=combination, language=HELD_OUT, auto=AutoConfig(combine=combine))
        print(f"  {combination} {combine}: CER {result.cer:.2%} (best single {min(single.values()):.2%})")
    ceiling = load_asr_model(BACKBONE, [tasks[HELD_OUT]])
    print(f"  {HELD_OUT}'s own adapter (the ceiling): CER {evaluate(ceiling, italian, task=HELD_OUT).cer:.2%}")


if __name__ == "__main__":
    main()
