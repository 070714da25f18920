"""Inference cost of per-row adapter routing (issue 12, "Per-row routing at batch cost"), measured in one run.

A batch of 16 rows (4 s each) whose rows run 16 distinct adapter tasks, each one forward of
``CTCModel.forward_mixed``, against the same batch on one task (every row on one stack: the sets' own modules,
no gather). The mixed batch runs two ways: the gathered routing (each layer's sets stacked into tables, every
row's entry gathered, one batched matmul per projection) and the loop over distinct stacks it replaced
(``grouped_routing``: one index_select / index_copy pass per stack). The throughput ratio is one-stack time /
mixed time (goal: at least 0.9 for the gathered routing), from medians of repeats that interleave the three
runs in a rotating order so machine noise hits them alike; the two routings' outputs must agree.

Shapes: tiny and Base backbones (random weights), 16 adapter tasks (`methods.prepare`, houlsby, size 64 on
tiny, 256 on Base, moved off their near-identity start so that every task computes something of its own), one
CTC head each. One thread and CPU time by default: on a shared machine one thread's CPU time does not grow with
other processes' load, as wall time does.

Allocator: by default glibc is told to keep freed memory for reuse (``--allocator retain``), as a serving process
with jemalloc, tcmalloc or CUDA's caching allocator does. glibc's default (``--allocator glibc``) hands large
freed blocks back to the OS, so every large tensor of every forward is page-faulted anew: on Base a quarter of
the CPU time, in system time, varying from run to run and charging the routing for its extra allocations.

    python benchmarks/inference.py                               # tiny and Base
    python benchmarks/inference.py --presets tiny --repeats 3    # quick
    python benchmarks/inference.py --allocator glibc             # glibc's default allocator behaviour
"""

import argparse
import ctypes
import ctypes.util
import statistics
import sys
import time
from collections.abc import Callable

import torch

from wavadapt.experiments.accounting import placeholder_vocabulary
from wavadapt.model.adapters import LayerAdapters, TaskLayerNorm, adapter_parameters, grouped_routing
from wavadapt.model.backbone import SAMPLE_RATE, build_backbone
from wavadapt.model.ctc import CTCModel
from wavadapt.training.methods import MethodConfig, prepare

TASKS = 16
ADAPTER_SIZE = {"tiny": 64, "base": 256}
REPEATS = {"tiny": 15, "base": 5}  # tiny's short forwards need more to outlast bursts of other processes' load
RATIO_GOAL = 0.9
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and never trim it; False where that is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc
        return False


def build_model(preset: str, tasks: int, seed: int = 0) -> CTCModel:
    """A backbone with ``tasks`` adapter tasks (``task0`` ...), each perturbed away from identity."""
    torch.manual_seed(seed)
    model = CTCModel(build_backbone(preset)).eval()
    vocab = placeholder_vocabulary()
    for i in range(tasks):
        prepare(model, f"task{i}", vocab, MethodConfig("adapters", adapter_size=ADAPTER_SIZE[preset]))
        with torch.no_grad():
            for p in adapter_parameters(model.backbone, f"task{i}").values():
                p.add_(torch.randn_like(p), alpha=0.05)
    model.requires_grad_(False)
    return model


def make_batch(rows: int, seconds: float) -> torch.Tensor:
    return torch.randn(rows, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))


def runs(model: CTCModel, waveforms: torch.Tensor, tasks: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """The three ways to run the batch, each returning its logits."""

    def grouped() -> torch.Tensor:
        with grouped_routing(model.backbone):
            return model.forward_mixed(waveforms, tasks).logits

    return {
        "one stack": lambda: model.forward_mixed(waveforms, [tasks[0]] * len(tasks)).logits,
        "gathered": lambda: model.forward_mixed(waveforms, tasks).logits,
        "grouped": grouped,
    }


def time_interleaved(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per run over ``repeats`` rounds, the order rotating each round."""
    names = list(fns)
    seconds = {name: {"cpu": [], "wall": []} for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            cpu, wall = time.process_time(), time.perf_counter()
            fns[name]()
            seconds[name]["cpu"].append(time.process_time() - cpu)
            seconds[name]["wall"].append(time.perf_counter() - wall)
    return {name: {clock: statistics.median(v) for clock, v in clocks.items()} for name, clocks in seconds.items()}


def cached_table_bytes(model: CTCModel) -> int:
    """Bytes of the gathered routing's cached tables (a copy of every set's weights, plus identity entries)."""
    caches = [t for m in model.modules() if isinstance(m, LayerAdapters) for t in m.tables.values()]
    caches += [m.table for m in model.modules() if isinstance(m, TaskLayerNorm)]
    return sum(t.numel() * t.element_size() for cache in caches for t in cache.tables)


def bench_preset(preset: str, rows: int, seconds: float, repeats: int) -> bool:
    """Print one preset's figures; True when the two routings agree and the gathered one meets the goal."""
    model = build_model(preset, TASKS)
    waveforms = make_batch(rows, seconds)
    tasks = [f"task{i % TASKS}" for i in range(rows)]
    fns = runs(model, waveforms, tasks)
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in fns.items()}  # warm-up; builds the gathered routing's tables
        medians = time_interleaved(fns, repeats)
    difference = (outputs["gathered"] - outputs["grouped"]).abs().max().item()
    agree = torch.allclose(outputs["gathered"], outputs["grouped"], atol=1e-4, rtol=1e-4)
    adapters = sum(p.numel() * p.element_size() for i in range(TASKS)
                   for p in adapter_parameters(model.backbone, f"task{i}").values())
    print(f"\n{preset}: {rows} rows x {seconds:g} s, {len(set(tasks))} distinct stacks, adapter size "
          f"{ADAPTER_SIZE[preset]}, {repeats} repeats (medians)")
    print(f"{'run':<10} {'cpu s':>8} {'wall s':>8} {'ratio cpu':>10} {'ratio wall':>11}")
    for name, m in medians.items():
        ratios = [medians["one stack"][clock] / m[clock] for clock in ("cpu", "wall")]
        print(f"{name:<10} {m['cpu']:8.3f} {m['wall']:8.3f} {ratios[0]:10.3f} {ratios[1]:11.3f}")
    print(f"gathered vs grouped logits: max |difference| {difference:.2e} ({'agree' if agree else 'DISAGREE'})")
    print(f"cached tables {cached_table_bytes(model) / 2**20:.0f} MiB beside {adapters / 2**20:.0f} MiB of adapter "
          "parameters", flush=True)
    gathered_ratio = medians["one stack"]["cpu"] / medians["gathered"]["cpu"]
    return agree and gathered_ratio >= RATIO_GOAL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=sorted(ADAPTER_SIZE))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, help=f"timed rounds per preset (default {REPEATS})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allocator", choices=("retain", "glibc"), default="retain")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    retained = args.allocator == "retain" and retain_freed_memory()
    print(f"throughput ratio = one-stack time / mixed time (goal >= {RATIO_GOAL} for gathered, on CPU time); "
          f"{args.threads} thread(s); freed memory {'retained' if retained else 'returned to the OS (glibc default)'}",
          flush=True)
    ok = [bench_preset(preset, args.rows, args.seconds, args.repeats or REPEATS[preset]) for preset in args.presets]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
