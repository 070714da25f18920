"""Dynamic batching: requests from many clients share one mixed-task forward.

A request waits at most ``max_wait_s`` for others, or until the batch would exceed ``max_batch_seconds`` of
padded audio (longest row x rows, what a forward costs); the batch then runs as one forward with every row on its
own task (``transcribe_waveforms``), on a worker thread so the event loop keeps answering. A batch is the oldest
request and those nearest its length (little padding; no request waits long behind later ones); a batch that fails
is rerun row by row, so one bad request fails alone.
"""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from wavadapt.data.audio import SAMPLE_RATE
from wavadapt.decoding import DecoderConfig, DecoderPool
from wavadapt.errors import WavadaptError
from wavadapt.inference.engine import CHUNK_SECONDS
from wavadapt.inference.transcription import Transcript, default_batch_seconds, transcribe_waveforms
from wavadapt.model.auto_routing import AUTO_DEFAULTS, AutoConfig
from wavadapt.model.ctc import CTCModel


class QueueFull(WavadaptError):
    """More requests wait than the batcher queues; the caller should retry later."""


class BatcherClosed(WavadaptError):
    """The batcher stopped before the request ran."""


@dataclass(frozen=True)
class BatchStats:
    rows: int
    tasks: Counter
    """Rows per task."""
    audio_seconds: float
    seconds: float
    """Time the forward took."""


@dataclass(eq=False)  # jobs are found by identity (they hold arrays)
class _Job:
    audio: np.ndarray
    task: str
    name: str
    decoder: DecoderConfig | None
    future: asyncio.Future
    arrived: float
    rows: int
    longest: int
    """Batch rows and the longest row's samples, once cut into windows of ``chunk_seconds``."""


class Batcher:
    """Queue of requests run in mixed-task batches (see the module's docstring); use as an async context manager
    inside a running event loop."""

    def __init__(self, model: CTCModel, *, max_wait_s: float = 0.01, max_batch_seconds: float | None = None,
                 max_queue: int = 256, chunk_seconds: float = CHUNK_SECONDS,
                 on_batch: Callable[[BatchStats], None] | None = None, pool: DecoderPool | None = None,
                 auto: AutoConfig = AUTO_DEFAULTS):
        """``pool`` keeps the beam decoders requests ask for (a registry's, whose LMs are loaded); ``auto`` routes
        the requests for ``auto`` and ``a+b``."""
        self.model = model
        self.auto = auto
        self.pool = pool or DecoderPool()
        self.max_wait_s = max_wait_s
        self.max_batch_seconds = max_batch_seconds or default_batch_seconds(next(model.parameters()).device)
        self.max_queue = max_queue
        self.chunk_seconds = chunk_seconds
        self.on_batch = on_batch
        self.busy = False
        self._pending: list[_Job] = []
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wavadapt-model")  # one model, one forward at once
        self._loop_task: asyncio.Task | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The one thread every forward on the model runs on: a forward routes its rows through adapter state
        on the model, so two at once would mix their tasks (live streams run their steps here too)."""
        return self._executor

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def queued_seconds(self) -> float:
        return sum(len(j.audio) for j in self._pending) / SAMPLE_RATE

    async def __aenter__(self) -> "Batcher":
        self._loop_task = asyncio.create_task(self._run_forever())
        return self

    async def __aexit__(self, *exc) -> None:
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        self._pending.clear()
        await asyncio.to_thread(self._executor.shutdown)  # a forward under way finishes

    async def transcribe(self, audio: np.ndarray, task: str, name: str = "<audio>",
                         decoder: DecoderConfig | None = None) -> Transcript:
        """The transcript of 16 kHz mono float32 ``audio`` by ``task`` (decoded by ``decoder``, greedy if None),
        batched with whatever else is queued."""
        if self._loop_task is None or self._loop_task.done():
            raise BatcherClosed("the batcher is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are queued, the most this server holds")
        loop = asyncio.get_running_loop()
        window = int(self.chunk_seconds * SAMPLE_RATE)
        job = _Job(audio, task, name, decoder, loop.create_future(), loop.time(), max(1, -(-len(audio) // window)),
                   min(len(audio), window))
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    def _padded_seconds(self, jobs: list[_Job]) -> float:
        return sum(j.rows for j in jobs) * max(j.longest for j in jobs) / SAMPLE_RATE

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._pending = [j for j in self._pending if not j.future.done()]  # clients that gave up
            if not self._pending:
                self._arrived.clear()
                continue
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._padded_seconds(self._pending) < self.max_batch_seconds and loop.time() < deadline:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            batch = self._take()
            if self._pending:
                self._arrived.set()
            else:
                self._arrived.clear()
            self.busy = True
            try:
                await self._run(batch)
            finally:
                self.busy = False

    def _take(self) -> list[_Job]:
        """The oldest request and the queued ones nearest its length, as many as fit one batch: little padding,
        and every request is served by the time it is the oldest."""
        by_length = sorted(self._pending, key=lambda j: j.longest)
        lo = by_length.index(self._pending[0])
        hi = lo + 1
        while True:
            fits = [(abs(by_length[k].longest - self._pending[0].longest), k) for k in (lo - 1, hi)
                    if 0 <= k < len(by_length)
                    and self._padded_seconds(by_length[min(lo, k): max(hi, k + 1)]) <= self.max_batch_seconds]
            if not fits:
                break
            k = min(fits)[1]
            lo, hi = min(lo, k), max(hi, k + 1)
        taken = {id(j) for j in by_length[lo:hi]}
        batch = [j for j in self._pending if id(j) in taken]
        self._pending = [j for j in self._pending if id(j) not in taken]
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, transcribe_waveforms, self.model, [(j.audio, j.task) for j in batch],
                [j.name for j in batch], self.max_batch_seconds, self.chunk_seconds, [j.decoder for j in batch],
                self.pool, self.auto)
        except Exception as e:  # a row the model cannot take: find it by running each alone
            if len(batch) > 1:
                for job in batch:
                    await self._run([job])
            elif not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(batch), Counter(j.task for j in batch),
                                     sum(len(j.audio) for j in batch) / SAMPLE_RATE, time.perf_counter() - start))
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
