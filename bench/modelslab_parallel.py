"""The ModelsLab backend waits in parallel: 50 jobs against the loopback fake of the API.

    .venv/bin/python bench/modelslab_parallel.py [--jobs N] [--ready-after S] [--in-flight K]

Issue #6, target 4. The fake (tests/modelslab_fake.py) answers every submission "processing" with
`eta` 1 s, and a job is done 1 s after its submission (`ready_after`, by the clock; fetches before
that answer "processing" again). The backend runs with `max_in_flight=10` and its default
`PollPolicy` and `RetryPolicy` (the real ones, not the tests' fast ones); the N jobs are handed to
it at once, as the bot's queue does while the backend reports free capacity. Targets: all done
within 8 s, never more than 10 jobs at the API at once (the fake counts them), and at most 3
fetch calls per job on average (no busy polling).

Rows, all in the same run against the same fake:
- naive sequential loop (the baseline): one job at a time, a fetch every 0.1 s;
- the backend with 10 in flight but the same 0.1 s polling (parallelism without the policy);
- the backend as shipped (10 in flight, default policy: wait about `eta`, then back off).
Every job runs the whole backend path: init image decode, submit, wait, download, decode,
`finish_images` (no detector: `safety_checker` "no"), so the rows differ only in how they wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _tables import table
from modelslab_fake import API_KEY, FakeModelsLab, png_bytes

from inference.modelslab.backend import ModelsLabBackend
from inference.modelslab.endpoints import ApiPaths, EndpointPool
from inference.modelslab.polling import PollPolicy
from inference.port import CancelToken, Job
from inference.request import Img2ImgRequest

WALL_TARGET_S = 8.0
FETCHES_PER_JOB_TARGET = 3.0
NAIVE_POLL = PollPolicy(min_delay=0.1, first_backoff=0.1, factor=1.0, max_delay=0.1)
INIT = png_bytes(96, 64, (200, 40, 30))


@dataclass(frozen=True)
class Outcome:
    label: str
    jobs: int
    wall_s: float
    cpu_s: float
    fetches: int
    max_in_flight: int
    latencies: list[float]
    failures: int

    @property
    def fetches_per_job(self) -> float:
        return self.fetches / self.jobs


def make_job(width: int) -> Job:
    body = {"prompt": "a red fox in snow", "safety_checker": "no", "width": width, "height": width}
    request = Img2ImgRequest.model_validate(body, context={"allow_private_urls": True})
    return Job(id=uuid.uuid4().hex[:12], request=request, init_image=INIT)


async def run_row(
    label: str,
    *,
    jobs: int,
    in_flight: int,
    poll: PollPolicy | None,
    sequential: bool,
    ready_after: float,
    eta: float,
    width: int,
) -> Outcome:
    async with FakeModelsLab() as fake:
        fake.ready_after, fake.eta = ready_after, eta
        backend = ModelsLabBackend(
            pool=EndpointPool([fake.base_url], [SecretStr(API_KEY)]),
            paths=ApiPaths(),
            detector=None,
            threshold=0.5,
            max_in_flight=in_flight,
            poll=poll,  # None: the backend's default PollPolicy()
        )
        latencies: list[float] = []
        failures = 0

        async def one(job: Job) -> None:
            nonlocal failures
            start = time.perf_counter()
            try:
                await backend.generate(job, lambda event: None, CancelToken())
            except Exception as exc:  # report, do not hide: counted and printed
                failures += 1
                print(f"{label}: job {job.id} failed: {exc!r}", file=sys.stderr)
            latencies.append(time.perf_counter() - start)

        batch = [make_job(width) for _ in range(jobs)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            if sequential:
                for job in batch:
                    await one(job)
            else:
                await asyncio.gather(*(one(job) for job in batch))
        finally:
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            await backend.aclose()
        return Outcome(
            label=label,
            jobs=jobs,
            wall_s=wall,
            cpu_s=cpu,
            fetches=len(fake.fetches),
            max_in_flight=fake.max_in_flight,
            latencies=latencies,
            failures=failures,
        )


async def main_async(args: argparse.Namespace) -> int:
    common = {
        "jobs": args.jobs,
        "ready_after": args.ready_after,
        "eta": args.eta,
        "width": args.width,
    }
    baseline = await run_row(
        "naive sequential loop, 0.1 s polling (baseline)",
        in_flight=1,
        poll=NAIVE_POLL,
        sequential=True,
        **common,
    )
    parallel_naive = await run_row(
        f"backend, {args.in_flight} in flight, 0.1 s polling",
        in_flight=args.in_flight,
        poll=NAIVE_POLL,
        sequential=False,
        **common,
    )
    shipped = await run_row(
        f"backend, {args.in_flight} in flight, default PollPolicy",
        in_flight=args.in_flight,
        poll=None,
        sequential=False,
        **common,
    )
    policy = PollPolicy()
    print(
        f"# modelslab_parallel {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; "
        f"{args.jobs} jobs, {args.width}x{args.width} outputs; fake: eta {args.eta:g} s, "
        f"ready {args.ready_after:g} s after submission; default {policy}"
    )
    print()
    rows = []
    for row in (baseline, parallel_naive, shipped):
        ordered = sorted(row.latencies)
        rows.append(
            [
                row.label,
                f"{row.wall_s:.2f}",
                f"{row.wall_s / baseline.wall_s:.3f}",
                str(row.fetches),
                f"{row.fetches_per_job:.2f}",
                f"{row.fetches / baseline.fetches:.3f}",
                str(row.max_in_flight),
                f"{statistics.median(ordered):.2f}",
                f"{ordered[-1]:.2f}",
                f"{row.cpu_s:.2f}",
                str(row.failures),
            ]
        )
    headers = [
        "run",
        "wall s",
        "wall / baseline",
        "fetches",
        "fetches/job",
        "fetches / baseline",
        "max in flight",
        "job p50 s",
        "job max s",
        "CPU s",
        "failed",
    ]
    print(table(headers, rows))
    print()
    checks = [
        (f"all {args.jobs} done within {WALL_TARGET_S:g} s", shipped.wall_s <= WALL_TARGET_S),
        (
            f"never more than {args.in_flight} in flight at the API",
            shipped.max_in_flight <= args.in_flight,
        ),
        (
            f"at most {FETCHES_PER_JOB_TARGET:g} fetches per job on average",
            shipped.fetches_per_job <= FETCHES_PER_JOB_TARGET,
        ),
        ("no job failed", shipped.failures == 0),
    ]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in checks) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs per run (default 50)")
    parser.add_argument("--in-flight", type=int, default=10, help="max_in_flight (default 10)")
    parser.add_argument(
        "--ready-after", type=float, default=1.0, help="s from submission to done (default 1)"
    )
    parser.add_argument("--eta", type=float, default=1.0, help="the eta the fake reports (1 s)")
    parser.add_argument("--width", type=int, default=512, help="output side in px (default 512)")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
