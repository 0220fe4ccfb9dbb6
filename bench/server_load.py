"""The ModelsLab-compatible server under load: its own cost per request, and batching across
HTTP clients.

An in-process server (`inference.server`) on loopback runs the tests' tiny model on the CPU
(`LocalBackend`, one GPU-worker thread, `--batch-size` images per batch). `--clients` concurrent
clients (each with its own API key, run on their own event loop in another thread) send
`--requests` img2img requests in all, with the init image inline (base64), and fetch the ones
answered `processing` until they succeed. From the timestamps the server keeps per job:

- intake: request received (its whole body read) → job submitted to the backend (JSON parsed,
  key checked, base64 decoded, fields validated, the image's type checked);
- answer: result ready → the answer carrying it built (an inline answer: the waiting handler
  woken; a fetch: that fetch's arrival → its answer). Image encoding happens in the backend's
  post-processing, before "ready", and is excluded.

The mean batch size is what the backend's worker took per batch. Target: p99 ≤ 10 ms for both.
Run: `.venv/bin/python bench/server_load.py [--clients 100 --requests 500]`; results in
docs/performance.md.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import asyncio
import base64
import multiprocessing
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import _models  # noqa: F401  (puts the repository and tests/ on sys.path)
import httpx
from _tables import table
from aiohttp import web
from tiny_models import png_bytes, tiny_models

from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.server import ServerState, create_app
from inference.settings import InferenceSettings, ServerSettings

ROUTE = "/api/v1/enterprise/pony/img2img"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(values: list[float]) -> list[str]:
    return [f"{percentile(values, q) * 1000:.2f}" for q in (0.5, 0.9, 0.99)] + [
        f"{max(values) * 1000:.2f}"
    ]


class Load:
    """The clients: `count` requests in all, shared out as each client finishes one."""

    def __init__(self, base: str, keys: list[str], count: int, body: dict[str, Any]) -> None:
        self.base, self.keys, self.left, self.body = base, keys, count, body
        self.latencies: list[float] = []
        self.fetches = 0

    async def client(self, http: httpx.AsyncClient, key: str) -> None:
        while self.left > 0:
            self.left -= 1
            started = time.perf_counter()
            answer = (await http.post(self.base + ROUTE, json={**self.body, "key": key})).json()
            while answer["status"] == "processing":
                await asyncio.sleep(min(2.0, max(0.2, answer["eta"])))  # as clients should
                self.fetches += 1
                answer = (await http.post(answer["fetch_result"], json={"key": key})).json()
            assert answer["status"] == "success", answer
            self.latencies.append(time.perf_counter() - started)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.keys))
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            await asyncio.gather(*(self.client(http, key) for key in self.keys))


def run_clients(load: Load, answers: Any) -> None:
    """In a process of its own (the clients must not share the server's interpreter lock)."""
    asyncio.run(load.run())
    answers.put((load.latencies, load.fetches))


async def in_process(load: Load) -> Load:
    """Run the clients in a child process; their figures come back into `load`."""
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    child = context.Process(target=run_clients, args=(load, answers))
    child.start()
    load.latencies, load.fetches = await asyncio.to_thread(answers.get)
    await asyncio.to_thread(child.join)
    return load


async def serve_and_load(args: argparse.Namespace, backend: LocalBackend) -> dict[str, Any]:
    keys = [f"bench-key-{i:03d}" for i in range(args.clients)]
    server = ServerSettings(keys=keys, wait=args.wait, max_in_flight=2)  # type: ignore[arg-type]
    state = ServerState.build(backend, InferenceSettings(server=server), "http://unset")
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    state.publish_at(base)
    inline = base64.b64encode(png_bytes()).decode("ascii")
    body = {"prompt": "a red fox", "init_image": inline, "base64": "yes", "seed": 1}
    body |= {"width": args.size, "height": args.size, "strength": args.strength}
    body |= {"safety_checker": "no", "tomesd": "no"}
    await in_process(Load(base, keys[:1], 2, body))  # warm-up: the model loads
    warm = set(state.store.jobs())
    backend_batches.clear()
    started = time.perf_counter()
    load = await in_process(Load(base, keys, args.requests, body))
    wall = time.perf_counter() - started
    jobs = [job for job in state.store.jobs() if job not in warm and job.state == "success"]
    await state.runner.stop(10.0)
    await runner.cleanup()
    t = [job.timings for job in jobs]
    return {
        "jobs": len(jobs),
        "wall": wall,
        "intake": [x.submitted - x.received for x in t],
        "answer": [x.answered - max(x.ready, x.asked) for x in t],
        "inline": sum(1 for x in t if x.asked == x.ready),
        "fetches": load.fetches,
        "latency": load.latencies,
    }


backend_batches: list[int] = []


def count_batches(backend: LocalBackend) -> None:
    """Record the size (in images) of every batch the backend's worker takes."""
    batcher = backend._batcher  # the bench looks inside: the port does not report batches
    take = batcher.take

    def counted(*, gather_seconds: float = 0.0) -> Any:
        batch = take(gather_seconds=gather_seconds)
        if batch:
            backend_batches.append(sum(item.samples for item in batch))
        return batch

    batcher.take = counted  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--strength", type=float, default=0.1, help="0.1 of 21 steps: 2 steps")
    parser.add_argument("--wait", type=float, default=5.0, help="IMG2IMG_SERVER_WAIT")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval for the server's process, in ms (Python's default: 5)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    registry = ModelRegistry.load(tiny_models().models_file)
    backend = LocalBackend(registry, device="cpu", batch_size=args.batch_size)
    count_batches(backend)
    try:
        result = asyncio.run(serve_and_load(args, backend))
    finally:
        asyncio.run(backend.aclose())
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"# server_load {now}; {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{args.clients} clients, {result['jobs']} requests, tiny model {args.size}x{args.size}, "
        f"batch size {args.batch_size}, IMG2IMG_SERVER_WAIT={args.wait:g}, "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    rows = [
        ["intake: received → submitted", *ms(result["intake"])],
        ["answer: ready → answered", *ms(result["answer"])],
        ["client: request → success", *ms(result["latency"])],
    ]
    print(table(["server's own cost (ms)", "p50", "p90", "p99", "max"], rows))
    batches = backend_batches
    print(
        f"\n{result['jobs']} jobs in {result['wall']:.1f} s ({result['jobs'] / result['wall']:.1f}"
        f"/s); answered inline {result['inline']}, by fetch {result['jobs'] - result['inline']} "
        f"({result['fetches']} fetches); {len(batches)} batches, mean batch size "
        f"{statistics.fmean(batches):.2f} images (max {args.batch_size})"
    )


if __name__ == "__main__":
    main()
