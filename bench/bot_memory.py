"""Issue #6, target 5: memory stays bounded.

The real bot, in a process of its own, runs jobs end to end on the tiny models (slash command on
the loopback Discord → queue → local backend with the real NSFW detector → result message with
its buttons), four at a time. Targets:

- its RSS after 500 completed jobs is within 10 % of its RSS after 50 (nothing grows per job: job
  store, views, caches, progress tasks, discord.py's message cache);
- with jobs alternating over 3 models and a pipeline cache of 2, the cache never holds more than
  2 pipelines (read from the engine's `PipelineCache`), and evicted pipelines are freed.

At each checkpoint the bot reports, from inside, its RSS and the sizes of what could grow.

    .venv/bin/python bench/bot_memory.py            # 500 jobs, then 30 alternating
    .venv/bin/python bench/bot_memory.py --quick    # 150 jobs, then 9 alternating
    .venv/bin/python bench/bot_memory.py --trace    # also tracemalloc's top growth, 50 → end

Environment: BENCH_MALLOC_TRIM=1 returns freed heap to the system before each RSS reading;
BENCH_KEEP and BENCH_PY_SPY as in bench/bot_burst.py. Results: docs/performance.md, section 5.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import threading
import time
import tracemalloc
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot_burst import (
    FAST_JOB,
    ROOT,
    BotProcess,
    add_child_arguments,
    make_world,
    rss_bytes,
    serve,
    workdir,
)

MIB = 1024 * 1024
GROWTH_TARGET = 1.10
CONCURRENCY = 4
USERS = 8
CACHE_SIZE = 2
MODELS = ("tiny", "tiny-xl", "tiny-file")  # the three models of tests/tiny_models.py


# -- the bot side (a child process) ---------------------------------------------------------------


class MemoryInstrument:
    """Watches the engine's pipeline cache; on SIGUSR1 prints what the bot holds (SIGUSR2: the
    same, without a tracemalloc snapshot)."""

    def __init__(self, trace: bool) -> None:
        self._lock = threading.Lock()
        self.max_cached = 0
        self.max_alive = 0
        self.loads = 0
        self._alive: weakref.WeakSet[Any] = weakref.WeakSet()
        self._trace = trace
        self._first: tracemalloc.Snapshot | None = None
        self._last: tracemalloc.Snapshot | None = None

    def attach(self, client: Any) -> None:
        worker = client.backend._worker  # it builds the engine in the GPU worker thread
        make_runner = worker._make_runner

        def watched_runner() -> Any:
            engine = make_runner()
            self._watch(engine.cache)
            return engine

        worker._make_runner = watched_runner
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: self._checkpoint(client, snapshot=True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: self._checkpoint(client, snapshot=False))

    def _watch(self, cache: Any) -> None:
        """Count pipelines after every `PipelineCache.get` (on the GPU worker thread)."""
        get, load = cache.get, cache._loader

        def loader(entry: Any) -> Any:
            model = load(entry)
            with self._lock:
                self.loads += 1
                self._alive.add(model)
            return model

        def counted_get(entry: Any) -> Any:
            model = get(entry)
            with self._lock:
                self.max_cached = max(self.max_cached, len(cache._models))
                self.max_alive = max(self.max_alive, len(self._alive))
            return model

        cache._loader = loader
        cache.get = counted_get

    def _checkpoint(self, client: Any, *, snapshot: bool) -> None:
        state = client._connection
        views = state._view_store
        queue = client.queue
        if os.environ.get("BENCH_MALLOC_TRIM"):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        numbers = {
            "rss": rss_bytes(),
            "objects": len(gc.get_objects()),
            "tasks": len(asyncio.all_tasks()),
            "messages": len(state._messages or ()),
            "views": len(views._views) + len(views._synced_message_views) + len(views._modals),
            "waiting": len(queue._waiting),
            "running": len(queue._running),
            "users": len(state._users),
            "cached": len(self._alive),
        }
        if self._trace and snapshot:  # from the first checkpoint on: what is allocated and stays
            if not tracemalloc.is_tracing():
                tracemalloc.start(25)
            taken = tracemalloc.take_snapshot()
            self._first = self._first or taken
            self._last = taken
        print("checkpoint " + json.dumps(numbers), flush=True)

    def report(self, client: Any) -> dict[str, Any]:
        growth: list[str] = []
        if self._first is not None and self._last is not None:
            stats = self._last.compare_to(self._first, "traceback")
            for stat in stats[:10]:
                frames = [f for f in reversed(stat.traceback) if "asyncio" not in f.filename]
                where = " ← ".join(_short(f.filename, f.lineno) for f in frames[:5])
                growth.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  {where}")
        return {
            "max_cached": self.max_cached,
            "max_alive": self.max_alive,
            "loads": self.loads,
            "growth": growth,
        }


def _short(filename: str, line: int) -> str:
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f"{filename}:{line}"


# -- the Discord side (this process) --------------------------------------------------------------


class Jobs:
    """Runs img2img jobs through the fake Discord, a few at a time, and checks each result."""

    def __init__(self, fake: Any, image: bytes) -> None:
        self.fake = fake
        self.attachment = fake.attachment(image, "input.png")
        self.users = [fake.world.users[f"user{i:03d}"] for i in range(USERS)]
        self.done = 0

    async def run(self, count: int, models: Sequence[str | None] = (None,)) -> None:
        numbers = iter(range(self.done, self.done + count))

        async def worker() -> None:
            for number in numbers:
                await self.one(number, models[number % len(models)])

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def one(self, number: int, model: str | None) -> None:
        from fakediscord.records import EventKind

        options: dict[str, Any] = {"prompt": "a red fox", "image": self.attachment, **FAST_JOB}
        options["seed"] = number
        if model:
            options["model_id"] = model
        mark = self.fake.mark()
        user = self.users[number % USERS]
        handle = await self.fake.slash_command("img2img", options, user=user)

        def finished(event: Any) -> bool:
            message = event.message
            return (
                event.kind in (EventKind.MESSAGE_CREATED, EventKind.MESSAGE_EDITED)
                and event.interaction_id == handle.id
                and message is not None
                and (len(message.attachments) == 1 or message.ephemeral)
            )

        event = await self.fake.wait_for(finished, timeout=120, after=mark)
        if event.message.ephemeral:
            raise RuntimeError(f"job {number} was refused: {event.message.content}")
        self.done += 1


async def checkpoint(bot: BotProcess, *, snapshot: bool = True) -> dict[str, Any]:
    bot.process.send_signal(signal.SIGUSR1 if snapshot else signal.SIGUSR2)
    numbers: dict[str, Any] = json.loads(await bot.expect("checkpoint"))
    numbers["rss_outside"] = rss_bytes(bot.pid)
    numbers["at"] = time.monotonic()
    return numbers


async def drive(args: argparse.Namespace) -> int:
    from fakediscord import FakeDiscord
    from tiny_models import png_bytes, tiny_models

    # A progress edit still in flight when its job finishes is cancelled by the bot; the
    # fake's server then logs that it could not answer: not a failure.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

    marks = [50, 100, 150] if args.quick else [50, 100, 200, 300, 400, 500]
    alternating = 9 if args.quick else 30
    print(f"building the tiny models ({marks[-1]} jobs, then {alternating} alternating)…")
    models = tiny_models()
    image = png_bytes()
    gc.collect()
    gc.freeze()
    settings = {
        "limits": {"daily_quota_user": 0, "max_pending_per_user": 10},
        "progress_interval": 0.1,  # progress edits on every job: their tasks must not pile up
    }
    rows: list[tuple[int, dict[str, Any]]] = []
    with workdir("bot-memory-") as tmp:
        async with FakeDiscord(world=make_world(USERS)) as fake:
            extra = [
                "--settings",
                json.dumps(settings),
                "--detector",
                "real",
                "--batch-size",
                str(CONCURRENCY),
                "--cache-size",
                str(CACHE_SIZE),
            ]
            if args.trace:
                extra.append("--trace")
            bot = await BotProcess.start(
                Path(__file__), "bot", fake, Path(tmp), models.models_file, *extra
            )
            try:
                await bot.expect("ready")
                jobs = Jobs(fake, image)
                for mark in marks:
                    await jobs.run(mark - jobs.done)
                    rows.append((mark, await checkpoint(bot)))
                    print(f"{mark:4d} jobs: RSS {rows[-1][1]['rss'] / MIB:7.1f} MiB", flush=True)
                await jobs.run(alternating, MODELS)
                after_alternating = await checkpoint(bot, snapshot=False)
            finally:
                report = await bot.stop()
    return 0 if print_table(rows, after_alternating, report, alternating) else 1


def print_table(
    rows: list[tuple[int, dict[str, Any]]],
    alternating_row: dict[str, Any],
    report: dict[str, Any],
    alternating: int,
) -> bool:
    print()
    print(
        f"{'jobs':>6}{'RSS MiB':>10}{'vs 50':>8}{'objects':>10}{'tasks':>7}{'views':>7}"
        f"{'msg cache':>11}{'queued':>8}"
    )
    base = rows[0][1]["rss"]
    for jobs, row in rows:
        print(
            f"{jobs:>6}{row['rss'] / MIB:>10.1f}{row['rss'] / base:>8.3f}{row['objects']:>10}"
            f"{row['tasks']:>7}{row['views']:>7}{row['messages']:>11}"
            f"{row['waiting'] + row['running']:>8}"
        )
    end = rows[-1]
    ratio = end[1]["rss"] / base
    print(
        f"{'+' + str(alternating):>6}{alternating_row['rss'] / MIB:>10.1f}"
        f"{alternating_row['rss'] / base:>8.3f}{alternating_row['objects']:>10}"
        f"{alternating_row['tasks']:>7}{alternating_row['views']:>7}"
        f"{alternating_row['messages']:>11}"
        f"{alternating_row['waiting'] + alternating_row['running']:>8}"
        "  (after the jobs alternating over 3 models)"
    )
    print()
    print(
        f"pipeline cache of {CACHE_SIZE}, {alternating} jobs over {len(MODELS)} models: "
        f"{report['loads']} loads, at most {report['max_cached']} pipelines in the cache, "
        f"at most {report['max_alive']} alive in memory"
    )
    start = rows[0][1]["at"]
    pauses = [(pause, generation) for end, pause, generation in report["gc"] if end > start]
    longest = max((pause for pause, _ in pauses), default=0.0)
    full = sum(1 for _, generation in pauses if generation == 2)
    print(
        f"garbage collector after {rows[0][0]} jobs: longest pause {longest * 1000:.0f} ms,"
        f" {full} full collections"
    )
    for line in report.get("growth", []):
        print("  " + line)
    print()
    checks = [
        (
            f"RSS after {end[0]} jobs / after {rows[0][0]} = {ratio:.3f} <= {GROWTH_TARGET:.2f}",
            ratio <= GROWTH_TARGET,
        ),
        (
            f"pipelines in the cache at most {report['max_cached']} <= {CACHE_SIZE}",
            0 < report["max_cached"] <= CACHE_SIZE,
        ),
        (
            f"evicted pipelines freed: at most {report['max_alive']} alive <= {CACHE_SIZE}",
            0 < report["max_alive"] <= CACHE_SIZE,
        ),
    ]
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    return all(ok for _, ok in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Issue #6 target 5: memory stays bounded.")
    parser.add_argument("--quick", action="store_true", help="150 jobs, then 9 alternating")
    parser.add_argument("--trace", action="store_true", help="tracemalloc growth from 50 jobs")
    add_child_arguments(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.serve:
        asyncio.run(serve(args, MemoryInstrument(trace=args.trace), sample_lag=False))
        return 0
    return asyncio.run(drive(args))


if __name__ == "__main__":
    sys.exit(main())
