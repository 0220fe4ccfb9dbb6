"""The bot's flow against the ModelsLab backend and its loopback API (no GPU, no torch)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from bot_harness import BOT_TOKEN, button_labels, has_images, image_sizes, running_bot
from fakediscord import FakeDiscord
from fakediscord.records import EventKind
from modelslab_fake import API_KEY, FakeModelsLab, Reply
from PIL import Image
from pydantic import SecretStr
from test_modelslab import FAST_POLL, FAST_RETRY, FakeDetector

from bot.client import Img2ImgBot
from inference.modelslab.backend import ModelsLabBackend
from inference.modelslab.endpoints import ApiPaths, EndpointPool

pytest_plugins = ["fakediscord.fixtures"]

WAIT = 60.0
MODELS_FILE = Path("no-models-file.toml")  # optional with this backend


def png(width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def api() -> AsyncIterator[FakeModelsLab]:
    async with FakeModelsLab() as fake:
        fake.polls = 2  # every job answers "processing" twice before it is done
        yield fake


def backend_for(api: FakeModelsLab, score: float = 0.0) -> ModelsLabBackend:
    return ModelsLabBackend(
        pool=EndpointPool([api.base_url], [SecretStr(API_KEY)]),
        paths=ApiPaths(),
        detector=FakeDetector(score),
        threshold=0.5,
        request_timeout=5.0,
        job_timeout=20.0,
        retry=FAST_RETRY,
        poll=FAST_POLL,
    )


@pytest.fixture
async def bot(fake_discord: FakeDiscord, api: FakeModelsLab, tmp_path: Path) -> AsyncIterator[Any]:
    async with running_bot(
        fake_discord, backend_for(api), tmp_path / "db.sqlite3", MODELS_FILE
    ) as running:
        yield running


async def slash(fake: FakeDiscord, **options: Any) -> Any:
    body = {"prompt": "a red fox", "image": fake.attachment(png(), "fox.png"), **options}
    return await fake.slash_command("img2img", body, user=fake.world.bob)


async def test_a_job_goes_through_the_api_and_comes_back_as_one_message(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    inter = await slash(fake_discord, samples=2, width=64, height=64, seed=3)
    ack = await inter.wait_response()
    assert ack.type == 5 and ack.elapsed < 3
    done = await inter.wait_original(has_images(2), timeout=WAIT)
    assert image_sizes(done) == [(64, 64), (64, 64)]
    assert button_labels(done) == [
        *("Reroll", "Remix", "Delete", "Use 1", "Use 2", "Upscale 1", "Upscale 2"),
        *("Vary (subtle) 1", "Vary (subtle) 2", "Vary (strong) 1", "Vary (strong) 2"),
    ]
    assert len(api.submits) == 1 and len(api.fetches) >= 2
    body = api.submits[0].body
    assert body is not None and body["samples"] in (2, "2") and body["prompt"] == "a red fox"
    # The attachment travels as its bytes, not as its expiring CDN link.
    assert body["base64"] == "yes" and base64.b64decode(body["init_image"]) == png()
    assert "only" not in done.content.lower()


async def test_fewer_images_than_asked_for_are_posted_with_a_note(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    api.returned = 1
    inter = await slash(fake_discord, samples=3, width=64, height=64)
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    assert image_sizes(done) == [(64, 64)]
    assert "Only 1 of the 3 images" in done.content


async def test_images_the_api_flags_are_spoilered_and_censored(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    api.nsfw = [True]
    inter = await slash(fake_discord, width=64, height=64, safety_checker_type="black")
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    assert done.attachments[0].spoiler
    image = Image.open(io.BytesIO(done.attachments[0].data))
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))


async def test_an_api_failure_is_an_ephemeral_message(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    api.script("img2img", Reply(body={"status": "error", "message": "Invalid Api Key"}))
    inter = await slash(fake_discord, width=64, height=64)
    failure = await inter.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    assert "not available" in failure.content and "key" in failure.content.lower()
    assert bot.queue.pending_total == 0


async def test_secrets_never_reach_discord(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    api.script("img2img", Reply(status=503, body="<html>oops</html>", content_type="text/html"))
    first = await slash(fake_discord, width=64, height=64)
    await first.wait_original(has_images(1), timeout=WAIT)
    api.script("img2img", Reply(body={"status": "failed", "id": "", "message": "Failed"}))
    second = await slash(fake_discord, width=64, height=64)
    await second.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    sent = [
        repr((r.content, r.embeds, r.components))
        for channel in (fake_discord.world.general,)
        for m in fake_discord.messages(channel)
        for r in m.revisions
    ]
    sent += [repr(m.revisions) for m in second.followups()]
    for text in sent:
        assert API_KEY not in text and BOT_TOKEN not in text


def more_fetches_than(api: FakeModelsLab, seen: int) -> Callable[[], bool]:
    return lambda: len(api.fetches) > seen


async def stored_external_id(bot: Img2ImgBot, api: FakeModelsLab) -> str:
    """The job's handle (origin|id) once the bot has stored it with the API's request id;
    checked after each fetch (the API keeps answering "processing"), a bounded number of times."""
    await api.wait_until(lambda: bool(api.submits), timeout=WAIT)  # the job is stored by now
    for _ in range(200):
        (record,) = await bot.store.unfinished()
        if record.external_id is not None and not record.external_id.endswith("|unconfirmed"):
            return record.external_id
        await api.wait_until(more_fetches_than(api, len(api.fetches)), timeout=WAIT)
    raise AssertionError("the bot never stored the API's request id")


async def test_a_job_the_api_accepted_is_not_paid_for_again_after_a_restart(
    fake_discord: FakeDiscord, api: FakeModelsLab, tmp_path: Path
) -> None:
    database = tmp_path / "restart.sqlite3"
    api.polls = 10**6  # still processing when the bot stops
    async with running_bot(fake_discord, backend_for(api), database, MODELS_FILE) as first:
        await slash(fake_discord, width=64, height=64, seed=5)
        external_id = await stored_external_id(first, api)
    (accepted,) = api.jobs.values()
    assert external_id == f"{api.base_url}|{accepted.id}" and len(api.submits) == 1
    accepted.polls_left = api.polls = 0  # the API finished the job while the bot was down
    mark = fake_discord.mark()
    async with running_bot(fake_discord, backend_for(api), database, MODELS_FILE) as second:
        assert second.resumed_jobs == 1
        done = await fake_discord.wait_message(
            fake_discord.world.general,
            has_images(1),
            kinds=(EventKind.MESSAGE_CREATED, EventKind.MESSAGE_EDITED),
            timeout=WAIT,
            after=mark,
        )
    assert image_sizes(done) == [(64, 64)]
    assert len(api.submits) == 1, "the job was submitted (and paid for) again after the restart"
