"""What a server reports to Prometheus: requests by task and status, latency, batch shapes, throughput, queue."""

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wavadapt.inference.batcher import BatchStats

THROUGHPUT_WINDOW = 10.0
"""Seconds over which the audio-seconds-per-second gauge averages."""
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """One server's metrics, in a registry of their own (several servers in one process do not mix)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wavadapt_requests", "Transcription requests by task and HTTP status.",
                                ["task", "status"], registry=r)
        self.latency = Histogram("wavadapt_request_latency_seconds", "Transcription request latency.", registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_rows = Histogram("wavadapt_batch_rows", "Requests per batch.", buckets=_SIZES, registry=r)
        self.task_rows = Histogram("wavadapt_batch_task_rows", "Requests per distinct task in a batch.",
                                   buckets=_SIZES, registry=r)
        self.audio = Counter("wavadapt_audio_seconds", "Audio seconds transcribed.", registry=r)
        self.model_time = Counter("wavadapt_model_seconds", "Seconds the model spent in batches.", registry=r)
        Gauge("wavadapt_audio_seconds_per_second", f"Audio seconds transcribed per second over the last "
              f"{THROUGHPUT_WINDOW:g} s.", registry=r).set_function(self._throughput)
        Gauge("wavadapt_queue_depth", "Requests waiting for a batch.", registry=r).set_function(queue_depth)
        self._recent: deque[tuple[float, float]] = deque()

    def record_request(self, task: str, status: int, seconds: float) -> None:
        self.requests.labels(task, str(status)).inc()
        self.latency.observe(seconds)

    def record_batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        for rows in stats.tasks.values():
            self.task_rows.observe(rows)
        self.audio.inc(stats.audio_seconds)
        self.model_time.inc(stats.seconds)
        self._recent.append((time.monotonic(), stats.audio_seconds))

    def _throughput(self) -> float:
        while self._recent and self._recent[0][0] < time.monotonic() - THROUGHPUT_WINDOW:
            self._recent.popleft()
        return sum(seconds for _, seconds in self._recent) / THROUGHPUT_WINDOW

    def render(self) -> bytes:
        return generate_latest(self.registry)
