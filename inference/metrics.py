"""Prometheus metrics and a health probe for the bot and the workers (`IMG2IMG_METRICS_PORT`).

One `Metrics` per process (`METRICS`): the queue counts the jobs where they change, the worker
counts what it ran, and the live workers (the bot's `RemoteBackend.workers`) and the GPU memory
are read when Prometheus scrapes. `start_metrics_server` serves `/metrics` and `/healthz` (200
once `ready()` says so, 503 before).
"""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference.remote.heartbeat import WorkerInfo

__all__ = ["METRICS", "Metrics", "MetricsPortInUse", "Outcome", "start_metrics_server"]

Outcome = Literal["delivered", "generated", "failed", "cancelled"]
DAY = 86_400
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, float("inf"))


class Metrics:
    """The process's metric objects, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.waiting = 0
        self.running = 0
        self._workers: Callable[[], Sequence[WorkerInfo]] | None = None
        self._day = 0
        self._today: dict[str, int] = {}
        queue = Gauge(
            "img2img_queue_jobs", "Jobs in the queue, by state", ["state"], registry=self.registry
        )
        queue.labels(state="waiting").set_function(lambda: self.waiting)
        queue.labels(state="running").set_function(lambda: self.running)
        self.jobs = Counter(
            "img2img_jobs", "Jobs finished, by outcome", ["outcome"], registry=self.registry
        )
        self.job_seconds = Histogram(
            "img2img_job_seconds",
            "Seconds from a job's submission to its delivery",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "img2img_queue_wait_seconds",
            "Seconds a job waited in the queue before it was released",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "img2img_images_generated", "Images generated", registry=self.registry
        )
        self.registry.register(_LiveCollector(self))

    def queue_depth(self, waiting: int, running: int) -> None:
        self.waiting, self.running = waiting, running

    def finished(self, outcome: Outcome, seconds: float | None = None) -> None:
        """Count a job's outcome (and, for a delivered one, its latency)."""
        self.jobs.labels(outcome=outcome).inc()
        if seconds is not None:
            self.job_seconds.observe(max(0.0, seconds))
        day = int(time.time() // DAY)
        if day != self._day:
            self._day, self._today = day, {}
        self._today[outcome] = self._today.get(outcome, 0) + 1

    def today(self, outcome: Outcome) -> int:
        """Jobs with `outcome` this UTC day, counted by this process since it started."""
        return self._today.get(outcome, 0) if self._day == int(time.time() // DAY) else 0

    def watch_workers(self, workers: Callable[[], Sequence[WorkerInfo]] | None) -> None:
        """Read the live workers from `workers` at each scrape (None: no remote queue)."""
        self._workers = workers

    def live_workers(self) -> Sequence[WorkerInfo] | None:
        return None if self._workers is None else self._workers()


class _LiveCollector(Collector):
    """Values read at scrape time: the live workers and their models, the GPU memory."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        workers = self._metrics.live_workers()
        if workers is not None:
            yield GaugeMetricFamily("img2img_workers", "Live workers", value=len(workers))
            capacity = GaugeMetricFamily(
                "img2img_worker_capacity", "A live worker's capacity", labels=["worker"]
            )
            models = GaugeMetricFamily(
                "img2img_worker_model",
                "A model a live worker has loaded",
                labels=["worker", "model"],
            )
            for worker in workers:
                capacity.add_metric([worker.name], worker.capacity)
                for model in worker.models:
                    models.add_metric([worker.name, model], 1)
            yield capacity
            yield models
        allocated = gpu_memory_allocated()
        if allocated is not None:
            yield GaugeMetricFamily(
                "img2img_gpu_memory_allocated_bytes", "GPU memory torch holds", value=allocated
            )


def gpu_memory_allocated() -> int | None:
    """torch's allocated CUDA memory; None without CUDA (torch is never imported for this)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated())


METRICS = Metrics()


class MetricsPortInUse(Exception):
    """`IMG2IMG_METRICS_PORT` names a port that another program (or process) listens on."""

    def __init__(self, port: int) -> None:
        super().__init__(
            f"IMG2IMG_METRICS_PORT {port} is already in use: choose a free port (each bot and "
            "worker on one machine needs its own) or stop the program using it"
        )
        self.port = port


async def start_metrics_server(
    port: int, ready: Callable[[], bool], metrics: Metrics = METRICS, host: str | None = None
) -> web.AppRunner:
    """Serve `/metrics` and `/healthz` on `port` (every interface unless `host`: Prometheus scrapes
    from outside the container); `await runner.cleanup()` stops it."""

    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if ready() else web.Response(status=503, text="starting\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise MetricsPortInUse(port) from None
        raise
    return runner
