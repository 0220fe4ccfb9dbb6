"""Acknowledgements first (bot/acks.py): the tracker on its own, its aiohttp trace against a
loopback server, and the real bot under a burst from the loopback Discord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from aiohttp import web
from bot_harness import running_bot
from fakediscord import FakeDiscord
from fakediscord.records import EventKind
from fakediscord.world import default_world
from test_bot_e2e import FAST, INPUT, is_queued, make_backend
from test_local_backend import Gate
from tiny_models import TinyModels

from bot.acks import AckTracker, callback_interaction_id

torch.set_num_threads(1)
pytest_plugins = ["fakediscord.fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v10/interactions/123/a-token/callback", 123),
        ("/api/v10/interactions/123/a-token/callback/", 123),
        ("/interactions/9/t/callback", 9),
        ("/api/v10/webhooks/1/a-token/messages/@original", None),
        ("/api/v10/interactions/abc/a-token/callback", None),
        ("/api/v10/channels/5/messages", None),
        ("/callback", None),
    ],
)
def test_callback_interaction_id(path: str, expected: int | None) -> None:
    assert callback_interaction_id(path) == expected


async def test_settled_returns_at_once_when_nothing_is_pending() -> None:
    tracker = AckTracker(max_wait=60)
    tracker.received(1)
    tracker.answered(1)
    await asyncio.wait_for(tracker.settled(), 5)
    assert tracker.pending == 0


async def test_settled_waits_for_every_answer() -> None:
    tracker = AckTracker(max_wait=60)
    tracker.received(1)
    tracker.received(2)
    waiter = asyncio.create_task(tracker.settled())
    await asyncio.sleep(0)
    tracker.answered(1)
    await asyncio.sleep(0)
    assert not waiter.done(), "one interaction still waits for its answer"
    tracker.answered(2)
    await asyncio.wait_for(waiter, 5)
    assert tracker.pending == 0


async def test_settled_gives_up_after_max_wait() -> None:
    tracker = AckTracker(max_wait=0.05)
    tracker.received(1)
    await asyncio.wait_for(tracker.settled(), 5)
    assert tracker.pending == 1  # not answered, yet the follow-up work went on


async def test_an_unanswered_interaction_stops_counting_at_the_deadline() -> None:
    clock = Clock()
    tracker = AckTracker(max_wait=60, expiry=3.0, clock=clock)
    tracker.received(1)
    clock.now += 2.0
    tracker.received(2)
    clock.now += 1.5  # 1 is past Discord's deadline, 2 is not
    waiter = asyncio.create_task(tracker.settled())
    await asyncio.sleep(0)
    assert tracker.pending == 1
    assert not waiter.done()
    tracker.answered(2)
    await asyncio.wait_for(waiter, 5)


@pytest.fixture
async def callback_server() -> AsyncIterator[str]:
    async def callback(request: web.Request) -> web.Response:
        if request.match_info["token"] == "expired":
            return web.json_response({"code": 10062}, status=404)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v10/interactions/{id}/{token}/callback", callback)
    app.router.add_get("/api/v10/gateway", lambda _: web.json_response({}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/v10"
    finally:
        await runner.cleanup()


async def test_the_trace_marks_an_interaction_answered_when_its_callback_ends(
    callback_server: str,
) -> None:
    tracker = AckTracker(max_wait=60)
    for interaction_id in (11, 12, 13):
        tracker.received(interaction_id)
    async with aiohttp.ClientSession(trace_configs=[tracker.trace()]) as session:
        async with session.get(f"{callback_server}/gateway"):
            pass
        assert tracker.pending == 3  # other requests answer nothing
        async with session.post(f"{callback_server}/interactions/11/tok/callback", json={}):
            pass
        async with session.post(f"{callback_server}/interactions/12/expired/callback", json={}):
            pass  # refused by Discord: nothing more will answer it either
        assert tracker.pending == 1
        dead = "http://127.0.0.1:9/api/v10/interactions/13/tok/callback"  # nothing listens
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(dead, json={})
    assert tracker.pending == 0
    await asyncio.wait_for(tracker.settled(), 5)


# -- the bot under a burst ------------------------------------------------------------------------

BURST = 24


async def test_a_burst_is_acknowledged_before_any_follow_up(
    models: TinyModels, tmp_path: Path
) -> None:
    """Every defer of a burst reaches Discord before the first job of it is queued, and the
    tracker, fed by the gateway and the HTTP trace, ends empty."""
    world = default_world()
    users = [world.new_user(f"user{index:02d}") for index in range(BURST)]
    for user in users:
        world.add_member(world.guild, user)
    gate = Gate()
    backend = make_backend(models, gate)
    async with (
        FakeDiscord(world=world) as fake,
        running_bot(fake, backend, tmp_path / "jobs.sqlite3", models.models_file) as bot,
    ):
        try:
            attachment = fake.attachment(INPUT, "input.png")

            def options(seed: int) -> dict[str, Any]:
                return {"prompt": "a fox", "image": attachment, "seed": seed, **FAST}

            gate.close()  # a first job holds the worker: the burst's jobs all wait in the queue
            await fake.slash_command("img2img", options(999))
            await gate.wait_entered()
            mark = fake.mark()

            handles = await asyncio.gather(
                *(fake.slash_command("img2img", options(i), user=u) for i, u in enumerate(users))
            )
            ids = {handle.id for handle in handles}
            queued: dict[int, int] = {}  # interaction → seq of its first "Queued:" status

            def all_queued(event: Any) -> bool:
                if event.message is not None and is_queued(event.message):
                    queued.setdefault(event.interaction_id, event.seq)
                return ids <= queued.keys()

            await fake.wait_for(all_queued, timeout=120, after=mark, description="all queued")
            events = [e for e in fake.events if e.seq > mark and e.interaction_id in ids]
            callbacks = [e.seq for e in events if e.kind is EventKind.CALLBACK]
            first_status = min(queued.values())
            assert len(callbacks) == BURST
            assert max(callbacks) < first_status
            assert {e.callback.type for e in events if e.callback is not None} == {5}
            assert bot.acks.pending == 0
        finally:
            gate.opened.set()


async def test_follow_up_work_waits_for_interactions_still_unanswered(
    models: TinyModels, tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    """A job's image is loaded and queued only once no other interaction awaits its answer."""
    gate = Gate()
    backend = make_backend(models, gate)
    async with running_bot(
        fake_discord, backend, tmp_path / "jobs.sqlite3", models.models_file
    ) as bot:
        tracker = bot.acks
        tracker.max_wait = 60.0
        tracker.expiry = 60.0  # 424242 stays unanswered for as long as the test needs
        parked = asyncio.Event()
        settled = tracker.settled

        async def spy() -> None:
            parked.set()
            await settled()

        tracker.settled = spy  # type: ignore[method-assign]
        tracker.received(424242)  # another interaction arrived; its handler has not answered
        image = fake_discord.attachment(INPUT, "in.png")
        handle = await fake_discord.slash_command(
            "img2img", {"prompt": "a fox", "image": image, **FAST}
        )
        await handle.wait_response(timeout=30)
        await asyncio.wait_for(parked.wait(), 30)
        assert await bot.store.unfinished() == []  # deferred, but not queued yet
        edited = fake_discord.events_of(EventKind.MESSAGE_EDITED)
        assert not [e for e in edited if e.interaction_id == handle.id]
        tracker.answered(424242)
        await fake_discord.wait_event(
            EventKind.MESSAGE_EDITED, interaction_id=handle.id, timeout=60
        )  # the job's first status
        assert tracker.pending == 0


async def test_a_slow_link_does_not_hold_up_other_users_attachments(
    models: TinyModels, tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    """Attachment loads are bounded; a link to a host that takes its time is not counted."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_image(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=INPUT, content_type="image/png")

    app = web.Application()
    app.router.add_get("/slow.png", slow_image)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    slow_url = f"http://127.0.0.1:{runner.addresses[0][1]}/slow.png"
    backend = make_backend(models, Gate())
    try:
        async with running_bot(
            fake_discord, backend, tmp_path / "jobs.sqlite3", models.models_file
        ) as bot:
            bot.image_loads.attachments = asyncio.Semaphore(1)
            world = fake_discord.world
            slow = await fake_discord.slash_command(
                "img2img", {"prompt": "a fox", "image_url": slow_url, **FAST}, user=world.alice
            )
            await asyncio.wait_for(arrived.wait(), 30)  # alice's download hangs on its host
            image = fake_discord.attachment(INPUT, "in.png")
            quick = await fake_discord.slash_command(
                "img2img", {"prompt": "a fox", "image": image, **FAST}, user=world.users["bob"]
            )
            await fake_discord.wait_event(
                EventKind.MESSAGE_EDITED, interaction_id=quick.id, timeout=60
            )  # bob's job went on meanwhile
            release.set()
            await fake_discord.wait_event(
                EventKind.MESSAGE_EDITED, interaction_id=slow.id, timeout=60
            )
    finally:
        release.set()
        await runner.cleanup()
