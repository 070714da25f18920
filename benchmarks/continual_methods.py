"""Update time and parameter counts of the four continual pre-training methods, measured in one run.

Kessler, Thomas, Karout (ICASSP 2022), Fig. 6: learning a second language (es after en) with cwav2vec 2.0
took 10 instead of ~15 days (ratio 0.68 to warm-starting); right, the trainable and frozen parameters.

Every method gets its own copy of the same first-task model (``build_model(preset, "en", preset)``: the
recipe's dropouts and objective; layer drop 0 so that every update runs every layer), prepared for task
"es" by ``continual.prepare_continual``. One update is what ``Trainer`` does with ``PretrainingObjective``:
forward with the full objective (span masking, Gumbel quantizer, contrastive + diversity + feature
penalty, the L2 pull of multihead-l2), backward, gradient normalisation and norm, AdamW step over the
method's trainable parameters (the trainer's weight-decay groups). All methods use the same batch, the
same masks and distractors (drawn once) and, in their n-th update, the same dropout and Gumbel draws, so
they do the same work but for what trains (their first losses agree). A last, untimed update per method
counts its matmul and convolution FLOPs: the device-independent compute ratio.

``+cache`` variants (the methods whose CNN is frozen) read the CNN features of the batch from a
``wavadapt.training.feature_cache`` on disk (fp16 safetensors, as a cached run would) instead of running the CNN;
the rest of the update is the same (their "CNN" stage is the cache read).

Methods run round-robin in a rotating order, so machine noise hits them alike; the median update counts.
On a shared machine use ``--threads 1 --clock cpu``: one thread's CPU time does not grow with other
processes' load, whereas wall time does. The CPU-time breakdown per stage comes from forward pre-hooks.

    python benchmarks/continual_methods.py                          # Base, 2 x 8 s of audio per batch
    python benchmarks/continual_methods.py --threads 1 --clock cpu  # on a busy shared machine
    python benchmarks/continual_methods.py --preset tiny --steps 3  # quick (the target is for Base)
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from regions import Regions
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.model.adapters import encoder_of
from wavadapt.model.pretraining import PretrainingModel
from wavadapt.objectives.contrastive import sample_negatives
from wavadapt.objectives.masking import compute_mask_indices
from wavadapt.training.continual import CONTINUAL_METHODS, ContinualConfig, prepare_continual
from wavadapt.training.pretrain import PretrainingObjective, build_model, recipe

FIRST, TASK = "en", "es"
BASELINE = "warm-start"
# (method, upper bound on its median update time / warm-start's): cwav2vec must at least save what the
# paper measured (0.68); with cached CNN features (the frozen CNN's output, computed once) it must halve it.
TARGETS = [("cwav2vec", 0.68), ("cwav2vec+cache", 0.50)]
CACHED = ("multihead", "cwav2vec")  # the frozen-CNN methods timed again with cached CNN features


def count(params) -> int:
    return sum(p.numel() for p in params)


def pretraining_regions(model: PretrainingModel) -> Regions:
    """The stages of a pre-training update: CNN; proj = feature projection + layer norm + masking; enc =
    positional conv + transformer layers (+ adapters); head = quantizer, projections, contrastive and
    diversity losses; the update itself marks l2 (multihead-l2's penalty), backward, grad (normalisation +
    norm) and optimizer."""
    backbone = model.backbone
    return Regions([(backbone.feature_extractor, "CNN"), (backbone.feature_projection, "proj"),
                    (encoder_of(backbone), "enc"), (model.dropout_features, "head")])


class FixedDraws(nn.Module):
    """What the objective calls as ``net``: the model with the benchmark's masks and distractors, fed
    either waveforms or (with a cache) the cached CNN features of the batch's utterances."""

    def __init__(self, model: PretrainingModel, draws: dict, cache=None, ids: list[str] | None = None,
                 mark=None):
        super().__init__()
        self.model, self.draws, self.cache, self.ids, self.mark = model, draws, cache, ids, mark

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if self.cache is None:
            return self.model(waveforms, attention_mask, **self.draws)
        from wavadapt.training.feature_cache import collate_features

        self.mark("CNN")  # the stage the cache replaces: reading the features
        cnn_out, frame_mask = collate_features([self.cache.features(i) for i in self.ids])
        return self.model(cnn_features=cnn_out, frame_mask=frame_mask, **self.draws)


class Setup:
    """One method: its model, optimizer, objective and update."""

    def __init__(self, first: PretrainingModel, method: str, draws: dict, cache_dir: Path | None = None,
                 ids: list[str] | None = None):
        self.method = method.removesuffix("+cache")
        self.model = copy.deepcopy(first)
        self.trained, regularizer = prepare_continual(self.model, TASK, ContinualConfig(self.method))
        self.model.activate(TASK)
        self.model.requires_grad_(False)
        for p in self.trained.values():
            p.requires_grad_(True)
        self.model.train()
        self.regions = pretraining_regions(self.model)
        if regularizer is not None:
            def marked(penalty=regularizer):
                self.regions.mark("l2")
                return penalty()
            regularizer = marked
        self.objective = PretrainingObjective(self.model, regularizer=regularizer)
        self.cache = None
        if method.endswith("+cache"):
            from wavadapt.training.feature_cache import FeatureCache

            self.cache = FeatureCache.open(cache_dir, self.model)  # checks the CNN fingerprint
        self.net = FixedDraws(self.model, draws, self.cache, ids, self.regions.mark)
        train = recipe("base").train  # the trainer's AdamW: betas, eps, weight decay on matrices only
        decay = [p for p in self.trained.values() if p.ndim > 1]
        no_decay = [p for p in self.trained.values() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-5, betas=train.betas, eps=train.eps)
        self.update = 0

    def step(self, batch: dict) -> float:
        """One update as Trainer._train_update runs it (one micro-batch, one process); returns the loss."""
        mark = self.regions.mark
        torch.manual_seed(self.update)  # the same dropout and Gumbel draws in every method's n-th update
        with self.regions.hooks():
            self.objective.on_update(self.model, self.update)
            loss, n, _ = self.objective(self.net, batch)
            mark("backward")
            loss.float().backward()
            mark("grad")
            for p in self.trained.values():
                if p.grad is not None:
                    p.grad.div_(max(n, 1))
            nn.utils.clip_grad_norm_(list(self.trained.values()), torch.inf)
            mark("optimizer")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            mark("end")
        self.update += 1
        return loss.item() / max(n, 1)


def make_batch(model: PretrainingModel, utterances: int, seconds: float, seed: int = 0) -> tuple[dict, dict]:
    """Equal-length random waveforms (the collate format) and the masks + distractors every method uses."""
    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * SAMPLE_RATE)
    waveforms = torch.randn(utterances, samples, generator=g)
    batch = {"waveforms": waveforms, "attention_mask": torch.ones_like(waveforms, dtype=torch.long)}
    frames = int(model.backbone._get_feat_extract_output_lengths(samples))
    c = model.config
    mask = torch.from_numpy(compute_mask_indices((utterances, frames), None, c.mask_prob, c.mask_length,
                                                 c.min_masks, c.require_same_masks, np.random.default_rng(seed)))
    negatives = sample_negatives(mask, c.num_negatives, g)
    return batch, {"mask_indices": mask, "negatives": negatives}


def write_cache(first: PretrainingModel, batch: dict, ids: list[str], cache_dir: Path) -> None:
    """The batch's CNN features as a cached run would find them (fp16 safetensors)."""
    from wavadapt.training.feature_cache import write_feature_cache

    write_feature_cache(first, zip(ids, batch["waveforms"], strict=True), cache_dir, dtype=torch.float16)


def count_flops(setups: dict[str, Setup], batch: dict) -> dict[str, Counter]:
    """Matmul and convolution FLOPs (forward + backward) of one extra, untimed update per method, by part:
    the device-independent compute of an update (elementwise ops, norms and AdamW are not counted)."""
    flops = {}
    for name, setup in setups.items():
        with FlopCounterMode(display=False) as counter:
            setup.step(batch)
        by_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        parts = Counter({"CNN": by_module.get("FixedDraws.model.backbone.feature_extractor", 0),
                         "enc": by_module.get("FixedDraws.model.backbone.feature_projection", 0)
                         + by_module.get("FixedDraws.model.backbone.encoder", 0)})
        parts["head"] = counter.get_total_flops() - parts.total()
        flops[name] = parts
    return flops


def timed_steps(setups: dict[str, Setup], batch: dict, warmup: int, steps: int) -> dict:
    """Round-robin updates in a rotating order; per method the wall and CPU seconds and CPU breakdown."""
    names = list(setups)
    timings = {name: {"wall": [], "cpu": [], "parts": [], "loss": []} for name in names}
    for rep in range(warmup + steps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = setups[name].step(batch)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            timings[name]["loss"].append(loss)
            if rep >= warmup:
                timings[name]["wall"].append(wall)
                timings[name]["cpu"].append(cpu)
                timings[name]["parts"].append(setups[name].regions.seconds())
    return timings


PARTS = ("CNN", "proj", "enc", "head", "l2", "backward", "grad", "optimizer")


def report(setups: dict[str, Setup], timings: dict, flops: dict, clock: str) -> list[str]:
    """Print the tables; return the missed targets."""
    names = list(setups)
    wall = {n: statistics.median(t["wall"]) for n, t in timings.items()}
    cpu = {n: statistics.median(t["cpu"]) for n, t in timings.items()}
    step = wall if clock == "wall" else cpu
    print(f"\n{'method':<20}{'wall ms':>10}{'x warm':>8}{'CPU ms':>10}{'x warm':>8}"
          f"{'trainable':>13}{'frozen':>13}{'total':>13}{'new for es':>13}")
    first_params = count(setups[BASELINE].model.parameters()) - count(setups[BASELINE].model.heads[TASK].parameters())
    for name in names:
        model = setups[name].model
        total, trainable = count(model.parameters()), count(setups[name].trained.values())
        print(f"{name:<20}{wall[name] * 1e3:>10.0f}{wall[name] / wall[BASELINE]:>8.3f}{cpu[name] * 1e3:>10.0f}"
              f"{cpu[name] / cpu[BASELINE]:>8.3f}{trainable:>13,}{total - trainable:>13,}{total:>13,}"
              f"{total - first_params:>13,}")
    spread = ", ".join(f"{n} {min(t['wall']) * 1e3:.0f}-{max(t['wall']) * 1e3:.0f}" for n, t in timings.items())
    print(f"wall-clock range of the timed updates (ms): {spread}")

    print("\nwhere the CPU time of an update goes (median ms; forward by stage, then backward, grad norm, AdamW)")
    print(f"{'method':<20}" + "".join(f"{p:>10}" for p in PARTS) + f"{'sum':>10}")
    for name in names:
        parts = {p: statistics.median(s[p] for s in timings[name]["parts"]) for p in PARTS}
        print(f"{name:<20}" + "".join(f"{v * 1e3:>10.0f}" for v in parts.values())
              + f"{sum(parts.values()) * 1e3:>10.0f}")
    print("\nmatmul + convolution GFLOP of an update, forward + backward (the compute bound on the ratio)")
    print(f"{'method':<20}{'total':>10}{'x warm':>8}{'CNN':>10}{'enc':>10}{'head':>10}")
    for name in names:
        f = flops[name]
        print(f"{name:<20}{f.total() / 1e9:>10.1f}{f.total() / flops[BASELINE].total():>8.3f}"
              + "".join(f"{f[p] / 1e9:>10.1f}" for p in ("CNN", "enc", "head")))
    losses = ", ".join(f"{n} {timings[n]['loss'][0]:.4f}" for n in names)
    print("\nloss of each method's first update (the same forward up to the adapters' ~1e-3 and the cache's fp16 "
          f"rounding): {losses}")

    failures = []
    print(f"\ntargets (median {clock} update time / {BASELINE}'s; the paper measured 0.68 for cwav2vec)")
    for name, bound in TARGETS:
        if name not in step:
            continue
        ratio = step[name] / step[BASELINE]
        print(f"  {name:<20}{ratio:.3f} <= {bound:.2f}  {'ok' if ratio <= bound else 'MISSED'}")
        if ratio > bound:
            failures.append(f"{name} time ratio {ratio:.3f} > {bound:.2f}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="backbone shape and pre-training recipe: tiny, base, large")
    parser.add_argument("--batch-seconds", type=float, default=16.0, help="seconds of audio per batch")
    parser.add_argument("--utterance-seconds", type=float, default=8.0, help="length of each utterance")
    parser.add_argument("--steps", type=int, default=3, help="timed updates per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per method first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="update time the target uses")
    parser.add_argument("--no-cache", action="store_true", help="leave out the +cache variants")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    first = build_model(args.preset, FIRST, args.preset)
    first.backbone.config.layerdrop = 0.0  # every update runs every layer (the recipe's 0.05 adds noise)
    utterances = max(1, round(args.batch_seconds / args.utterance_seconds))
    batch, draws = make_batch(first, utterances, args.utterance_seconds)
    ids = [f"utt{i}" for i in range(utterances)]
    names = list(CONTINUAL_METHODS)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_cache:
            write_cache(first, batch, ids, Path(tmp))
            names += [f"{m}+cache" for m in CACHED]
        setups = {name: Setup(first, name, draws, Path(tmp), ids) for name in names}
        print(f"{args.preset} ({count(first.parameters()) / 1e6:.1f}M parameters with the {FIRST} head), "
              f"{utterances} x {args.utterance_seconds:g} s of audio per batch, "
              f"{int(draws['mask_indices'].sum())} masked steps x {draws['negatives'].shape[1]} distractors, "
              f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.steps} timed updates per method")
        timings = timed_steps(setups, batch, args.warmup, args.steps)
        flops = count_flops(setups, batch)
        failures = report(setups, timings, flops, args.clock)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
