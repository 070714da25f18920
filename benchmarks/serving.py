"""Serving throughput with dynamic batching (issue 13), measured in one run on loopback.

The same requests (WAV files of 2-6 s) go to one server three ways: one at a time from one client; from 16
concurrent clients over 16 different adapter tasks; from 16 concurrent clients all on one task. Each run reports
audio seconds transcribed per wall second and the p50 / p95 latency clients see. Goals: 16 concurrent clients
reach at least 2x the audio seconds per second of one-at-a-time (on CPU, tiny shape), and 16 tasks reach at least
0.9x one task's (per-row routing costs little). The two 16-task runs must give the same transcripts.

Shape: a tiny backbone (random weights) with 16 adapter tasks (houlsby, size 64, moved off their near-identity
start), the server's defaults (10 ms wait, 12.5 padded seconds per batch on CPU), one torch thread by default.
The server runs in a process of its own, as it would in production: the clients' threads stay off its GIL.

    python benchmarks/serving.py
    python benchmarks/serving.py --requests 32 --threads 2
"""

import argparse
import contextlib
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

from wavadapt.accounting import placeholder_vocabulary
from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.inference.registry import Registry
from wavadapt.inference.server import ServerConfig, create_app, serving
from wavadapt.inference.transcription import default_batch_seconds
from wavadapt.methods import MethodConfig, prepare
from wavadapt.model.adapters import adapter_parameters
from wavadapt.model.backbone import build_backbone
from wavadapt.model.ctc import CTCModel

TASKS = 16
CLIENTS = 16
CONCURRENCY_GOAL, TASKS_GOAL = 2.0, 0.9


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


def _serve(threads: int, config: ServerConfig, urls: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """The server's process: its own interpreter, so the clients' threads do not hold its GIL."""
    torch.set_num_threads(threads)
    with serving(create_app(Registry(build_model(TASKS)), config)) as url:
        urls.put(url)
        stop.wait()


@contextlib.contextmanager
def server_process(threads: int, config: ServerConfig) -> Iterator[str]:
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(threads, config, urls, stop))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--max-wait-ms", type=float, default=ServerConfig.max_wait_ms)
    parser.add_argument("--max-batch-seconds", type=float, help="padded seconds per batch (the server's default)")
    args = parser.parse_args(argv)
    config = ServerConfig(max_wait_ms=args.max_wait_ms, max_batch_seconds=args.max_batch_seconds)
    with tempfile.TemporaryDirectory() as tmp, server_process(args.threads, config) as url:
        files, audio_seconds = write_files(Path(tmp), args.requests)
        mixed = [(f, f"task{i % TASKS}") for i, f in enumerate(files)]
        one_task = [(f, "task0") for f in files]
        run(url, mixed[:CLIENTS], CLIENTS)  # warm-up: the routing's tables, the allocator, the connections
        runs = {"one at a time, 16 tasks": (mixed, 1), f"{CLIENTS} clients, 16 tasks": (mixed, CLIENTS),
                f"{CLIENTS} clients, one task": (one_task, CLIENTS)}
        print(f"{args.requests} requests, {audio_seconds:.0f} s of audio; tiny backbone, {TASKS} adapter tasks, "
              f"{args.threads} torch thread(s); batches wait {config.max_wait_ms:g} ms, hold "
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
    return 0 if agree and concurrent / sequential >= CONCURRENCY_GOAL and concurrent / single >= TASKS_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
