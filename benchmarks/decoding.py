"""CTC decoding time per audio second (issue 14): greedy, flashlight beam search (no LM, word 3-gram, 3-gram with a
lexicon) and pyctcdecode's beam search on the same logits, in one run; then 1 process against 2 and 2 threads.
With ``--demo DIR`` (a finished `wavadapt demo --out DIR`), the same decoders on the demo's real English test
logits of each fine-tuning method, with the demo's own 3-gram (from the train transcripts): WER and time of each.

Logits are synthetic with a real model's shape: 50 frames per second over a 32-token character vocabulary, the
CTC path of English-like sentences (letters held 1-3 frames, blanks between) under Gaussian noise, so the beam has
real ambiguity to search. The 3-gram is an ARPA written here from the same sentences (add-one unigrams, maximum-
likelihood 2- and 3-grams, a constant backoff: crude but valid for KenLM). pyctcdecode runs without an LM (its
KenLM needs the kenlm Python module, not a dependency).

    python benchmarks/decoding.py [--seconds 120] [--beam 50] [--demo demo_out]
"""

import argparse
import math
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import torch

from wavadapt.data.text import Vocabulary
from wavadapt.decoding import DecoderConfig, decode_in_processes, make_decoder, texts

FRAMES_PER_SECOND = 50
WORDS = ("the a of and to in is was he it that for on with as his at by they this from had not but what all were "
         "when we there can an your which their said if do will each about how up out them then she many some so "
         "these would other into has more her two like him see time could no make than first been its who now people "
         "my made over did down only way find use may water long little very after words called just where most know")


def sentences(rng: np.random.Generator, count: int) -> list[str]:
    vocabulary = WORDS.split()
    weights = 1 / np.arange(1, len(vocabulary) + 1)  # Zipf-like
    weights /= weights.sum()
    return [" ".join(rng.choice(vocabulary, size=int(rng.integers(6, 14)), p=weights)) for _ in range(count)]


def write_trigram_arpa(path: Path, corpus: list[str]) -> None:
    counts = [Counter() for _ in range(3)]
    for line in corpus:
        words = ["<s>", *line.split(), "</s>"]
        for n in range(3):
            counts[n].update(tuple(words[i : i + n + 1]) for i in range(len(words) - n))
    total = sum(counts[0].values())
    unigrams = {**{w: c for (w,), c in counts[0].items()}, "<unk>": 0}
    lines = ["\\data\\", *(f"ngram {n + 1}={len(unigrams) if n == 0 else len(counts[n])}" for n in range(3)), "",
             "\\1-grams:"]
    backoff = math.log10(0.4)
    for word, count in unigrams.items():
        logp = -99.0 if word == "<s>" else math.log10((count + 1) / (total + len(unigrams)))
        lines.append(f"{logp:.5f}\t{word}\t{backoff:.5f}")
    for n in (1, 2):
        lines += ["", f"\\{n + 1}-grams:"]
        for gram, count in counts[n].items():
            logp = math.log10(count / counts[n - 1][gram[:-1]])
            lines.append(f"{logp:.5f}\t{' '.join(gram)}" + (f"\t{backoff:.5f}" if n == 1 else ""))
    path.write_text("\n".join([*lines, "", "\\end\\", ""]))


def synthetic_logits(rng: np.random.Generator, vocab: Vocabulary, text: str, noise: float) -> np.ndarray:
    path = [vocab.blank_id]
    for i in vocab.encode(text):
        path += [i] * int(rng.integers(1, 4)) + [vocab.blank_id] * int(rng.integers(1, 4))
    logits = rng.normal(0.0, noise, (len(path), len(vocab))).astype(np.float32)
    logits[np.arange(len(path)), path] += 5.0
    return logits


def timed(label: str, audio_seconds: float, run, truth: list[str] | None = None):
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    wer = "" if truth is None else f"  WER {100 * jiwer.wer(truth, result):5.1f}%"
    print(f"{label:<34} {1000 * elapsed / audio_seconds:8.2f} ms per audio second{wer}")
    return result, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="audio seconds of logits to decode")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--noise", type=float, default=1.5)
    parser.add_argument("--demo", type=Path, help="also decode a finished demo's English test logits")
    parser.add_argument("--lm-weight", type=float, default=1.0, help="with --demo")
    parser.add_argument("--word-score", type=float, default=1.0, help="with --demo")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.demo:
        return demo_logits(args.demo, args.beam, args.lm_weight, args.word_score)
    rng = np.random.default_rng(0)
    corpus = sentences(rng, 2000)
    vocab = Vocabulary.build(corpus + ["abcdefghijklmnopqrstuvwxyz'"])
    utterances, truth, frames = [], [], 0
    while frames < args.seconds * FRAMES_PER_SECOND:
        truth.append(sentences(rng, 1)[0])
        utterances.append(synthetic_logits(rng, vocab, truth[-1], args.noise))
        frames += len(utterances[-1])
    emissions = [np.ascontiguousarray(torch.from_numpy(x).log_softmax(-1).numpy()) for x in utterances]
    seconds = frames / FRAMES_PER_SECOND
    print(f"{len(emissions)} utterances, {seconds:.0f} audio seconds, {len(vocab)} tokens, beam {args.beam}")
    with tempfile.TemporaryDirectory() as tmp:
        arpa, lexicon = Path(tmp) / "3gram.arpa", Path(tmp) / "lexicon.txt"
        write_trigram_arpa(arpa, corpus)
        lexicon.write_text("".join(f"{w}\n" for w in sorted(set(WORDS.split()))))
        configs = {
            "greedy": DecoderConfig("greedy"),
            "beam, no LM": DecoderConfig("beam", beam_size=args.beam),
            "beam, no LM, log_add": DecoderConfig("beam", beam_size=args.beam, log_add=True),
            "beam + 3-gram (lexicon-free)": DecoderConfig("beam", beam_size=args.beam, lm=arpa),
            "beam + 3-gram + lexicon": DecoderConfig("beam", beam_size=args.beam, lm=arpa, lexicon=lexicon),
        }
        for label, config in configs.items():
            decoder = make_decoder(config, vocab)
            run = lambda d=decoder: texts([d.decode_emissions(e) for e in emissions])  # noqa: E731
            _, elapsed = timed(label, seconds, run, truth)
            if label == "beam, no LM, log_add":
                flashlight_time = elapsed
        pyctcdecode_time = compare_pyctcdecode(vocab, emissions, seconds, args.beam, truth)
        print(f"pyctcdecode / flashlight (no LM, log_add): {pyctcdecode_time / flashlight_time:.1f}x")
        compare_parallel(DecoderConfig("beam", beam_size=args.beam, lm=arpa), vocab, emissions, seconds)


def compare_pyctcdecode(vocab, emissions, seconds, beam, truth) -> float:
    from pyctcdecode import build_ctcdecoder

    labels = ["" if i == vocab.blank_id else " " if t == "|" else t for i, t in enumerate(vocab.tokens)]
    labels = [t if t not in ("<s>", "</s>", "<unk>") else f"\u2047{i}" for i, t in enumerate(labels)]
    decoder = build_ctcdecoder(labels)
    _, elapsed = timed("pyctcdecode beam, no LM", seconds,
                       lambda: [" ".join(decoder.decode(e, beam_width=beam).split()) for e in emissions], truth)
    return elapsed


def compare_parallel(config, vocab, emissions, seconds) -> None:
    """flashlight holds the GIL while decoding: 2 threads should take as long as 1; 2 processes about half."""
    decoder = make_decoder(config, vocab)
    timed("3-gram, 1 process", seconds, lambda: [decoder.decode_emissions(e) for e in emissions])
    decoders = [make_decoder(config, vocab) for _ in range(2)]
    halves = [emissions[0::2], emissions[1::2]]
    with ThreadPoolExecutor(2) as pool:
        timed("3-gram, 2 threads", seconds,
              lambda: list(pool.map(lambda i: [decoders[i].decode_emissions(e) for e in halves[i]], range(2))))
    timed("3-gram, 2 processes (with start)", seconds, lambda: decode_in_processes(config, vocab, emissions, 2))


def demo_logits(demo: Path, beam: int, lm_weight: float, word_score: float) -> None:
    """Each English fine-tuning run of a demo: its test logits computed once, then decoded by each decoder."""
    from wavadapt.data.audio import read_audio
    from wavadapt.data.corpora import open_corpus
    from wavadapt.data.text import normalize_text
    from wavadapt.decoding import log_probs
    from wavadapt.experiments.grid import load_experiment, recipe_path
    from wavadapt.inference.engine import evaluating, window_outputs
    from wavadapt.interop.loading import load_asr_model

    backbone = load_experiment(recipe_path("demo")).backbone
    test = [u for u in open_corpus(demo / "corpus", "test", "en") if u.text]
    truth = [normalize_text(u.text, "en") for u in test]
    lm = demo / "lm" / "en.arpa"
    for run in sorted((demo / "finetune" / "en").iterdir()):
        model = load_asr_model(run / "backbone" if (run / "backbone").is_dir() else backbone,
                               [run / "adapter.en.json"])
        vocab = model.vocabularies["en"]
        with evaluating(model):
            emissions = [np.concatenate([log_probs(o, vocab)[0] for o in window_outputs(model, read_audio(u.path),
                                                                                       None)]) for u in test]
        seconds = sum(len(e) for e in emissions) / FRAMES_PER_SECOND
        print(f"\n{run.name}: {len(test)} test utterances, {seconds:.0f} audio seconds")
        configs = {
            "greedy": DecoderConfig("greedy"),
            "beam, no LM": DecoderConfig("beam", beam_size=beam),
            "beam + 3-gram": DecoderConfig("beam", beam_size=beam, lm=lm, lm_weight=lm_weight, word_score=word_score),
        }
        for label, config in configs.items():
            decoder = make_decoder(config, vocab)
            timed(label, seconds, lambda d=decoder, x=emissions: texts([d.decode_emissions(e) for e in x]), truth)
        compare_pyctcdecode(vocab, emissions, seconds, beam, truth)


if __name__ == "__main__":
    main()
