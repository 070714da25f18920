"""Mixed-language MMS inference: transformers' adapter swaps against wavadapt's per-row routing, in one run.

An MMS directory (transformers' ``Wav2Vec2ForCTC`` with ``adapter_attn_dim``: model.safetensors, one
adapter.<lang>.safetensors per language, a nested vocab.json) is written to a temp dir with transformers' own
``_get_adapters``, ``save_pretrained`` and safetensors: a pre-LN backbone, N languages with random adapters and heads
over vocabularies of different sizes. A stream of utterances (1-6 s of synthetic audio, seeded, each in a language
drawn uniformly) is decoded four ways, greedily (argmax per frame):

    A   transformers in arrival order: one Wav2Vec2ForCTC; ``load_adapter(lang)`` whenever the language changes (it
        reads the language's file and copies its adapter layers and lm_head into the model), a forward per utterance.
    A'  transformers grouped: the stream sorted by language, ``load_adapter`` once per language, batches of up to B
        utterances of one language. The best a transformers user can do offline; arrival order (latency) is lost.
    B   wavadapt: ``load_mms_dir`` once; the stream in arrival order cut into batches of B consecutive utterances of
        mixed languages, each one ``forward_mixed`` (each row runs its language's adapters and head).
    B1  wavadapt, one utterance per ``forward_mixed`` in arrival order: A without the swaps.

Inputs are what transformers' feature extractor of the directory makes (do_normalize, zero padding, attention mask:
the CNN is layer-norm), computed before timing; a path's time is its forwards + argmax over the whole stream, plus
``load_adapter`` for A and A'. Text decoding is left out of the timing (the same CTC collapse for every path).
Exactness: every utterance's argmax path under A', B and B1 must equal A's over its valid frames, and B's
transcripts (``greedy_decode``) transformers' ``tokenizer.decode`` of A's paths; the script exits 1 otherwise.

Speed: audio seconds per second (x real time) of each path over the stream; the paths run round-robin in a rotating
order, --repeats passes each, the median counts; wall clock and process CPU time (use CPU time on a busy machine:
one thread's CPU time does not grow with other processes' load). B/A > 1: wavadapt serves the mixed stream in
arrival order that much faster than transformers can in that order (batching + no swaps); B/A' compares it with
transformers allowed to reorder the stream (both pay padding: batches are not length-sorted); B1/A is the swaps'
cost against the per-row routing's alone. On one CPU thread batching buys little (a batch-of-1 forward already runs
long convolutions and matrix products) while padding costs its share, so B/A < 1 there says nothing of a GPU.

Memory on paper: parameter counts of the facebook/mms-1b-all shape (1280 hidden, 48 layers, adapter_attn_dim 16)
from a meta-device model (nothing allocated): one backbone + N adapter sets + heads (wavadapt) against N loaded
models (transformers without swapping), for N = 8 and all 1162 MMS languages, at fp32 and fp16.

    python benchmarks/mms.py                              # tiny pre-LN shape, 8 languages, 64 utterances
    python benchmarks/mms.py --batch-size 16 --repeats 5
    python benchmarks/mms.py --shape small                # a wider, deeper CPU shape (16M parameters, slower)
    python benchmarks/mms.py --shape large --utterances 8 # the Large preset (300M): slow on CPU
"""

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.data.text import Vocabulary
from wavadapt.interop.mms import load_mms_dir
from wavadapt.model.backbone import make_config, quiet_transformers

PRE_LN = {"feat_extract_norm": "layer", "conv_bias": True, "do_stable_layer_norm": True}
SHAPES = {  # CPU shapes; "large" is the Large preset (300M), for a handful of utterances only
    "tiny": dict(preset="tiny", **PRE_LN),
    "small": dict(preset="tiny", hidden_size=384, num_hidden_layers=8, num_attention_heads=6, intermediate_size=1536,
                  conv_dim=(256,) * 7, **PRE_LN),
    "large": dict(preset="large"),
}
# facebook/mms-1b-all: the Large CNN, 1280 hidden, 48 pre-LN layers, adapter_attn_dim 16, 1162 languages.
MMS_1B = dict(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120,
              adapter_attn_dim=16)
MMS_LANGUAGES = 1162
NAMES = ("eng", "deu", "fra", "spa", "ita", "por", "pol", "nld", "swe", "tur", "fin", "ces", "ron", "hun", "dan", "vie")
LETTERS = "etaoinshrdlcumwfgypbvkjxqzéèàüöäçñ"
PATHS = ("A", "A'", "B", "B1")


def count(params) -> int:
    return sum(p.numel() for p in params)


def vocabularies(n: int) -> dict[str, Vocabulary]:
    """N languages with vocabularies of 10 .. 34 letters, so that each needs its own head size."""
    names = [*NAMES, *(f"x{i:03d}" for i in range(len(NAMES), n))][:n]
    return {lang: Vocabulary.build([" ".join(LETTERS[: 10 + (3 * i) % 25])]) for i, lang in enumerate(names)}


def write_mms_dir(path: Path, config, vocabs: dict[str, Vocabulary], seed: int = 0) -> Path:
    """MMS's layout: model.safetensors holds the backbone + the first language's adapter layers and lm_head, every
    language its adapter.<lang>.safetensors (what ``_get_adapters`` returns), vocab.json one vocabulary each."""
    torch.manual_seed(seed)
    main = next(iter(vocabs))
    config.vocab_size = len(vocabs[main])
    model = Wav2Vec2ForCTC(config).eval()
    tensors = {}
    for lang, vocab in vocabs.items():
        model.lm_head = nn.Linear(config.hidden_size, len(vocab))
        with torch.no_grad():  # far from identity, so that a wrong adapter shows
            for p in model._get_adapters().values():
                p.normal_(std=0.3)
            model.lm_head.bias[1:4] = -1e4  # never <s> </s> <unk>: transformers spells them out, wavadapt drops them
        tensors[lang] = {k: p.detach().clone() for k, p in model._get_adapters().items()}
        save_file(tensors[lang], path / f"adapter.{lang}.safetensors")
    model.lm_head = nn.Linear(config.hidden_size, len(vocabs[main]))
    model.load_state_dict(tensors[main], strict=False)
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps({lang: {t: i for i, t in enumerate(v.tokens)}
                                                 for lang, v in vocabs.items()}))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), target_lang=main)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_stream(n: int, languages: list[str], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(language, waveform) per utterance: 1-6 s of a few drifting tones under a syllable-rate envelope + noise."""
    rng = np.random.default_rng(seed)
    stream = []
    for _ in range(n):
        t = np.arange(int(rng.uniform(1, 6) * SAMPLE_RATE)) / SAMPLE_RATE
        tones = sum(np.sin(2 * np.pi * (f + 30 * np.sin(2 * np.pi * 0.7 * t)) * t) for f in rng.uniform(100, 3000, 3))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 2 * np.pi))
        wave = envelope * tones + 0.3 * rng.standard_normal(t.size)
        stream.append((languages[rng.integers(len(languages))], wave.astype(np.float32)))
    return stream


def featurize(extractor, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised, zero-padded input_values and attention_mask, as the directory's feature extractor makes them."""
    out = extractor(waves, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    return out["input_values"], out["attention_mask"]


def batches(stream, extractor, order: list[int], size: int, one_language: bool) -> list[tuple]:
    """(indices, languages, input_values, attention_mask) per batch of up to ``size`` utterances of ``order``;
    ``one_language``: a batch ends where the language changes."""
    cut, current = [], []
    for i in order:
        if current and (len(current) == size or (one_language and stream[i][0] != stream[current[0]][0])):
            cut.append(current)
            current = []
        current.append(i)
    cut.append(current)
    return [(ids, [stream[i][0] for i in ids], *featurize(extractor, [stream[i][1] for i in ids])) for ids in cut]


def padding_fraction(plan: list[tuple]) -> float:
    return 1 - sum(int(mask.sum()) for *_, mask in plan) / sum(mask.numel() for *_, mask in plan)


def rows(best: torch.Tensor, frames: torch.Tensor, ids: list[int], paths: dict) -> None:
    for row, i in enumerate(ids):
        paths[i] = best[row, : frames[row]]


def run_transformers(model: Wav2Vec2ForCTC, plan: list[tuple]) -> tuple[dict, float, int]:
    """A / A': load_adapter where the language changes, a forward per batch; the paths, the time in load_adapter and
    the number of swaps."""
    paths, swap_seconds, swaps = {}, 0.0, 0
    with torch.inference_mode():
        for ids, langs, values, mask in plan:
            if langs[0] != model.target_lang:
                start = time.perf_counter()
                model.load_adapter(langs[0])
                swap_seconds += time.perf_counter() - start
                swaps += 1
            best = model(values, attention_mask=mask).logits.argmax(-1)
            rows(best, model._get_feat_extract_output_lengths(mask.sum(-1)), ids, paths)
    return paths, swap_seconds, swaps


def run_wavadapt(model, plan: list[tuple]) -> tuple[dict, list]:
    """B: one forward_mixed per batch; the paths and the outputs (for the transcripts, decoded untimed)."""
    paths, outputs = {}, []
    with torch.inference_mode():
        for ids, langs, values, mask in plan:
            out = model.forward_mixed(values, langs, mask)
            rows(out.logits.argmax(-1), out.lengths, ids, paths)
            outputs.append(out)
    return paths, outputs


def timed_passes(run: dict, repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Every path (``run``: name -> (runner, plan)) ``repeats`` times over its whole plan, round-robin in a rotating
    order, after ``warmup`` untimed batches each; wall and CPU seconds per pass, the first pass's results, and the
    transformers paths' time in load_adapter and number of swaps."""
    timings = {name: {"wall": [], "cpu": [], "swap": [], "swaps": []} for name in run}
    for runner, plan in run.values():
        runner(plan[:warmup])
    names = list(run)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runner, plan = run[name]
            wall, cpu = time.perf_counter(), time.process_time()
            result = runner(plan)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            t = timings[name]
            t.setdefault("result", result)
            t["wall"].append(wall)
            t["cpu"].append(cpu)
            if len(result) == 3:  # a transformers path: (paths, load_adapter seconds, swaps)
                t["swap"].append(result[1])
                t["swaps"].append(result[2])
    return timings


def check(stream, plans: dict, timings: dict, mms: Path, model) -> int:
    """Mismatched utterances: every path's argmax paths against A's, B's transcripts against transformers' decode."""
    reference = timings["A"]["result"][0]
    bad = 0
    for name in PATHS[1:]:
        paths = timings[name]["result"][0]
        wrong = [i for i in reference if not torch.equal(paths[i], reference[i])]
        print(f"  {name:<3} argmax paths equal to A's: {len(reference) - len(wrong)}/{len(reference)}"
              + (f"  MISMATCHED utterances {wrong[:10]}" if wrong else ""))
        bad += len(wrong)
    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(mms)
    texts = {}
    for (ids, langs, *_), out in zip(plans["B"], timings["B"]["result"][1], strict=True):
        texts |= dict(zip(ids, model.greedy_decode(out, langs), strict=True))
    wrong = []
    for i, (lang, _) in enumerate(stream):
        tokenizer.set_target_lang(lang)
        if texts[i] != " ".join(tokenizer.decode(reference[i]).split()):
            wrong.append(i)
    print(f"  B   transcripts (greedy_decode) equal to transformers' tokenizer.decode of A's paths: "
          f"{len(stream) - len(wrong)}/{len(stream)} ({sum(map(len, texts.values()))} characters)"
          + (f"  MISMATCHED utterances {wrong[:10]}" if wrong else ""))
    print(f"mismatches: {bad + len(wrong)}")
    return bad + len(wrong)


def report_speed(plans: dict, timings: dict, audio_seconds: float) -> None:
    print(f"\n{'path':<6}{'wall s':>8}{'x real':>8}{'CPU s':>8}{'x real':>8}{'swaps':>7}{'load_adapter s':>16}"
          f"{'batches':>9}{'padding':>9}")
    speed = {}
    for name in PATHS:
        t = timings[name]
        wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
        speed[name] = {"wall": audio_seconds / wall, "cpu": audio_seconds / cpu}
        swaps = f"{0:>7}{'-':>16}"
        if t["swaps"]:
            swap = statistics.median(t["swap"])
            swaps = f"{statistics.median(t['swaps']):>7.0f}{swap:>9.3f} ({swap / wall:>4.0%})"
        print(f"{name:<6}{wall:>8.2f}{speed[name]['wall']:>7.1f}x{cpu:>8.2f}{speed[name]['cpu']:>7.1f}x{swaps}"
              f"{len(plans[name]):>9}{padding_fraction(plans[name]):>9.0%}")
    spread = ", ".join(f"{n} {min(t['wall']):.2f}-{max(t['wall']):.2f}" for n, t in timings.items())
    print(f"wall-clock range of the timed passes (s): {spread}")
    for name, base in (("B", "A"), ("B", "A'"), ("B1", "A")):
        print(f"{name}/{base:<3} (audio s per s): wall {speed[name]['wall'] / speed[base]['wall']:.2f}, "
              f"CPU {speed[name]['cpu'] / speed[base]['cpu']:.2f}")


def paper_counts(vocab_size: int) -> dict[str, int]:
    """Parameters of the mms-1b-all shape from a meta-device model: backbone, one adapter set, one head."""
    with torch.device("meta"):
        model = Wav2Vec2ForCTC(make_config("large", **MMS_1B, vocab_size=vocab_size))
    head = count(model.lm_head.parameters())
    adapters = count(model._get_adapters().values()) - head  # _get_adapters: the adapter layers + lm_head
    return {"backbone": count(model.parameters()) - adapters - head, "adapters": adapters, "head": head}


def report_memory(vocab_size: int, languages: int) -> None:
    n = paper_counts(vocab_size)
    per_language = n["adapters"] + n["head"]
    print(f"\nmemory on paper, facebook/mms-1b-all shape ({MMS_1B['hidden_size']} hidden, {MMS_1B['num_hidden_layers']}"
          f" layers, adapter_attn_dim {MMS_1B['adapter_attn_dim']}; heads of {vocab_size} tokens): backbone "
          f"{n['backbone'] / 1e6:.1f}M parameters, per language {n['adapters'] / 1e6:.2f}M adapters + "
          f"{n['head'] / 1e6:.2f}M head; GB = 1e9 bytes")
    print(f"{'languages':<11}{'N models fp32':>15}{'fp16':>10}{'1 backbone + N fp32':>22}{'fp16':>10}{'ratio':>8}")
    for k in (languages, MMS_LANGUAGES):
        separate = k * (n["backbone"] + per_language)
        shared = n["backbone"] + k * per_language
        print(f"{k:<11}{separate * 4 / 1e9:>15.1f}{separate * 2 / 1e9:>10.1f}{shared * 4 / 1e9:>22.2f}"
              f"{shared * 2 / 1e9:>10.2f}{separate / shared:>7.1f}x")
    print(f"one model + load_adapter swaps (A): {(n['backbone'] + per_language) * 4 / 1e9:.2f} GB fp32, each swap "
          f"reads and copies {per_language * 4 / 1e6:.1f} MB fp32")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny", help="pre-LN backbone shape")
    parser.add_argument("--languages", type=int, default=8, help="N languages in the directory and the stream")
    parser.add_argument("--utterances", type=int, default=64, help="utterances in the stream")
    parser.add_argument("--batch-size", type=int, default=8, help="B: utterances per batch of A' and B")
    parser.add_argument("--adapter-dim", type=int, default=16, help="adapter_attn_dim of the benchmark's directory")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the stream per path")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--paper-vocab", type=int, default=154,
                        help="head size (tokens) assumed for the on-paper 1B shape (real heads vary by language)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocabs = vocabularies(args.languages)
    shape = dict(SHAPES[args.shape])
    config = make_config(shape.pop("preset"), **shape, adapter_attn_dim=args.adapter_dim)
    stream = make_stream(args.utterances, list(vocabs), args.seed)
    audio_seconds = sum(w.size for _, w in stream) / SAMPLE_RATE
    with tempfile.TemporaryDirectory() as tmp, quiet_transformers():
        mms = write_mms_dir(Path(tmp), config, vocabs, args.seed)
        hf = Wav2Vec2ForCTC.from_pretrained(mms, target_lang=next(iter(vocabs))).eval()
        ours = load_mms_dir(mms)
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(mms)
        arrival = list(range(len(stream)))
        grouped = sorted(arrival, key=lambda i: (list(vocabs).index(stream[i][0]), i))
        plans = {"A": batches(stream, extractor, arrival, 1, True),
                 "A'": batches(stream, extractor, grouped, args.batch_size, True),
                 "B": batches(stream, extractor, arrival, args.batch_size, False),
                 "B1": batches(stream, extractor, arrival, 1, False)}
        changes = sum(a[0] != b[0] for a, b in itertools.pairwise(stream))
        print(f"{args.shape} pre-LN shape ({count(hf.parameters()) / 1e6:.2f}M parameters with one language), "
              f"{len(vocabs)} languages ({', '.join(f'{k} {len(v)}' for k, v in vocabs.items())} tokens), "
              f"adapter_attn_dim {args.adapter_dim}; wavadapt's model holding them all: "
              f"{count(ours.parameters()) / 1e6:.2f}M")
        print(f"stream: {len(stream)} utterances, {audio_seconds:.0f} s of audio, {changes} language changes; "
              f"B = {args.batch_size}; {torch.get_num_threads()} thread(s), {args.repeats} timed pass(es) per path "
              "(after 2 warm-up batches)")
        print("A: transformers, arrival order, batches of 1; A': transformers grouped by language, batches of B; "
              "B: wavadapt, arrival order, batches of B; B1: wavadapt, arrival order, batches of 1 (A without swaps)")
        run = {name: (lambda plan: run_transformers(hf, plan), plans[name]) for name in ("A", "A'")}
        run |= {name: (lambda plan: run_wavadapt(ours, plan), plans[name]) for name in ("B", "B1")}
        timings = timed_passes(run, args.repeats)
        report_speed(plans, timings, audio_seconds)
        print("\nexactness")
        mismatches = check(stream, plans, timings, mms, ours)
    report_memory(args.paper_vocab, args.languages)
    if mismatches:
        print(f"FAILED: {mismatches} utterances differ from transformers'")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
