"""End to end: the real discord.py bot, a loopback Discord, the local backend on a tiny model.

The GPU worker is held at a known point with a gate (the engine's hook before each pipeline
call) so queued and running states are reached without sleeps.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bot_harness import BOT_TOKEN, button_labels, has_images, image_sizes, running_bot
from fakediscord import EventKind, FakeDiscord, FakeUser, StoredMessage
from PIL import Image
from test_local_backend import FakeDetector, Gate
from tiny_models import TinyModels, gradient_image, png_bytes

from bot import messages
from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FAST: dict[str, Any] = {"width": 64, "height": 64, "strength": 0.3}
INPUT = png_bytes(gradient_image(96, 64))
WAIT = 120.0


class CrashingGate(Gate):
    """The gate, which can also make the pipeline call crash as torch would (`crash`)."""

    def __init__(self) -> None:
        super().__init__()
        self.crash: Exception | None = None

    def __call__(self, images: int) -> None:
        super().__call__(images)
        if self.crash is not None:
            raise self.crash


@pytest.fixture
def gate() -> CrashingGate:
    return CrashingGate()


def is_queued(message: Any) -> bool:
    """The position the queue reported (shown once the job is really in the queue)."""
    return str(message.content).startswith("Queued:")


def has_seed(seed: int) -> Any:
    def match(message: Any) -> bool:
        files = message.attachments
        return len(files) == 1 and f"seed {seed}" in (files[0].description or "")

    return match


def make_backend(models: TinyModels, gate: Gate, score: float = 0.0) -> LocalBackend:
    return LocalBackend(
        ModelRegistry.load(models.models_file),
        device="cpu",
        batch_size=1,
        detector=FakeDetector(score),
        threshold=0.5,
        oom_hook=gate,
        gather_seconds=0.0,
    )


@pytest.fixture
async def bot(
    fake_discord: FakeDiscord, models: TinyModels, gate: Gate, tmp_path: Path
) -> AsyncIterator[Any]:
    backend = make_backend(models, gate)
    database = tmp_path / "jobs.sqlite3"
    async with running_bot(fake_discord, backend, database, models.models_file) as b:
        try:
            yield b
        finally:
            gate.opened.set()


async def slash(fake: FakeDiscord, user: Any = None, channel: Any = None, **options: Any) -> Any:
    body = {"prompt": "a red fox", "image": fake.attachment(INPUT, "fox.png"), **FAST, **options}
    return await fake.slash_command("img2img", body, user=user, channel=channel)


def stranger(fake: FakeDiscord) -> FakeUser:
    """A member without roles who did not ask for anything (bob is the usual requester)."""
    carol = fake.world.new_user("carol")
    fake.world.add_member(fake.world.guild, carol)
    return carol


def job_id_of(result: StoredMessage) -> str:
    return str(result.embeds[0]["footer"]["text"]).split()[1]


async def delete_by_stranger_then_owner(
    fake: FakeDiscord, result: StoredMessage, other: FakeUser, owner: FakeUser
) -> None:
    """Delete on `result`: refused to `other`, done for `owner`."""
    refused = await fake.click(result, label="Delete", user=other)
    refusal = await refused.wait_response()
    assert refusal.ephemeral and "Only the person" in refusal.data["content"]
    assert not fake.message(result.id).deleted
    mark = fake.mark()
    delete = await fake.click(result, label="Delete", user=owner)
    assert (await delete.wait_response()).type == 6
    await fake.wait_for(
        lambda e: e.kind is EventKind.MESSAGE_DELETED and e.message_id == result.id,
        timeout=WAIT,
        after=mark,
    )


async def test_slash_command_posts_one_message_with_images_and_buttons(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    inter = await slash(fake, user=fake.world.bob, samples=2, seed=5)
    ack = await inter.wait_response()
    assert ack.type == 5 and ack.elapsed < 3 and not ack.ephemeral
    done = await inter.wait_original(has_images(2), timeout=WAIT)
    assert image_sizes(done) == [(64, 64), (64, 64)]
    assert button_labels(done) == [
        *("Reroll", "Remix", "Delete", "Use 1", "Use 2", "Upscale 1", "Upscale 2"),
        *("Vary (subtle) 1", "Vary (subtle) 2", "Vary (strong) 1", "Vary (strong) 2"),
    ]
    fields = {f["name"]: f["value"] for f in done.embeds[0]["fields"]}
    assert fields["Seeds"] == "5, 6" and fields["Size"] == "64×64"
    progress = [r.content for r in done.revisions if "`[" in r.content]
    assert progress, [r.content for r in done.revisions]
    assert any(r.content.startswith(("Queued:", "Starting")) for r in done.revisions)
    assert not any(f.spoiler for f in done.attachments)
    assert len([m for m in fake.messages(fake.world.general) if m.attachments]) == 1


async def test_prompts_are_shown_as_plain_text_not_as_links_or_formatting(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    lure = "[Claim free Nitro](https://evil.example) **now**"
    inter = await slash(
        fake_discord, user=fake_discord.world.bob, prompt=lure, negative_prompt=lure
    )
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    embed = done.embeds[0]
    for shown in (embed["description"], embed["fields"][0]["value"]):
        # an escaped "[" makes no masked link; escaped asterisks make no bold
        assert shown.startswith("\\[Claim free Nitro](") and "\\*\\*now\\*\\*" in shown


async def test_image_url_is_fetched(fake_discord: FakeDiscord, bot: Any) -> None:
    fake = fake_discord
    url = fake.host_file(INPUT, "hosted.png", "image/png")
    inter = await fake.slash_command("img2img", {"prompt": "a fox", "image_url": url, **FAST})
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    assert image_sizes(done) == [(64, 64)]


async def test_context_menu_opens_a_modal_and_posts_the_result(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    posted = await fake.post_user_message(
        fake.world.general,
        fake.world.bob,
        "look",
        attachments=[fake.attachment(INPUT, "photo.png")],
    )
    menu = await fake.message_command("Img2Img", posted)
    modal = await menu.wait_response()
    assert modal.type == 9
    labels = [
        c["components"][0]["label"] if "components" in c else c.get("label")
        for c in modal.data["components"]
    ]
    assert labels[0] == "Prompt"
    submit = await fake.submit_modal(
        menu,
        {
            "Prompt": "an oil painting",
            "Strength (0.05–1; higher changes more)": "0.3",
            "Options (name=value …)": "width=64 height=64 seed=9",
        },
    )
    done = await submit.wait_original(has_images(1), timeout=WAIT)
    fields = {f["name"]: f["value"] for f in done.embeds[0]["fields"]}
    assert fields["Seeds"] == "9" and image_sizes(done) == [(64, 64)]


async def test_context_menu_on_a_message_without_an_image_explains(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    posted = await fake.post_user_message(fake.world.general, fake.world.bob, "just text")
    menu = await fake.message_command("Img2Img", posted)
    answer = await menu.wait_response()
    assert answer.type == 4 and answer.ephemeral
    assert "no image" in answer.data["content"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 100}, "multiple of 8"),
        ({"lora_model": "detail", "lora_strength": "0.5,0.5"}, "one strength per LoRA"),
        ({"strength": 0.02}, "no denoising step"),
    ],
)
async def test_bad_options_get_an_ephemeral_explanation(
    fake_discord: FakeDiscord, bot: Any, options: dict[str, Any], message: str
) -> None:
    inter = await slash(fake_discord, **options)
    answer = await inter.wait_response()
    assert answer.type == 4 and answer.ephemeral
    assert message in answer.data["content"]


async def test_a_bad_attachment_is_refused_after_the_ack(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    inter = await fake.slash_command(
        "img2img", {"prompt": "x", "image": fake.attachment(b"%PDF-1.4 not an image", "a.png")}
    )
    followup = await inter.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    assert "PDF" in followup.content or "not an image" in followup.content


THINKING = "/webhooks/{application_id}/{token}/messages/@original"


async def wait_text(fake: FakeDiscord, inter: Any, text: str) -> StoredMessage:
    """The first message of `inter` (posted or edited, by any route) whose text has `text`."""
    event = await fake.wait_for(
        lambda e: (
            e.kind in (EventKind.MESSAGE_CREATED, EventKind.MESSAGE_EDITED)
            and e.interaction_id == inter.id
            and e.message is not None
            and text in e.message.content
        ),
        timeout=WAIT,
    )
    assert event.message is not None
    return event.message


def pings_anywhere(fake: FakeDiscord) -> set[str]:
    """Everyone notified by any version of any message in the guild's channels."""
    found: set[str] = set()
    for channel in (fake.world.general, fake.world.nsfw):
        for message in fake.messages(channel, include_deleted=True):
            found |= message.pings
    return found


def public_texts(fake: FakeDiscord) -> list[str]:
    return [
        revision.content
        for message in fake.messages(fake.world.general, include_deleted=True)
        if not message.ephemeral
        for revision in message.revisions
    ]


@pytest.mark.parametrize("delete_fails", [False, True])
async def test_a_refusal_quoting_everyone_pings_nobody_and_stays_private(
    fake_discord: FakeDiscord, bot: Any, delete_fails: bool
) -> None:
    fake = fake_discord
    if delete_fails:  # the public "thinking…" message cannot be deleted
        fake.inject_error("DELETE", THINKING, status=403, code=50001, message="Missing Access")
    image = fake.attachment(b"just some text", "@everyone.txt")
    inter = await fake.slash_command(
        "img2img", {"prompt": "x", "image": image, **FAST}, user=fake.world.bob
    )
    refusal = await wait_text(fake, inter, "@everyone.txt")
    assert refusal.ephemeral and "not an image" in refusal.content
    assert pings_anywhere(fake) == set()
    assert not [text for text in public_texts(fake) if "@everyone" in text]


async def test_a_refusal_after_the_ack_stays_private_when_thinking_cannot_be_deleted(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    fake.inject_error("DELETE", THINKING, status=403, code=50001, message="Missing Access")
    image = fake.attachment(b"%PDF-1.4 not an image", "@everyone.png")  # refused once read
    inter = await fake.slash_command(
        "img2img", {"prompt": "x", "image": image, **FAST}, user=fake.world.bob
    )
    refusal = await wait_text(fake, inter, "PDF")
    assert refusal.ephemeral and refusal.id != inter.record.original_message_id
    thinking = inter.original()
    assert thinking is not None and not thinking.deleted and not thinking.ephemeral
    assert thinking.content == messages.ANSWERED_PRIVATELY
    assert not [text for text in public_texts(fake) if "PDF" in text]
    assert pings_anywhere(fake) == set()
    assert [e.data["path"] for e in fake.events_of(EventKind.FAULT_INJECTED)]  # it did fail


async def test_a_result_pings_only_the_requester(fake_discord: FakeDiscord, bot: Any) -> None:
    fake = fake_discord
    requester = fake.world.bob
    role = fake.world.guild.role("Moderator")
    inter = await slash(fake, user=requester, prompt=f"@everyone @here <@&{role.id}> a fox")
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    assert requester.mention in done.content
    # Discord notifies nobody on an edit (the fake records it as if it did): at most the
    # requester. A result posted as a new message pings them (the token-expiry test).
    assert pings_anywhere(fake) <= {f"user:{requester.id}"}


async def test_a_crash_shows_an_error_id_and_logs_the_details_with_the_job_id(
    fake_discord: FakeDiscord, bot: Any, gate: CrashingGate, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "/secret/path/model.bin: CUDA error"
    gate.crash = RuntimeError(secret)
    inter = await slash(fake_discord)
    failure = await inter.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    assert "/secret" not in failure.content and "CUDA" not in failure.content
    error_id = re.search(r"error `([0-9a-f]{8})`", failure.content)
    assert error_id, failure.content
    logged = [r for r in caplog.records if f"error {error_id[1]} in job " in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None, caplog.text
    job_id = logged[0].getMessage().split(" in job ")[1].split(":")[0]
    assert secret in caplog.text
    engine_log = [r for r in caplog.records if r.name == "inference.local.failures"]
    assert job_id in engine_log[0].getMessage() and secret in engine_log[0].getMessage()
    stored = await bot.store.get(job_id)
    assert stored.status == "failed" and error_id[1] in stored.error
    assert "/secret" not in stored.error and "CUDA" not in stored.error


async def test_no_image_at_all_is_explained(fake_discord: FakeDiscord, bot: Any) -> None:
    inter = await fake_discord.slash_command("img2img", {"prompt": "x"})
    answer = await inter.wait_response()
    assert answer.ephemeral and "image_url" in answer.data["content"]


async def test_cancel_while_running_and_while_queued(
    fake_discord: FakeDiscord, bot: Any, gate: Gate
) -> None:
    fake = fake_discord
    gate.close()
    running = await slash(fake, user=fake.world.bob)
    await gate.wait_entered()
    queued = await slash(fake, user=fake.world.alice)
    queued_msg = await queued.wait_original(is_queued, timeout=WAIT)
    assert button_labels(queued_msg) == ["Cancel"]
    stranger = await fake.click(queued_msg, label="Cancel", user=fake.world.bob)
    refusal = await stranger.wait_response()
    assert refusal.ephemeral and "Only the person" in refusal.data["content"]
    click = await fake.click(queued_msg, label="Cancel", user=fake.world.alice)
    assert (await click.wait_response()).ephemeral
    cancelled = await queued.wait_original(lambda m: "Cancelled" in m.content, timeout=WAIT)
    assert button_labels(cancelled) == []  # no Cancel button left on a finished job
    running_msg = await running.wait_original(timeout=WAIT)
    await fake.click(running_msg, label="Cancel", user=fake.world.bob)
    gate.opened.set()
    final = await running.wait_original(lambda m: "Cancelled" in m.content, timeout=WAIT)
    assert not final.attachments
    assert bot.queue.pending_total == 0


async def test_two_users_interleave(fake_discord: FakeDiscord, bot: Any, gate: Gate) -> None:
    fake = fake_discord
    gate.close()
    first = await slash(fake, user=fake.world.alice, seed=1)
    await gate.wait_entered()
    alice = []
    for seed in (2, 3):  # one at a time, so alice's own two jobs are queued in this order
        alice.append(await slash(fake, user=fake.world.alice, seed=seed))
        await alice[-1].wait_original(is_queued, timeout=WAIT)
    bob = await slash(fake, user=fake.world.bob, seed=4)
    queued = await bob.wait_original(is_queued, timeout=WAIT)
    assert "you're next" in queued.content  # ahead of alice's two waiting jobs
    gate.opened.set()
    handles = [first, *alice, bob]
    finished = []
    for handle in handles:
        message = await handle.wait_original(has_images(1), timeout=WAIT)
        finished.append((message.revisions[-1].at, handle))
    order = [h for _, h in sorted(finished, key=lambda pair: pair[0])]
    assert order == [first, bob, alice[0], alice[1]]  # bob does not wait behind alice's second


async def test_per_user_limit_is_refused_with_the_queue_state(
    fake_discord: FakeDiscord, bot: Any, gate: Gate
) -> None:
    fake = fake_discord
    gate.close()
    await slash(fake, user=fake.world.bob, seed=1)
    await gate.wait_entered()
    for seed in (2, 3):
        await (await slash(fake, user=fake.world.bob, seed=seed)).wait_original(is_queued)
    fourth = await slash(fake, user=fake.world.bob, seed=4)
    refusal = await fourth.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    assert "3 job(s)" in refusal.content and "limit is 3" in refusal.content
    gate.opened.set()


async def test_nsfw_images_are_censored_and_spoilered(
    fake_discord: FakeDiscord, models: TinyModels, gate: Gate, tmp_path: Path
) -> None:
    fake = fake_discord
    backend = make_backend(models, gate, score=0.99)
    async with running_bot(fake, backend, tmp_path / "db.sqlite3", models.models_file):
        inter = await slash(fake, safety_checker_type="black", samples=2)
        done = await inter.wait_original(has_images(2), timeout=WAIT)
    assert all(f.spoiler for f in done.attachments)
    for file in done.attachments:
        assert Image.open(io.BytesIO(file.data)).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert "flagged" in done.embeds[0]["footer"]["text"]


async def test_the_safety_checker_stays_on_outside_age_restricted_channels(
    fake_discord: FakeDiscord, models: TinyModels, gate: Gate, tmp_path: Path
) -> None:
    fake = fake_discord
    backend = make_backend(models, gate, score=0.99)
    async with running_bot(fake, backend, tmp_path / "db.sqlite3", models.models_file) as b:
        general = await slash(fake, safety_checker="no")
        in_general = await general.wait_original(has_images(1), timeout=WAIT)
        nsfw = await slash(fake, safety_checker="no", channel=fake.world.nsfw)
        in_nsfw = await nsfw.wait_original(has_images(1), timeout=WAIT)
        dm = await slash(
            fake, safety_checker="no", channel=fake.world.dm(fake.world.bob), user=fake.world.bob
        )
        in_dm = await dm.wait_original(has_images(1), timeout=WAIT)
        records = await b.store.recent_for_user(fake.world.alice.id)
    assert in_general.attachments[0].spoiler and in_dm.attachments[0].spoiler
    assert any("stays on" in r.content for r in in_general.revisions)
    uncensored = Image.open(io.BytesIO(in_nsfw.attachments[0].data))
    assert uncensored.getextrema() != ((0, 0), (0, 0), (0, 0))
    assert {r.request.safety_checker for r in records} == {"yes", "no"}


async def test_buttons_reroll_remix_use_and_delete(fake_discord: FakeDiscord, bot: Any) -> None:
    fake = fake_discord
    owner, other = fake.world.bob, stranger(fake)
    inter = await slash(fake, user=owner, seed=7)
    done = await inter.wait_original(has_images(1), timeout=WAIT)

    reroll = await fake.click(done, label="Reroll", user=owner)
    rerolled = await reroll.wait_original(has_images(1), timeout=WAIT)
    seeds = {f["name"]: f["value"] for f in rerolled.embeds[0]["fields"]}["Seeds"]
    assert seeds != "7"
    assert owner.mention in rerolled.content

    remix = await fake.click(done, label="Remix", user=owner)
    assert (await remix.wait_response()).type == 9
    remixed = await fake.submit_modal(remix, {"Prompt": "a blue fox"})
    remixed_msg = await remixed.wait_original(has_images(1), timeout=WAIT)
    assert remixed_msg.embeds[0]["description"] == "a blue fox"

    use = await fake.click(done, label="Use 1", user=owner)
    assert (await use.wait_response()).type == 9
    used = await fake.submit_modal(use, {"Prompt": "from the result"})
    await used.wait_original(has_images(1), timeout=WAIT)

    await delete_by_stranger_then_owner(fake, done, other, owner)


async def test_only_the_requester_and_moderators_reuse_the_input_image(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    owner, moderator, other = fake.world.bob, fake.world.alice, stranger(fake)
    done = await (await slash(fake, user=owner, seed=7)).wait_original(has_images(1), timeout=WAIT)

    for label in ("Reroll", "Remix"):
        click = await fake.click(done, label=label, user=other)
        refusal = await click.wait_response()
        assert refusal.type == 4 and refusal.ephemeral, label
        assert owner.mention in refusal.data["content"] and "Use N" in refusal.data["content"]
    assert await bot.store.recent_for_user(other.id) == []

    use = await fake.click(done, label="Use 1", user=other)  # the posted image is anyone's
    assert (await use.wait_response()).type == 9
    used = await fake.submit_modal(use, {"Prompt": "from the posted image"})
    assert other.mention in (await used.wait_original(has_images(1), timeout=WAIT)).content

    reroll = await fake.click(done, label="Reroll", user=moderator)  # Manage Messages
    assert moderator.mention in (await reroll.wait_original(has_images(1), timeout=WAIT)).content
    remix = await fake.click(done, label="Remix", user=moderator)
    assert (await remix.wait_response()).type == 9


@pytest.mark.parametrize("posted_as", ["interaction response", "channel message"])
async def test_delete_works_after_the_record_is_gone(
    fake_discord: FakeDiscord, bot: Any, gate: Gate, posted_as: str
) -> None:
    fake = fake_discord
    owner, other = fake.world.bob, stranger(fake)
    if posted_as == "channel message":  # the token expired: the requester is in the mention
        gate.close()
        inter = await slash(fake, user=owner)
        await gate.wait_entered()
        inter.expire_token()
        gate.opened.set()
        done = await fake.wait_message(fake.world.general, has_images(1), timeout=WAIT)
        assert done.interaction_metadata is None
    else:
        done = await (await slash(fake, user=owner)).wait_original(has_images(1), timeout=WAIT)
    history = await fake.slash_command("img2img-history", {}, user=owner)
    listing = await history.wait_original(timeout=WAIT)
    forget = await fake.click(listing, label="Delete my records", user=owner)
    assert (await forget.wait_response()).type == 7
    assert await bot.store.get(job_id_of(done)) is None

    await delete_by_stranger_then_owner(fake, done, other, owner)


async def test_restart_resumes_queued_jobs_and_old_buttons_work(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    database = tmp_path / "restart.sqlite3"
    gate = Gate()
    gate.close()
    stuck = make_backend(models, gate)
    close_backend = stuck.aclose

    async def release_the_gpu_then_close(timeout: float | None = None) -> None:  # noqa: ASYNC109
        # The queue has already handed the running job back (grace 0); the GPU step may end now,
        # so the worker thread does not go on holding the gate.
        gate.opened.set()
        await close_backend(timeout)

    stuck.aclose = release_the_gpu_then_close  # type: ignore[method-assign]
    async with running_bot(fake, stuck, database, models.models_file):
        first = await slash(fake, user=fake.world.bob, seed=11)
        await gate.wait_entered()
        second = await slash(fake, user=fake.world.alice, seed=12)
        await second.wait_original(is_queued, timeout=WAIT)
        finished_before = [m for m in fake.messages(fake.world.general) if m.attachments]
    assert gate.opened.is_set()
    assert finished_before == []
    assert not [m for m in fake.messages(fake.world.general) if m.attachments]
    mark = fake.mark()
    async with running_bot(fake, make_backend(models, Gate()), database, models.models_file) as b:
        assert b.resumed_jobs == 2
        posted = [
            await fake.wait_message(
                fake.world.general,
                has_seed(s),
            )
            for s in (11, 12)
        ]
        assert all(
            fake.world.bob.mention in m.content or fake.world.alice.mention in m.content
            for m in posted
        )
        reroll = await fake.click(posted[0], label="Reroll", user=fake.world.bob)
        await reroll.wait_original(has_images(1), timeout=WAIT)
    del first, mark


async def test_token_expiry_falls_back_to_a_channel_message(
    fake_discord: FakeDiscord, bot: Any, gate: Gate
) -> None:
    fake = fake_discord
    gate.close()
    inter = await slash(fake, user=fake.world.bob, seed=3)
    await gate.wait_entered()
    inter.expire_token()
    gate.opened.set()
    posted = await fake.wait_message(fake.world.general, has_images(1))
    assert fake.world.bob.mention in posted.content
    assert posted.pings == {f"user:{fake.world.bob.id}"}
    assert button_labels(posted)[:3] == ["Reroll", "Remix", "Delete"]


async def test_a_429_from_discord_is_survived(fake_discord: FakeDiscord, bot: Any) -> None:
    fake = fake_discord
    fake.inject_429("PATCH", "/webhooks/{application_id}/{token}/messages/@original", times=2)
    inter = await slash(fake)
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    assert image_sizes(done) == [(64, 64)]


async def test_autocomplete_lists_models_from_the_registry(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    inter = await fake_discord.autocomplete(
        "img2img", {"prompt": "x", "model_id": "tiny-"}, "model_id"
    )
    answer = await inter.wait_response()
    assert answer.type == 8
    assert [c["value"] for c in answer.choices] == ["tiny-file", "tiny-xl"]


async def test_the_token_never_appears_in_anything_the_bot_sends(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    inter = await slash(fake)
    await inter.wait_original(has_images(1), timeout=WAIT)
    for message in fake.messages(fake.world.general):
        for revision in message.revisions:
            assert BOT_TOKEN not in revision.content
            assert BOT_TOKEN not in repr(revision.embeds)


async def test_context_menu_works_on_an_embedded_image(fake_discord: FakeDiscord, bot: Any) -> None:
    fake = fake_discord
    url = fake.host_file(INPUT, "embedded.png", "image/png")
    posted = await fake.post_user_message(
        fake.world.general, fake.world.bob, "", embeds=[{"type": "image", "image": {"url": url}}]
    )
    menu = await fake.message_command("Img2Img", posted, user=fake.world.bob)
    assert (await menu.wait_response()).type == 9
    submit = await fake.submit_modal(
        menu, {"Prompt": "embedded", "Options (name=value …)": "width=64 height=64 strength=0.3"}
    )
    done = await submit.wait_original(has_images(1), timeout=WAIT)
    assert image_sizes(done) == [(64, 64)]


async def test_server_policy_is_for_admins_and_is_applied(
    fake_discord: FakeDiscord, models: TinyModels, gate: Gate, tmp_path: Path
) -> None:
    fake = fake_discord
    backend = make_backend(models, gate, score=0.99)
    async with running_bot(fake, backend, tmp_path / "db.sqlite3", models.models_file) as b:
        denied = await fake.slash_command(
            "img2img-settings", {"allow_safety_off_in_nsfw": False}, user=fake.world.bob
        )
        answer = await denied.wait_response()
        assert answer.ephemeral and "Manage Server" in answer.data["content"]
        assert (await b.store.guild_policy(fake.world.guild.id)).allow_safety_off_in_nsfw

        admin = await fake.slash_command(
            "img2img-settings",
            {"default_safety_checker_type": "pixelate", "allow_safety_off_in_nsfw": False},
            user=fake.world.alice,
        )
        shown = await admin.wait_response()
        assert "Pixelate" in shown.data["content"] and "not allowed" in shown.data["content"]

        job = await slash(fake, user=fake.world.bob, channel=fake.world.nsfw, safety_checker="no")
        done = await job.wait_original(has_images(1), timeout=WAIT)
        records = await b.store.recent_for_user(fake.world.bob.id)
    assert done.attachments[0].spoiler  # checker forced on although the channel is age-restricted
    assert records[0].request.safety_checker == "yes"
    assert records[0].request.safety_checker_type == "pixelate"


async def test_history_lists_jobs_and_deletes_only_ones_own_records(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    job = await slash(fake, user=fake.world.bob, seed=21, prompt="a history fox")
    await job.wait_original(has_images(1), timeout=WAIT)
    history = await fake.slash_command("img2img-history", {}, user=fake.world.bob)
    shown = await history.wait_response()
    assert shown.ephemeral
    description = shown.data["embeds"][0]["description"]
    assert "a history fox" in description and "21" in description
    listing = await history.wait_original(timeout=WAIT)
    other = await fake.click(listing, label="Delete my records", user=fake.world.alice)
    assert "only delete your own" in (await other.wait_response()).data["content"]
    assert await bot.store.recent_for_user(fake.world.bob.id)
    mine = await fake.click(listing, label="Delete my records", user=fake.world.bob)
    assert (await mine.wait_response()).type == 7
    assert await bot.store.recent_for_user(fake.world.bob.id) == []
