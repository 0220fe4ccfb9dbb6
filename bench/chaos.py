"""Chaos run (issue 10, "Done when"): jobs while Discord fails at random and the bot is killed.

`--jobs` /img2img commands are sent to the real bot while the loopback Discord (tests/fakediscord)
answers a random `--fault-rate` of the bot's REST requests with 429, 500 or 503 (half of the 5xx
after applying the request: the answer is lost, not the request), and the bot process is
SIGKILLed and started again `--kills` times. Then the bot is left to finish. Every accepted job
(a row in the bot's job store) must end with exactly one result message or one failure message,
counted per job id in the fake's message store (result files are named `img2img-<job>-N`,
failure texts say "(job `<job>`)"): none lost, none duplicated. The seed is printed; the same
seed replays the same faults and kill times (as far as the order of concurrent requests allows).

    .venv/bin/python bench/chaos.py                         # 50 jobs, 3 kills, 20 % faults
    .venv/bin/python bench/chaos.py --seed 7 --jobs 10 --kills 1

The bot runs as a real subprocess (`--serve`, started by this script) pointed at the loopback
Discord in this process. Its image generator is a stand-in taking 0.2-1 s per job (the delivery
is under test, not the images); `--backend local` uses the tests' tiny diffusers model instead. A
bot that exits on its own (Discord refusing its login under the faults) is started again, as a
container's restart policy would. Exit status: 0 when every accepted job ended exactly once.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import io
import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

TOKEN = "MTIz.fake-chaos-TOKEN"
UNSETTLED = (
    "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running', 'generated')"
    " OR (status IN ('failed', 'cancelled') AND result_message_id IS NULL)"
)


# -- the bot side (a child process) ---------------------------------------------------------------


def small_png(seed: int) -> bytes:
    """A 16×16 PNG of noise (no torch: the tests' image helpers would import it on the loop)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (16, 16), random.Random(seed).randbytes(16 * 16 * 3)).save(buffer, "PNG")
    return buffer.getvalue()


class StandInBackend:
    """An image generator that takes 0.2-1 s per job and returns small real PNGs."""

    name = "stand-in"
    capacity = 2

    async def generate(self, job: Any, progress: Any, cancel: Any) -> Any:
        from inference import GeneratedImage, Img2ImgResult, ProgressEvent
        from inference.result import effective_meta

        rng = random.Random(job.id)
        steps = 4
        for step in range(steps):
            cancel.raise_if_cancelled()
            progress(ProgressEvent(job_id=job.id, stage="running", step=step, total_steps=steps))
            await asyncio.sleep(rng.uniform(0.05, 0.25))
        seeds = job.request.seeds(rng.randrange(2**31))
        images = [
            GeneratedImage(data=small_png(seed), format="png", width=16, height=16, seed=seed)
            for seed in seeds
        ]
        return Img2ImgResult(
            id=job.id,
            images=images,
            nsfw_content_detected=[False] * len(images),
            meta=effective_meta(job.request, width=16, height=16, seeds=seeds),
        )

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        return None


def make_backend(args: argparse.Namespace) -> Any:
    if args.backend == "stand-in":
        return StandInBackend()
    import torch

    torch.set_num_threads(1)
    from bot_burst import NoDetector

    from inference.local.backend import LocalBackend
    from inference.local.registry import ModelRegistry

    registry = ModelRegistry.load(Path(args.models_file))
    return LocalBackend(registry, device="cpu", batch_size=1, detector=NoDetector())


async def serve(args: argparse.Namespace) -> int:
    """Run the real bot until SIGTERM (a clean stop) or SIGKILL; 3 when the login failed."""
    import aiohttp
    import discord

    from bot.__main__ import build_bot
    from bot.client import point_discord_at
    from bot.config import BotSettings, DiscordSettings, StoreSettings
    from inference import InferenceSettings
    from inference.settings import IngestSettings

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("bot").setLevel(logging.INFO)
    point_discord_at(args.api_base, args.gateway_url)
    settings = BotSettings(
        discord=DiscordSettings(token=TOKEN, api_base=args.api_base, gateway_url=args.gateway_url),
        store=StoreSettings(database=Path(args.database)),
        **json.loads(args.settings),
    )
    inference_settings = InferenceSettings(
        ingest=IngestSettings(allow_private_urls=True), models_file=Path(args.models_file)
    )
    bot = build_bot(settings, inference_settings, make_backend(args))
    bot._connection.guild_ready_timeout = 0.05
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bot:
        try:
            await bot.login(TOKEN)
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            print(f"the login failed: {exc}", file=sys.stderr)
            return 3
        runner = asyncio.create_task(bot.connect())
        stopping = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(bot.wait_until_ready())
        await asyncio.wait([ready, runner], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print("ready", flush=True)
        await asyncio.wait([runner, stopping], return_when=asyncio.FIRST_COMPLETED)
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return 0


# -- the Discord side (this process) --------------------------------------------------------------


@dataclass
class BotRunner:
    """Starts the bot process, restarts it when it exits on its own, kills it on demand."""

    args: argparse.Namespace
    fake: Any
    database: Path
    models_file: Path
    logs: Path
    settings: dict[str, Any]
    starts: int = 0
    exits: int = 0
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start a bot and wait until it is connected (starting it again while it exits)."""
        while True:
            self.starts += 1
            log = self.logs / f"bot-{self.starts}.log"
            command = [
                sys.executable,
                str(Path(__file__)),
                "--serve",
                "--api-base",
                self.fake.api_base,
                "--gateway-url",
                self.fake.gateway_url,
                "--database",
                str(self.database),
                "--models-file",
                str(self.models_file),
                "--backend",
                self.args.backend,
                "--settings",
                json.dumps(self.settings),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            with log.open("wb") as stderr:
                self.process = await asyncio.create_subprocess_exec(
                    *command, stdout=subprocess.PIPE, stderr=stderr, env=env
                )
            assert self.process.stdout is not None
            line = await asyncio.wait_for(self.process.stdout.readline(), 120)
            if line.strip() == b"ready":
                return
            await self.process.wait()
            self.exits += 1
            if self.exits > 20:
                raise RuntimeError(f"the bot keeps exiting; see {log}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 120)


@dataclass
class Tally:
    seed: int
    fired: int
    kills: int
    accepted: list[str] = field(default_factory=list)
    results: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    stale_cancel_buttons: int = 0
    unanswered: int = 0  # interactions the bot could not acknowledge (callback failed or late)
    starts: int = 0
    exits: int = 0
    settled: bool = True
    seconds: float = 0.0

    @property
    def lost(self) -> list[str]:
        return [j for j in self.accepted if self.results[j] + self.failures[j] == 0]

    @property
    def duplicated(self) -> list[str]:
        return [j for j in self.accepted if self.results[j] + self.failures[j] > 1]

    @property
    def ok(self) -> bool:
        return self.settled and not self.lost and not self.duplicated

    def report(self) -> str:
        delivered = sum(1 for j in self.accepted if self.results[j] == 1 and not self.failures[j])
        failed = sum(1 for j in self.accepted if self.failures[j] == 1 and not self.results[j])
        faults = ", ".join(f"{k}: {v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"chaos seed {self.seed}: {self.fired} jobs fired, {self.kills} SIGKILLs",
            f"  faults injected: {sum(self.faults.values())} ({faults})",
            f"  bot starts: {self.starts} (of which {self.exits} after it exited on its own)",
            f"  accepted jobs: {len(self.accepted)} (not accepted: "
            f"{self.fired - len(self.accepted)}: the interaction failed under the faults before"
            f" the job was stored; {self.unanswered} of them never acknowledged)",
            f"  one result message: {delivered} · one failure message: {failed}",
            f"  lost: {len(self.lost)} {self.lost or ''}",
            f"  duplicated: {len(self.duplicated)} {self.duplicated or ''}",
            f"  every job settled in the store: {self.settled}",
            f"  status messages left with a Cancel button: {self.stale_cancel_buttons}",
            f"  wall time: {self.seconds:.0f} s",
            "PASS" if self.ok else "FAIL",
        ]
        return "\n".join(lines)


def make_world(users: int) -> Any:
    from fakediscord.world import default_world

    world = default_world()
    for index in range(users):
        world.add_member(world.guild, world.new_user(f"user{index:03d}"))
    return world


def unsettled(database: Path) -> int:
    """Jobs whose outcome is not shown yet (-1 before the bot made its database)."""
    if not database.exists():
        return -1
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            return int(conn.execute(UNSETTLED).fetchone()[0])
    except sqlite3.OperationalError:
        return -1


async def wait_settled(database: Path, within: float, quiet: float = 2.0) -> bool:
    """Wait (polling the bot's database, another process) until every job's outcome is shown
    and stays so for `quiet` seconds (jobs still being submitted appear late)."""
    deadline = time.monotonic() + within
    settled_since: float | None = None
    while time.monotonic() < deadline:
        if unsettled(database) == 0:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since >= quiet:
                return True
        else:
            settled_since = None
        await asyncio.sleep(0.25)
    return False


def count_outcomes(fake: Any, tally: Tally) -> None:
    """Result and failure messages per job id, over every message the fake ever stored."""
    from fakediscord import EventKind

    with fake.state.lock:
        messages = list(fake.state.messages.values())
    for message in messages:
        for job_id in tally.accepted:
            marker, named = f"img2img-{job_id}-", f"(job `{job_id}`)"
            if any(marker in a.filename for r in message.revisions for a in r.attachments):
                tally.results[job_id] += 1
            elif any(named in r.content for r in message.revisions):
                tally.failures[job_id] += 1
        live_cancel = any(b.get("label") == "Cancel" for b in message.buttons())
        if live_cancel and not message.deleted:
            tally.stale_cancel_buttons += 1
    for event in fake.events_of(EventKind.FAULT_INJECTED):
        applied = " applied" if event.data["applied"] else ""
        tally.faults[f"{event.data['status']}{applied}"] += 1
    tally.faults["429"] += len(fake.events_of(EventKind.RATE_LIMITED))


async def run_chaos(
    *,
    jobs: int,
    kills: int,
    fault_rate: float,
    seed: int,
    workdir: Path,
    backend: str = "stand-in",
    settle_within: float = 180.0,
    say: Any = print,
) -> Tally:
    """The chaos run; its tally (`Tally.ok`: every accepted job ended exactly once)."""
    from fakediscord import FakeDiscord

    rng = random.Random(seed)
    started = time.monotonic()
    models_file = workdir / "models.toml"
    if backend == "local":
        from tiny_models import tiny_models

        models_file = tiny_models().models_file
    database = workdir / "jobs.sqlite3"
    args = argparse.Namespace(backend=backend)
    settings = {
        "limits": {"max_pending_per_user": jobs, "max_pending_total": 10 * jobs},
        "shutdown_grace": 5.0,
        "progress_interval": 0.2,
        "delivery": {"retry_first": 0.2, "retry_cap": 2.0},
    }
    tally = Tally(seed=seed, fired=0, kills=kills)
    interactions: list[int] = []
    image = small_png(seed)
    async with FakeDiscord(world=make_world(8)) as fake:
        fake.inject_random_faults(fault_rate, seed=seed)
        runner = BotRunner(args, fake, database, models_file, workdir, settings)
        await runner.start()
        users = [fake.world.users[f"user{i:03d}"] for i in range(8)]
        waves = [jobs * w // (kills + 1) for w in range(kills + 2)]
        for wave in range(kills + 1):
            for _ in range(waves[wave + 1] - waves[wave]):
                options = {"prompt": "chaos", "image": fake.attachment(image, "in.png")}
                fired = await fake.slash_command("img2img", options, user=rng.choice(users))
                interactions.append(fired.id)
                tally.fired += 1
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            if wave < kills:
                await asyncio.sleep(rng.uniform(0.3, 2.5))  # some jobs mid-run, some mid-post
                await runner.kill()
                say(f"killed the bot ({wave + 1}/{kills})", flush=True)
                await runner.start()
        tally.settled = await wait_settled(database, settle_within)
        await runner.stop()
        tally.starts, tally.exits = runner.starts, runner.exits
        with contextlib.closing(sqlite3.connect(database)) as conn:
            tally.accepted = [row[0] for row in conn.execute("SELECT id FROM jobs")]
        count_outcomes(fake, tally)
        tally.unanswered = sum(1 for i in interactions if not fake.interaction(i).callbacks)
    tally.seconds = time.monotonic() - started
    return tally


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    keep = os.environ.get("BENCH_KEEP")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        yield Path(tmp)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Issue 10: delivery under Discord faults.")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--backend", choices=("stand-in", "local"), default="stand-in")
    hidden = argparse.SUPPRESS
    parser.add_argument("--serve", action="store_true", help=hidden)
    parser.add_argument("--api-base", help=hidden)
    parser.add_argument("--gateway-url", help=hidden)
    parser.add_argument("--database", help=hidden)
    parser.add_argument("--models-file", help=hidden)
    parser.add_argument("--settings", default="{}", help=hidden)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.serve:
        return asyncio.run(serve(args))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"chaos seed {seed} (replay with --seed {seed})", flush=True)
    with workdir() as tmp:
        tally = asyncio.run(
            run_chaos(
                jobs=args.jobs,
                kills=args.kills,
                fault_rate=args.fault_rate,
                seed=seed,
                workdir=tmp,
                backend=args.backend,
            )
        )
    print(tally.report())
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())
