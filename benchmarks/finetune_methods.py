"""Training-step time and memory of the five fine-tuning methods, measured in one run on one batch.

Every method gets its own copy of the same backbone (same weights and config: SpecAugment masking as in
fairseq's Base fine-tuning recipe, layerdrop 0 so every step runs every layer) and a CTC head; what trains
is decided by `methods.prepare`. One step = forward, CTC loss on random labels, backward, AdamW step.
Methods run round-robin, in a rotating order, so machine noise hits them alike; the median step counts.
Step time is wall-clock and the process CPU time of the step; the targets use the clock named by
--clock. On a shared machine use --threads 1 --clock cpu: one thread's CPU time does not grow with other
processes' load, whereas wall time does, and so does the CPU time of threads spinning at barriers.

Memory, "activation+grad+optimizer": the bytes autograd saves for backward (each storage once,
parameters excluded: they are there whatever trains) + parameter gradients + AdamW state. This is the
memory a method adds on top of the shared frozen weights and is exact on any device. CPU RSS is not used:
it is process-wide, keeps freed blocks, and its high-water mark cannot be reset between interleaved
methods. On CUDA the step's peak allocation above the resident models (torch.cuda.max_memory_allocated)
is printed as well.

``+cache`` variants read the CNN's output for the batch from a ``wavadapt.training.feature_cache`` on disk (fp32
safetensors, as ``finetune(..., feature_cache=...)`` writes it) instead of running the frozen CNN; the rest of
the step is the same (their "CNN" region is the cache read).

The same instrumented step counts saved tensors per region (CNN, feature projection + positional conv,
each transformer layer, head + loss): a frozen region with nothing trainable below it must save none.

    python benchmarks/finetune_methods.py                      # Base shape, 8 s of audio per batch
    python benchmarks/finetune_methods.py --threads 1 --clock cpu   # on a busy shared machine
    python benchmarks/finetune_methods.py --preset tiny --steps 3   # quick (targets are for Base)
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter

import torch
from regions import Regions

from wavadapt.experiments.accounting import placeholder_vocabulary
from wavadapt.model.adapters import encoder_of
from wavadapt.model.backbone import SAMPLE_RATE, build_backbone
from wavadapt.model.ctc import CTCModel, CTCOutput
from wavadapt.training.feature_cache import FeatureCache, collate_features, write_feature_cache
from wavadapt.training.methods import MethodConfig, prepare

TASK = "asr"
# fairseq's wav2vec 2.0 Base fine-tuning (base_100h.yaml): mask_prob 0.65, mask_channel_prob 0.5 over 64
# channels, activation_dropout 0.1; layerdrop 0 (recipe: 0.1) so that step time does not vary by draw.
RECIPE = {
    "mask_time_prob": 0.65, "mask_time_length": 10, "mask_feature_prob": 0.5, "mask_feature_length": 64,
    "activation_dropout": 0.1, "layerdrop": 0.0,
}  # fmt: skip
CHARS_PER_SECOND = 15  # read English speech: label length of a random transcript

# (method, what is compared to full, upper bound on the ratio): the training-cost targets for Base.
TARGETS = [
    ("adapters", "time", 0.72),
    ("top-n-adapters", "time", 0.50),
    ("adapters", "memory", 0.60),
]


def methods(top_n: int) -> dict[str, MethodConfig]:
    return {
        "full": MethodConfig("full"),
        "top-n-full": MethodConfig("top-n-full", top_n=top_n),
        "adapters": MethodConfig("adapters"),
        "top-n-adapters": MethodConfig("top-n-adapters", top_n=top_n),
        "head-only": MethodConfig("head-only"),
        "adapters+cache": MethodConfig("adapters"),
        "top-n-adapters+cache": MethodConfig("top-n-adapters", top_n=top_n),
    }


def make_batch(utterances: int, seconds: float, vocab_size: int, device: torch.device) -> dict:
    """Random waveforms of equal length (no padding) and random transcripts of a realistic length."""
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * SAMPLE_RATE)
    label_len = int(seconds * CHARS_PER_SECOND)
    return {
        "waveforms": torch.randn(utterances, samples, generator=g).to(device),
        "labels": torch.randint(5, vocab_size, (utterances, label_len), generator=g).to(device),
        "label_lengths": torch.full((utterances,), label_len, device=device),
    }


def ctc_regions(model: CTCModel) -> Regions:
    """The regions of a fine-tuning step: CNN; proj = feature projection + positional conv; L0 ..; head =
    head + loss; the step itself marks backward and optimizer."""
    backbone = model.backbone
    modules = [(backbone.feature_extractor, "CNN"), (backbone.feature_projection, "proj")]
    modules += [(layer, f"L{i}") for i, layer in enumerate(encoder_of(backbone).layers)]
    return Regions(modules + [(head, "head") for head in model.heads.values()])


class Setup:
    """One method: its model, its optimizer and its step."""

    def __init__(self, backbone, config: MethodConfig, vocab, device: torch.device, cache: FeatureCache | None = None):
        self.config, self.cache = config, cache
        self.model = CTCModel(copy.deepcopy(backbone))
        self.trained = prepare(self.model, TASK, vocab, config)
        self.model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.trained.values(), lr=1e-5)
        self.regions = ctc_regions(self.model)

    def forward(self, batch: dict) -> CTCOutput:
        if self.cache is None:
            return self.model(batch["waveforms"])
        self.regions.mark("CNN")  # the region the cache replaces: reading the features
        features, frame_mask = collate_features([self.cache.features(i) for i in self.cache.ids])
        return self.model(cnn_features=features, frame_mask=frame_mask)

    def step(self, batch: dict) -> None:
        """forward, CTC loss, backward, AdamW step, with the regions marked."""
        mark = self.regions.mark
        with self.regions.hooks():
            output = self.forward(batch)
            loss = self.model.ctc_loss(output, batch["labels"], batch["label_lengths"])
            mark("backward")
            loss.backward()
            self.grad_bytes = sum(p.grad.nbytes for p in self.trained.values() if p.grad is not None)
            mark("optimizer")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            mark("end")

    def optimizer_bytes(self) -> int:
        return sum(t.nbytes for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t))

    def frozen_regions(self) -> list[str]:
        """Regions whose forward must record nothing for autograd: nothing in them or below them trains."""
        frozen = ["input", "CNN"]
        if self.config.method == "head-only":
            frozen += self.regions.names[1:-1]
        elif self.config.method == "top-n-adapters":
            frozen += self.regions.names[1 : -1 - self.config.top_n]
        return frozen


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def instrumented_step(setup: Setup, batch: dict, device: torch.device) -> dict:
    """One step that records what autograd saves, per region, and the step's memory."""
    params = {p.untyped_storage().data_ptr() for p in setup.model.parameters()}
    seen: dict[int, int] = {}
    saved = Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[setup.regions.current] += 1
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        setup.step(batch)
    cuda_peak = torch.cuda.max_memory_allocated(device) - resident if device.type == "cuda" else None
    activations = sum(seen.values())
    return {
        "saved": saved,
        "activations": activations,
        "memory": activations + setup.grad_bytes + setup.optimizer_bytes(),
        "cuda_peak": cuda_peak,
    }


def timed_steps(setups: dict[str, Setup], batch: dict, device: torch.device, warmup: int, steps: int) -> dict:
    """Round-robin steps in a rotating order; per method the wall and CPU seconds and CPU breakdown of each
    timed step."""
    names = list(setups)
    timings = {name: {"wall": [], "cpu": [], "parts": []} for name in names}
    for rep in range(warmup + steps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate who goes first
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            setups[name].step(batch)
            synchronize(device)
            if rep >= warmup:
                timings[name]["wall"].append(time.perf_counter() - start)
                timings[name]["cpu"].append(time.process_time() - start_cpu)
                timings[name]["parts"].append(setups[name].regions.seconds())
    return timings


def breakdown(parts: list[Counter], names: list[str], top_n: int) -> dict[str, float]:
    """Median CPU seconds of the step's parts, the transformer layers grouped below / in the top N."""
    layers = [names[2 : -1 - top_n], names[-1 - top_n : -1]]
    groups = {"CNN": ["CNN"], "proj": ["proj"]} | {f"{g[0]}-{g[-1]}": g for g in layers if g}
    groups |= {"head": ["head"], "backward": ["backward"], "optimizer": ["optimizer"]}
    return {g: statistics.median(sum(p[r] for r in regions) for p in parts) for g, regions in groups.items()}


def report(
    setups: dict[str, Setup], timings: dict, memory: dict, device: torch.device, top_n: int, clock: str
) -> list[str]:
    """Print the tables; return the failed checks and missed targets."""
    names = list(setups)
    wall = {name: statistics.median(t["wall"]) for name, t in timings.items()}
    cpu = {name: statistics.median(t["cpu"]) for name, t in timings.items()}
    step = wall if clock == "wall" else cpu
    mem = {name: m["memory"] for name, m in memory.items()}
    mib, cuda = 2**20, device.type == "cuda"
    print(
        f"\n{'method':<22}{'trainable':>11}{'step s':>9}{'x full':>8}{'CPU s':>8}{'x full':>8}"
        f"{'act+grad+opt MiB':>18}{'x full':>8}{'saved act MiB':>15}" + (f"{'CUDA peak MiB':>15}" if cuda else "")
    )
    for name in names:
        trainable = sum(p.numel() for p in setups[name].trained.values())
        m = memory[name]
        print(
            f"{name:<22}{trainable / 1e6:>10.2f}M{wall[name]:>9.3f}{wall[name] / wall['full']:>8.2f}"
            f"{cpu[name]:>8.2f}{cpu[name] / cpu['full']:>8.2f}{mem[name] / mib:>18.0f}{mem[name] / mem['full']:>8.2f}"
            f"{m['activations'] / mib:>15.0f}" + (f"{m['cuda_peak'] / mib:>15.0f}" if cuda else "")
        )
    spread = ", ".join(f"{n} {min(t['wall']):.2f}-{max(t['wall']):.2f}" for n, t in timings.items())
    print(f"wall-clock range of the timed steps (s): {spread}")

    if not cuda:  # CPU time says nothing about asynchronous CUDA kernels
        print("\nwhere the CPU time of a step goes (median s; forward by region, then backward and AdamW)")
        regions = setups["full"].regions.names
        parts = {name: breakdown(t["parts"], regions, top_n) for name, t in timings.items()}
        print(f"{'method':<22}" + "".join(f"{g:>10}" for g in parts["full"]))
        for name in names:
            print(f"{name:<22}" + "".join(f"{v:>10.3f}" for v in parts[name].values()))

    print(
        "\ntensors saved for backward per region (proj: feature projection + positional conv; head: head + loss);"
        "\nwhere nothing trains in or below a region, autograd must record nothing"
    )
    regions = setups["full"].regions.names
    print(f"{'method':<22}" + "".join(f"{r:>6}" for r in regions))
    for name in names:
        print(f"{name:<22}" + "".join(f"{memory[name]['saved'][r]:>6}" for r in regions))

    failures = []
    for name, setup in setups.items():
        leaked = [r for r in setup.frozen_regions() if memory[name]["saved"][r]]
        if leaked:
            failures.append(f"{name}: autograd recorded frozen regions {', '.join(leaked)}")
    print(f"\ntargets (ratio to full: median {clock} step time, activation+grad+optimizer memory)")
    for name, what, bound in TARGETS:
        ratio = step[name] / step["full"] if what == "time" else mem[name] / mem["full"]
        print(f"  {name:<22}{what:<8}{ratio:.3f} <= {bound:.2f}  {'ok' if ratio <= bound else 'MISSED'}")
        if ratio > bound:
            failures.append(f"{name} {what} ratio {ratio:.3f} > {bound:.2f}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="backbone shape: tiny, base or large")
    parser.add_argument("--batch-seconds", type=float, default=8.0, help="seconds of audio per batch")
    parser.add_argument("--utterance-seconds", type=float, default=4.0, help="length of each utterance")
    parser.add_argument("--top-n", type=int, help="N of the top-n methods (default: half the layers, 6 for Base)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="step time the targets use")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    backbone = build_backbone(args.preset, **RECIPE)
    top_n = args.top_n or backbone.config.num_hidden_layers // 2
    vocab = placeholder_vocabulary()
    utterances = max(1, round(args.batch_seconds / args.utterance_seconds))
    batch = make_batch(utterances, args.utterance_seconds, len(vocab), device)
    cache_dir = tempfile.TemporaryDirectory()
    cache = write_feature_cache(CTCModel(backbone), ((str(i), w) for i, w in enumerate(batch["waveforms"])),
                                cache_dir.name, torch.float32)
    setups = {name: Setup(backbone, config, vocab, device, cache if name.endswith("+cache") else None)
              for name, config in methods(top_n).items()}
    print(
        f"{args.preset} ({sum(p.numel() for p in backbone.parameters()) / 1e6:.1f}M parameters), N = {top_n}, "
        f"{utterances} x {args.utterance_seconds:g} s of audio per batch, {device}, "
        f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.steps} timed steps per method"
    )
    timings = timed_steps(setups, batch, device, args.warmup, args.steps)
    memory = {name: instrumented_step(setup, batch, device) for name, setup in setups.items()}
    failures = report(setups, timings, memory, device, top_n, args.clock)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
