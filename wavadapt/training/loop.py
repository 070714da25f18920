"""The one training loop, shared by fine-tuning and pre-training.

An *objective* turns a batch into a summed loss and the number of items it sums over. The loop sums
gradients over ``update_freq`` micro-batches and, under torchrun, over every rank, then divides by the
total item count of the update (fairseq's sample_size), so an update is the same whether the global
batch is one process's accumulation or many processes' shards.

Per update: mixed precision (bf16/fp16 on GPU), gradient clipping, a tri-stage or linear-decay
learning rate, skipping of non-finite updates (stopping after ``max_bad_updates`` in a row),
validation, logs to CSV + TensorBoard, checkpoints that ``resume`` continues bit-for-bit (model,
optimizer, scheduler, data position, random state).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wavadapt.data.batching import AudioDataset, DataStats, LengthBucketBatchSampler, collate
from wavadapt.data.shard_stream import ShardStream, stream_batches
from wavadapt.errors import WavadaptError
from wavadapt.training import sharding
from wavadapt.training.run_folder import provenance

log = logging.getLogger("wavadapt.training.loop")


class TrainingError(WavadaptError):
    """Training cannot go on (e.g. too many non-finite updates in a row)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a run; the objective and what trains are chosen elsewhere."""

    max_updates: int = 1000
    lr: float = 5e-5
    schedule: str = "tri-stage"
    """``tri-stage`` (fairseq fine-tuning: warm-up, hold, exponential decay) or ``linear`` (warm-up then
    linear decay to 0, wav2vec 2.0 pre-training)."""
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    warmup_updates: int | None = None
    """``linear`` only (default 8% of max_updates)."""
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    """Clip the gradient norm to this value; 0 only measures it."""
    update_freq: int = 1
    """Micro-batches per update (gradient accumulation): simulates more GPUs on fewer."""
    max_seconds_per_batch: float = 200.0
    """Audio seconds per micro-batch per process (fairseq's max_tokens / 16000)."""
    amp: str = "auto"
    """``auto`` (bf16 where the GPU supports it, fp16 on other GPUs, none on CPU), ``bf16``, ``fp16``, ``none``."""
    max_bad_updates: int = 10
    """Stop after this many consecutive updates with a non-finite loss or gradient."""
    log_every: int = 10
    validate_every: int = 0
    """0: validate at the end only."""
    checkpoint_every: int = 0
    """0: checkpoint at the end only."""
    num_workers: int = 0
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP) instead of holding
    them whole in each (DDP): for full fine-tuning of models that do not fit one device."""
    language_temperature: float = 1.0
    """Several languages: each epoch gives language l a share of the audio proportional to hours_l ** this (1: as
    the corpus holds them; XLS-R's 0.5 raises the smaller ones; 0: all alike)."""
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)
    """Recorded with the run (method, task, data paths ...), not interpreted."""


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier of update ``n`` (of the peak ``config.lr``)."""
    total = config.max_updates
    if config.schedule == "linear":
        warmup = config.warmup_updates if config.warmup_updates is not None else int(0.08 * total)
        return lambda n: (n + 1) / warmup if n < warmup else max(0.0, (total - n) / max(1, total - warmup))
    if config.schedule != "tri-stage":
        raise WavadaptError(f"unknown schedule {config.schedule!r}; choose tri-stage or linear")
    warmup, hold = (int(r * total) for r in config.phase_ratio[:2])
    decay = max(1, total - warmup - hold)
    init, final = config.init_lr_scale, config.final_lr_scale

    def tri_stage(n: int) -> float:
        if n < warmup:
            return init + (1 - init) * n / warmup
        if n < warmup + hold:
            return 1.0
        return math.exp(math.log(final) * min(1.0, (n - warmup - hold) / decay))

    return tri_stage


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@dataclass
class Distributed:
    """This process's place under torchrun (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the torchrun process group if launched by torchrun: NCCL on GPUs, gloo on CPU."""
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            return cls(device=device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


Objective = Callable[[nn.Module, dict], tuple[torch.Tensor, int, dict[str, float]]]
"""(model, batch) -> (loss summed over the batch's items, number of items, extra sums to log)."""


class Trainer:
    """Runs ``config.max_updates`` updates of ``params`` (the trainable parameters of ``model``).

    ``dataset`` is an AudioDataset or another dataset with ``lengths()`` and ``set_epoch()`` whose
    ``collate`` (default :func:`collate`) makes batches with ``ids``, ``num_skipped`` and ``audio_seconds``
    (e.g. ``feature_cache.CachedFeatureDataset``), or a :class:`~wavadapt.data.shard_stream.ShardStream`, whose
    readers make the batches; ``languages`` (each item's) lets ``config.language_temperature`` weigh them."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], objective: Objective,
                 dataset: AudioDataset | Dataset, config: TrainConfig, out_dir: Path,
                 validate: Callable[[nn.Module], dict[str, float]] | None = None,
                 on_update: Callable[[nn.Module, int], None] | None = None,
                 on_checkpoint: Callable[[nn.Module, int], None] | None = None,
                 find_unused_parameters: bool = False, dist_env: Distributed | None = None,
                 languages: Sequence[str] | None = None, fsdp_units: Sequence[nn.Module] = ()):
        self.env = dist_env or Distributed.from_env()
        # Dropout uses torch's generator, transformers' SpecAugment masks numpy's global one.
        torch.manual_seed(config.seed + self.env.rank)
        np.random.seed(config.seed + self.env.rank)
        self.config = config
        self.out_dir = Path(out_dir)
        self.model = model.to(self.env.device)
        self.params = params
        self.objective = objective
        self.validate = validate
        self.on_update = on_update
        self.on_checkpoint = on_checkpoint
        self.dataset = dataset
        self.sampler = None if isinstance(dataset, ShardStream) else LengthBucketBatchSampler(
            dataset.lengths(), config.max_seconds_per_batch, shuffle=True, seed=config.seed,
            num_replicas=self.env.world_size, rank=self.env.rank, groups=languages,
            temperature=config.language_temperature)
        self.net = model
        self.sharded, self.full_model = config.fsdp and self.env.world_size > 1, None
        if self.sharded:  # the parameters become shards: the trainable ones are looked up again by name
            self.full_model = sharding.shard(model, fsdp_units, self.env.device, self.env.world_size)
            named = dict(model.named_parameters())
            self.params = params = {k: named[k] for k in params}
        elif self.env.world_size > 1:
            self.net = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)
        decay = [p for p in params.values() if p.ndim > 1]
        no_decay = [p for p in params.values() if p.ndim <= 1]  # biases and norms (fairseq/BERT practice)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas, eps=config.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.amp_dtype = _amp_dtype(config.amp, self.env.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self.update = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already consumed
        self.stream_position: dict[int, int] = {}  # of a stream: batches of the epoch consumed, by reader
        self.bad_in_a_row = 0
        self.skipped_updates = 0
        self.data_stats = DataStats()
        self.history: list[dict] = []

    # --- data ---

    def _batches(self) -> Iterator[dict | None]:
        """Micro-batches forever, epoch after epoch, starting at the resumed position."""
        if self.sampler is None:
            yield from self._streamed()
        while True:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            order = list(self.sampler)[self.batches_done:]
            # Its own generator: creating a loader mid-epoch on resume must not draw from the global RNG.
            loader = DataLoader(self.dataset, batch_sampler=order,
                                collate_fn=getattr(self.dataset, "collate", collate),
                                num_workers=self.config.num_workers,
                                generator=torch.Generator().manual_seed(self.config.seed + self.epoch))
            for batch in loader:
                self.batches_done += 1
                yield batch
            self.epoch += 1
            self.batches_done = 0

    def _streamed(self) -> Iterator[dict | None]:
        """A stream's batches forever; each rank runs its own epochs (its readers' shards), so ranks stay in lockstep
        by counting updates, not epochs."""
        while True:
            self.dataset.set_epoch(self.epoch)
            self.dataset.resume_at(self.stream_position)
            fresh, batches = not self.stream_position, 0
            for item in stream_batches(self.dataset, self.config.num_workers):
                self.stream_position[item["reader"]] = item["number"] + 1
                batches += 1
                yield item["batch"]
            if fresh and not batches:  # else the loop would wait forever
                raise WavadaptError(f"a whole epoch of {len(self.dataset.shards)} shards gave this process no usable "
                                    "utterance (language, transcripts, length limits): check the shards")
            self.epoch += 1
            self.stream_position = {}

    # --- one update ---

    def _micro_step(self, batch: dict, sync: bool) -> tuple[float, int, dict[str, float]]:
        batch = {k: v.to(self.env.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if self.sharded:
            self.net.set_requires_gradient_sync(sync)
        accumulate = not sync and isinstance(self.net, DistributedDataParallel)
        with self.net.no_sync() if accumulate else contextlib.nullcontext():
            with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss, count, extra = self.objective(self.net, batch)
            # DDP averages gradients over ranks; scaling by world size turns that into the sum.
            self.scaler.scale(loss.float() * self.env.world_size).backward()
        return loss.item(), count, extra

    def _train_update(self, batches: Iterator[dict | None]) -> dict[str, float]:
        if self.on_update is not None:
            self.on_update(self.model, self.update)
        self.net.train()
        loss_sum, count, seconds, extras = 0.0, 0, 0.0, {}
        micro = []
        while len(micro) < self.config.update_freq:
            batch = next(batches)
            self.data_stats.update(batch)
            if batch is not None:  # a batch of only unreadable files: nothing to learn from
                micro.append(batch)
        for i, batch in enumerate(micro):
            loss, n, extra = self._micro_step(batch, sync=i == len(micro) - 1)
            loss_sum += loss
            count += n
            seconds += batch["audio_seconds"]
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + v
        keys = sorted(extras)
        totals = self.env.sum([loss_sum, count, seconds, *(extras[k] for k in keys)])
        loss_sum, count, seconds = totals[0], int(totals[1]), totals[2]
        self.scaler.unscale_(self.optimizer)
        for p in self.params.values():  # sum over the update -> mean over its items
            if p.grad is not None:
                p.grad.div_(max(count, 1))
        norm = nn.utils.clip_grad_norm_(list(self.params.values()),
                                        self.config.clip_norm if self.config.clip_norm > 0 else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # sharded: a DTensor
        finite = math.isfinite(loss_sum) and bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # GradScaler itself skips fp16 overflows
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": loss_sum / max(count, 1), "grad_norm": float(norm), "lr": self.scheduler.get_last_lr()[0],
                 "items": count, "audio_seconds": seconds,
                 **{k: v / max(count, 1) for k, v in zip(keys, totals[3:], strict=True)}}
        if finite:
            self.bad_in_a_row = 0
            self.scheduler.step()
            self.update += 1
        else:
            self.bad_in_a_row += 1
            self.skipped_updates += 1
            log.warning("update %d skipped: non-finite loss %.4g or gradient norm %.4g", self.update + 1,
                        loss_sum, float(norm))
            if self.bad_in_a_row >= self.config.max_bad_updates:
                raise TrainingError(
                    f"{self.bad_in_a_row} updates in a row had a non-finite loss or gradient (last loss "
                    f"{loss_sum:.4g}, grad norm {float(norm):.4g}); lower the learning rate or check the data")
        return stats

    # --- the loop ---

    def train(self, until: int | None = None) -> list[dict]:
        """Train from wherever a resumed checkpoint left off to update ``until`` (default: max_updates),
        checkpointing there; returns the log rows."""
        config = self.config
        until = min(until or config.max_updates, config.max_updates)
        batches = self._batches()
        writer = _Logs(self.out_dir, self.env.main)
        visible = config.progress and self.env.main
        bar = tqdm(total=config.max_updates, initial=self.update, disable=None if visible else True, desc="train",
                   unit="upd")  # None: no bar where stderr is no terminal
        start, window_seconds, window_updates = time.perf_counter(), 0.0, 0
        try:
            while self.update < until:
                before = self.update
                stats = self._train_update(batches)
                window_seconds += stats["audio_seconds"]
                window_updates += 1
                if self.update == before:
                    continue
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}")
                last = self.update == until
                row = None
                if self.update % config.log_every == 0 or last:
                    elapsed = time.perf_counter() - start
                    row = {"update": self.update, **stats, "audio_seconds_per_second": window_seconds / elapsed,
                           "update_seconds": elapsed / max(window_updates, 1),
                           "skipped_updates": self.skipped_updates, "skipped_files": self.data_stats.skipped,
                           "skipped_batches": self.data_stats.skipped_batches}
                if self.validate is not None and ((config.validate_every and self.update % config.validate_every == 0)
                                                  or last):
                    row = row or {"update": self.update}
                    row.update({f"valid_{k}": v for k, v in self._validate().items()})
                    if config.progress and self.env.main:  # as it happens, above the bar
                        scores = ", ".join(f"{k[6:]} {shown(k, v)}" for k, v in row.items() if k.startswith("valid_"))
                        tqdm.write(f"update {self.update}: validation {scores}", file=sys.stderr)
                if row is not None:
                    self.history.append(row)
                    writer.write(row)
                if (config.checkpoint_every and self.update % config.checkpoint_every == 0) or last:
                    self.save_checkpoint(self.out_dir / "checkpoints" / "last.pt")
                    if self.on_checkpoint is not None and self.env.main:
                        self.on_checkpoint(self.model, self.update)
                if row is not None and "loss" in row:  # throughput windows leave out validation and saving
                    start, window_seconds, window_updates = time.perf_counter(), 0.0, 0
        finally:
            bar.close()
            writer.close()
        if self.sharded:
            sharding.fill(self.model, self.full_model)
        return self.history

    @property
    def trained_model(self) -> nn.Module:
        """The model with its trained weights whole, to save (sharded: rank 0's full copy, after :meth:`train`)."""
        return self.full_model if self.sharded else self.model

    def _validate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            # Sharded, every rank runs the model's forward (it gathers each layer), rank 0 keeps the scores.
            result = self.validate(self.model) if self.env.main or self.sharded else {}
        if self.env.world_size > 1:
            dist.barrier()
        return result

    # --- checkpoints ---

    def state_dict(self) -> dict:
        """The run's state with full tensors (sharded, every rank calls; rank 0's is whole)."""
        if self.sharded:
            params, optimizer = sharding.full_state(self.model, self.optimizer, list(self.params))
        else:
            params = {k: p.detach().cpu() for k, p in self.params.items()}
            optimizer = self.optimizer.state_dict()
        return {
            "params": params,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {"update": self.update, "epoch": self.epoch, "batches_done": self.batches_done,
                         "bad_in_a_row": self.bad_in_a_row, "skipped_updates": self.skipped_updates},
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "numpy": _numpy_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": asdict(self.config),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Everything ``resume`` needs; written by rank 0 atomically (a crash never leaves half a file)."""
        streams = self._stream_positions()  # every rank takes part
        state = self.state_dict() if self.env.main or self.sharded else None
        if not self.env.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({**state, "streams": streams, "sharded": self.sharded}, tmp)
        os.replace(tmp, path)

    def _stream_positions(self) -> list[dict]:
        """Of a stream, each rank's epoch and position (ranks read other shards, so each has its own)."""
        if self.sampler is not None:
            return []
        mine = {"epoch": self.epoch, "position": self.stream_position}
        if self.env.world_size == 1:
            return [mine]
        gathered: list = [None] * self.env.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def start(self, info: dict, resume: bool = False) -> None:
        """Continue the run in ``out_dir`` from its last checkpoint (``resume``), or begin one, described in
        run.json by ``info`` and :func:`run_folder.provenance` (the caller has claimed the folder)."""
        if resume:
            self.resume(self.out_dir / "checkpoints" / "last.pt")
        elif self.env.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "run.json").write_text(json.dumps({**provenance(), **info}, indent=2, default=str))

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of this same run: parameters, optimizer, schedule, data position, RNG."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # no code runs on load
        except (OSError, RuntimeError) as e:
            raise WavadaptError(f"{path}: cannot read the training checkpoint ({e})") from e
        missing = set(self.params) ^ set(state["params"])
        if missing:
            raise WavadaptError(f"{path}: checkpoint parameters differ from this run's: {sorted(missing)[:5]}")
        if self.sharded:
            sharding.load_full_state(self.model, self.optimizer, state["params"], state["optimizer"])
        elif state.get("sharded"):
            raise WavadaptError(f"{path}: a run trained with --fsdp resumes with --fsdp (its optimizer state is "
                                "keyed by parameter name)")
        else:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(state["params"][k])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for k, v in state["progress"].items():
            setattr(self, k, v)
        if streams := state.get("streams"):
            if len(streams) != self.env.world_size:
                raise WavadaptError(f"{path}: a run streamed by {len(streams)} processes resumes on as many, not "
                                    f"{self.env.world_size} (each read its own shards)")
            self.epoch, self.stream_position = streams[self.env.rank]["epoch"], streams[self.env.rank]["position"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        keys, pos, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def shown(name: str, value: float) -> str:
    """A logged value as people read it: error rates and accuracies in percent."""
    return f"{value:.2%}" if name.endswith(("wer", "cer", "accuracy")) else f"{value:.4g}"


def _numpy_state() -> list:
    # Plain ints and floats: the checkpoint loads with weights_only=True.
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(gauss)]


class _Logs:
    """log.csv (one row per logged update, columns grow as new metrics appear) + TensorBoard scalars."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "log.csv"
        self.rows: list[dict] = []
        self.tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # a resumed run appends to its log
                with self.path.open() as f:
                    self.rows = list(csv.DictReader(f))
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: logging to log.csv only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            for k, v in row.items():
                if k != "update" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["update"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
