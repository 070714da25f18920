"""Serving throughput with dynamic batching (issue 13), measured in one run on loopback.

The same requests (WAV files of 2-6 s) go to one server three ways: one at a time from one client; from 16
concurrent clients over 16 different adapter tasks; from 16 concurrent clients all on one task. Each run reports
audio seconds transcribed per wall second and the p50 / p95 latency clients see. Goals: 16 concurrent clients
reach at least 2x the audio seconds per second of one-at-a-time (on CPU, tiny shape), and 16 tasks reach at least
0.9x one task's (per-row routing costs little). The two 16-task runs must give the same transcripts.

Shape: a tiny backbone (random weights) with 16 adapter tasks (houlsby, size 64, moved off their near-identity
start), the server's defaults (10 ms wait, 12.5 padded seconds per batch on CPU), one torch thread by default.
The server runs in a process of its own, as it would in production: the clients' threads stay off its GIL.

MMS, after the runs above (about half a minute more; --no-mms skips it): the languages of an MMS directory served
the same way, against transformers' approach. benchmarks/mms.py writes the directory with transformers' own
``_get_adapters`` (tiny pre-LN backbone, 8 languages, adapter_attn_dim 16, random adapters and heads of different
sizes); a server process of its own serves ``Registry.load(dir)`` (one task per language) and 16 concurrent clients
send the same WAV files, each with a language drawn uniformly (seeded) as its ``model``. Transformers' side is the
serving loop its user would write: one ``Wav2Vec2ForCTC.from_pretrained(dir, target_lang=...)`` and the
directory's processor; requests one at a time in arrival order, ``load_adapter(lang)`` and the tokenizer's
``set_target_lang(lang)`` whenever the language changes, then read the WAV, extract features, forward, argmax,
``decode``. It runs in this process without HTTP (no upload, no JSON, no client threads), which only favours
transformers. Reported: audio seconds per second of both and their ratio, the server's p50 / p95 latency, and every
transcript against transformers' (whitespace normalised; any mismatch makes the script exit 1). The ratio has no
goal: on one CPU thread batching buys little (benchmarks/mms.py), so it says nothing of a GPU.

    python benchmarks/serving.py
    python benchmarks/serving.py --requests 32 --threads 2
    python benchmarks/serving.py --no-mms
"""

import argparse
import contextlib
import itertools
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import soundfile as sf
import torch
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.experiments.accounting import placeholder_vocabulary
from wavadapt.inference.registry import Registry
from wavadapt.inference.server import ServerConfig, create_app, serving
from wavadapt.inference.transcription import default_batch_seconds
from wavadapt.model.adapters import adapter_parameters
from wavadapt.model.backbone import build_backbone, make_config, quiet_transformers
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

TASKS = 16
CLIENTS = 16
CONCURRENCY_GOAL, TASKS_GOAL = 2.0, 0.9
MMS_LANGUAGES = 8


def build_model(tasks: int, seed: int = 0) -> CTCModel:
    """A tiny backbone with ``tasks`` adapter tasks (``task0`` ...), each perturbed away from identity."""
    torch.manual_seed(seed)
    model = CTCModel(build_backbone("tiny")).eval()
    for i in range(tasks):
        prepare(model, f"task{i}", placeholder_vocabulary(), MethodConfig("adapters", adapter_size=64))
        with torch.no_grad():
            for p in adapter_parameters(model.backbone, f"task{i}").values():
                p.add_(torch.randn_like(p), alpha=0.05)
    return model.requires_grad_(False)


def write_files(directory: Path, count: int, seed: int = 0) -> tuple[list[Path], float]:
    """``count`` WAV files of 2-6 s (noise: the model's cost does not depend on what is said); their seconds."""
    rng = np.random.default_rng(seed)
    paths, seconds = [], 0.0
    for i in range(count):
        audio = (rng.standard_normal(int(rng.uniform(2, 6) * SAMPLE_RATE)) * 0.1).astype(np.float32)
        paths.append(directory / f"{i}.wav")
        sf.write(paths[-1], audio, SAMPLE_RATE, subtype="PCM_16")
        seconds += len(audio) / SAMPLE_RATE
    return paths, seconds


def run(url: str, jobs: list[tuple[Path, str]], clients: int) -> tuple[float, list[float], list[str]]:
    """Send every job with ``clients`` concurrent clients (OpenAI's own); wall seconds, each request's latency, the
    texts."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120) as client:
        def one(job: tuple[Path, str]) -> tuple[float, str]:
            path, task = job
            start = time.perf_counter()
            text = client.audio.transcriptions.create(model=task, file=(path.name, path.read_bytes())).text
            return time.perf_counter() - start, text

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, jobs))
        return time.perf_counter() - start, [r[0] for r in results], [r[1] for r in results]


def _serve(threads: int, config: ServerConfig, urls: multiprocessing.Queue, stop: multiprocessing.Event,
           mms_dir: Path | None) -> None:
    """The server's process: its own interpreter, so the clients' threads do not hold its GIL. It serves the tiny
    model's adapter tasks, or every language of ``mms_dir``."""
    torch.set_num_threads(threads)
    with quiet_transformers():
        registry = Registry.load(mms_dir) if mms_dir is not None else Registry(build_model(TASKS))
    with serving(create_app(registry, config)) as url:
        urls.put(url)
        stop.wait()


@contextlib.contextmanager
def server_process(threads: int, config: ServerConfig, mms_dir: Path | None = None) -> Iterator[str]:
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(threads, config, urls, stop, mms_dir))
    process.start()
    try:
        yield urls.get(timeout=300)
    finally:
        stop.set()
        process.join(60)
        if process.is_alive():
            process.kill()


def scrape(url: str) -> dict[str, float]:
    """The server's unlabelled metrics (batch sizes, model time) from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in re.findall(r"^(wavadapt_\w+) (\S+)$", text, re.M)}


def adapter_tasks(files: list[Path], audio_seconds: float, threads: int, config: ServerConfig) -> bool:
    """The three runs over the tiny model's adapter tasks; whether the goals are met."""
    with server_process(threads, config) as url:
        mixed = [(f, f"task{i % TASKS}") for i, f in enumerate(files)]
        one_task = [(f, "task0") for f in files]
        run(url, mixed[:CLIENTS], CLIENTS)  # warm-up: the routing's tables, the allocator, the connections
        runs = {"one at a time, 16 tasks": (mixed, 1), f"{CLIENTS} clients, 16 tasks": (mixed, CLIENTS),
                f"{CLIENTS} clients, one task": (one_task, CLIENTS)}
        print(f"{len(files)} requests, {audio_seconds:.0f} s of audio; tiny backbone, {TASKS} adapter tasks, "
              f"{threads} torch thread(s); batches wait {config.max_wait_ms:g} ms, hold "
              f"{config.max_batch_seconds or default_batch_seconds(torch.device('cpu')):g} padded s", flush=True)
        print(f"{'run':<26}{'wall s':>8}{'audio s/s':>11}{'p50 s':>8}{'p95 s':>8}{'rows/batch':>12}{'model busy':>12}")
        measured, texts = {}, {}
        for name, (jobs, clients) in runs.items():
            before = scrape(url)
            wall, latencies, texts[name] = run(url, jobs, clients)
            after = scrape(url)
            measured[name] = audio_seconds / wall
            p50, p95 = statistics.quantiles(latencies, n=100)[49], statistics.quantiles(latencies, n=100)[94]
            rows = (after["wavadapt_batch_rows_sum"] - before["wavadapt_batch_rows_sum"]) / (
                after["wavadapt_batch_rows_count"] - before["wavadapt_batch_rows_count"])
            busy = (after["wavadapt_model_seconds_total"] - before["wavadapt_model_seconds_total"]) / wall
            print(f"{name:<26}{wall:8.2f}{measured[name]:11.1f}{p50:8.3f}{p95:8.3f}{rows:12.1f}{busy:12.0%}",
                  flush=True)
    sequential, concurrent, single = measured.values()
    agree = texts[list(runs)[0]] == texts[list(runs)[1]]
    print(f"{CLIENTS} clients vs one at a time: {concurrent / sequential:.2f}x (goal >= {CONCURRENCY_GOAL}x)")
    print(f"16 tasks vs one task, {CLIENTS} clients: {concurrent / single:.2f}x (goal >= {TASKS_GOAL}x)")
    print(f"transcripts of the 16-task runs {'agree' if agree else 'DISAGREE'}")
    return agree and concurrent / sequential >= CONCURRENCY_GOAL and concurrent / single >= TASKS_GOAL


def benchmarks_mms():
    """benchmarks/mms.py, for its MMS directory (transformers' own layout) and its languages."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import mms

    return mms


def transformers_loop(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor,
                      jobs: list[tuple[Path, str]]) -> tuple[float, float, int, list[str]]:
    """Transformers' serving loop: one request at a time in arrival order, ``load_adapter`` (and the tokenizer's
    ``set_target_lang``) where the language changes; wall seconds, seconds in load_adapter, swaps, the texts."""
    texts, swap_seconds, swaps = [], 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for path, lang in jobs:
            if lang != model.target_lang:
                swap = time.perf_counter()
                model.load_adapter(lang)
                swap_seconds += time.perf_counter() - swap
                processor.tokenizer.set_target_lang(lang)
                swaps += 1
            audio, _ = sf.read(path, dtype="float32")
            inputs = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            best = model(inputs.input_values, attention_mask=inputs.attention_mask).logits.argmax(-1)[0]
            texts.append(processor.decode(best))
    return time.perf_counter() - start, swap_seconds, swaps, texts


def mms_section(files: list[Path], audio_seconds: float, tmp: Path, threads: int, config: ServerConfig,
                seed: int = 0) -> int:
    """MMS languages served by wavadapt against transformers' load_adapter loop (see the module's docstring); the
    number of transcripts that differ."""
    mms = benchmarks_mms()
    vocabs = mms.vocabularies(MMS_LANGUAGES)
    shape = dict(mms.SHAPES["tiny"])
    model_config = make_config(shape.pop("preset"), **shape, adapter_attn_dim=16)
    directory = tmp / "mms"
    directory.mkdir()
    with quiet_transformers():
        mms.write_mms_dir(directory, model_config, vocabs, seed)
    rng = np.random.default_rng(seed)
    jobs = [(f, str(lang)) for f, lang in zip(files, rng.choice(list(vocabs), len(files)), strict=True)]
    changes = sum(a[1] != b[1] for a, b in itertools.pairwise(jobs))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in vocabs.items())
    print(f"\nMMS: tiny pre-LN directory, {len(vocabs)} languages ({sizes} tokens), adapter_attn_dim 16; the same "
          f"{len(files)} requests, each language drawn uniformly (seed {seed}): {changes} language changes", flush=True)
    print(f"{'run':<40}{'wall s':>8}{'audio s/s':>11}{'p50 s':>8}{'p95 s':>8}{'rows/batch':>12}{'load_adapter':>14}")
    with server_process(threads, config, directory) as url:
        run(url, jobs[:CLIENTS], CLIENTS)  # warm-up, as above
        before = scrape(url)
        wall, latencies, served = run(url, jobs, CLIENTS)
        after = scrape(url)
    rows = (after["wavadapt_batch_rows_sum"] - before["wavadapt_batch_rows_sum"]) / (
        after["wavadapt_batch_rows_count"] - before["wavadapt_batch_rows_count"])
    ours = audio_seconds / wall
    p50, p95 = statistics.quantiles(latencies, n=100)[49], statistics.quantiles(latencies, n=100)[94]
    print(f"{f'wavadapt server, {CLIENTS} clients (HTTP)':<40}{wall:8.2f}{ours:11.1f}{p50:8.3f}{p95:8.3f}{rows:12.1f}"
          f"{'-':>14}", flush=True)
    torch.set_num_threads(threads)
    with quiet_transformers():
        model = Wav2Vec2ForCTC.from_pretrained(directory, target_lang=next(iter(vocabs))).eval()
        processor = Wav2Vec2Processor.from_pretrained(directory)
    processor.tokenizer.set_target_lang(next(iter(vocabs)))
    transformers_loop(model, processor, jobs[:2])  # warm-up
    wall, swap_seconds, swaps, reference = transformers_loop(model, processor, jobs)
    theirs = audio_seconds / wall
    print(f"{'transformers, 1 at a time (in-process)':<40}{wall:8.2f}{theirs:11.1f}{'-':>8}{'-':>8}{1:12.1f}"
          f"{f'{swaps} x, {swap_seconds:.2f} s':>14}", flush=True)
    wrong = [i for i, (a, b) in enumerate(zip(served, reference, strict=True)) if a.split() != b.split()]
    print(f"wavadapt server vs transformers' load_adapter loop (audio s per s): {ours / theirs:.2f}x")
    print(f"transcripts equal to transformers': {len(jobs) - len(wrong)}/{len(jobs)} "
          f"({sum(len(t) for t in reference)} characters); mismatches: {len(wrong)}"
          + (f"  MISMATCHED requests {wrong[:10]}" if wrong else ""))
    return len(wrong)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the servers and of transformers' loop")
    parser.add_argument("--max-wait-ms", type=float, default=ServerConfig.max_wait_ms)
    parser.add_argument("--max-batch-seconds", type=float, help="padded seconds per batch (the server's default)")
    parser.add_argument("--no-mms", action="store_true", help="skip MMS languages against transformers' load_adapter")
    args = parser.parse_args(argv)
    config = ServerConfig(max_wait_ms=args.max_wait_ms, max_batch_seconds=args.max_batch_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        files, audio_seconds = write_files(Path(tmp), args.requests)
        ok = adapter_tasks(files, audio_seconds, args.threads, config)
        mismatches = mms_section(files, audio_seconds, Path(tmp), args.threads, config) if not args.no_mms else 0
    return 0 if ok and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
