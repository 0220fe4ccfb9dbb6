"""Server styles (issue 13 item 4): the rules in bot.styles, and /img2img-style, the `style`
option, the modal's style select and options line, Reroll and Remix through the loopback Discord
with the real client."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bot_harness import has_images, running_bot
from fakediscord import FakeDiscord, StoredMessage
from PIL import Image
from test_bot_e2e import INPUT, WAIT, make_backend, slash
from test_delivery import bot_on
from test_jobs import GatedBackend
from test_local_backend import Gate
from tiny_models import TinyModels, gradient_image

from bot import messages
from bot.client import Img2ImgBot
from bot.png_style import with_style
from bot.store import ServerStyle
from bot.styles import (
    MAX_NAME,
    MAX_STYLES,
    MAX_TEMPLATE,
    StyleRefused,
    apply_style,
    new_style,
    style_body,
    unapply_style,
)
from inference.images import encode_image, read_parameters

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

WATERCOLOR = {"name": "Watercolor", "prompt": "{prompt}, watercolor", "negative_prompt": "photo"}
OPTIONS_LABEL = "Options (name=value …)"

# -- the rules ---------------------------------------------------------------------------------


def test_a_new_style_is_checked_and_tidied() -> None:
    style = new_style(" Ink-2 ", "  ink drawing of {prompt} ", "  ")
    assert style == ServerStyle("ink-2", "ink drawing of {prompt}", None)


@pytest.mark.parametrize(
    ("name", "template", "negative", "says"),
    [
        ("", "{prompt}", None, "style name"),
        ("two words", "{prompt}", None, "style name"),
        ("x" * (MAX_NAME + 1), "{prompt}", None, "style name"),
        ("ok", "no placeholder", None, "exactly once"),
        ("ok", "{prompt} and {prompt}", None, "exactly once"),
        ("ok", "{prompt}" + "x" * MAX_TEMPLATE, None, f"limit is {MAX_TEMPLATE}"),
        ("ok", "{prompt}", "n" * 501, "negative prompt has 501"),
    ],
)
def test_unusable_styles_are_refused_saying_what_to_change(
    name: str, template: str, negative: str | None, says: str
) -> None:
    with pytest.raises(StyleRefused, match=says):
        new_style(name, template, negative)


def test_applying_fills_the_placeholder_and_joins_negatives_and_can_be_undone() -> None:
    style = ServerStyle("ink", "ink drawing of {prompt}, {braces} kept", "colour")
    prompt, negative = apply_style(style, " a fox ", "blurry")
    assert (prompt, negative) == ("ink drawing of a fox, {braces} kept", "blurry, colour")
    assert unapply_style(style, prompt, negative) == ("a fox", "blurry")
    assert apply_style(style, "a fox", None)[1] == "colour"
    assert unapply_style(style, "ink drawing of a fox, {braces} kept", "colour") == ("a fox", None)
    changed = ServerStyle("ink", "pencil drawing of {prompt}", "colour")
    assert unapply_style(changed, prompt, negative) is None


def test_an_unknown_style_name_is_refused_with_the_servers_styles() -> None:
    styles = (ServerStyle("ink", "{prompt}, ink"), ServerStyle("oil", "{prompt}, oil"))
    body, name = style_body(styles, {"prompt": "a fox", "style": "OIL"})
    assert name == "oil" and body == {"prompt": "a fox, oil"}
    with pytest.raises(StyleRefused, match=r"no style `pastel`\. Styles: ink, oil"):
        style_body(styles, {"prompt": "a fox", "style": "pastel"})
    assert style_body((), {"prompt": "a fox"}) == ({"prompt": "a fox"}, None)


def test_a_style_that_makes_a_prompt_too_long_says_how_long_yours_may_be() -> None:
    template = "{prompt}" + ", ink wash" * 40  # adds 400 characters
    style = new_style("ink", template, "blurry, " * 60)  # a negative of 479 (+ ", " joining)
    ok = apply_style(style, "a" * 1600, "b" * 1519)  # exactly at the limits
    assert [len(text or "") for text in ok] == [2000, 2000]
    with pytest.raises(StyleRefused) as prompt:
        style_body([style], {"prompt": "a" * 1800, "style": "ink"})
    assert str(prompt.value) == messages.style_leaves_room("ink", "prompt", 1600, 1800)
    assert "With style `ink` your prompt may have at most 1600 characters" in str(prompt.value)
    with pytest.raises(StyleRefused) as negative:
        style_body([style], {"prompt": "a fox", "negative_prompt": "b" * 1600, "style": "ink"})
    assert str(negative.value) == messages.style_leaves_room("ink", "negative prompt", 1519, 1600)


@pytest.mark.parametrize(
    "text", ["a fox\nNegative prompt: a cat\nSteps: 5, Seed: 3", "東京\nSteps: 5"]
)
def test_the_style_joins_a_pngs_parameters_and_its_pixels_stay(text: str) -> None:
    image = gradient_image(32, 16)
    png, fmt = encode_image(image, parameters=text)
    styled = with_style(png, "ink-2")
    assert fmt == "png" and read_parameters(styled) == text + ", Style: ink-2"
    assert Image.open(io.BytesIO(styled)).tobytes() == image.tobytes()
    jpeg, fmt = encode_image(image, parameters=text, allow_png=False)
    assert fmt != "png" and with_style(jpeg, "ink-2") == jpeg


# -- through Discord ---------------------------------------------------------------------------


@pytest.fixture
async def bot(fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path) -> AsyncIterator[Any]:
    gate = Gate()
    backend = make_backend(models, gate)
    async with running_bot(fake_discord, backend, tmp_path / "db.sqlite3", models.models_file) as b:
        yield b


async def command(fake: FakeDiscord, sub: str, user: Any, **options: Any) -> str:
    """Run `/img2img-style <sub>`; its (ephemeral) answer's text."""
    inter = await fake.slash_command(f"img2img-style {sub}", options, user=user)
    answer = await inter.wait_response()
    assert answer.ephemeral and answer.type == 4
    return str(answer.data["content"])


def fields(message: StoredMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


async def test_styles_are_added_listed_used_kept_on_reroll_and_removed(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    admin, member = fake.world.alice, fake.world.bob
    guild = fake.world.guild.id

    refused = await command(fake, "add", member, **WATERCOLOR)
    assert refused == messages.STYLES_NEED_MANAGE_SERVER
    assert await bot.store.styles(guild) == ()
    assert "style:watercolor" in await command(fake, "add", admin, **WATERCOLOR)
    assert "exactly once" in await command(fake, "add", admin, name="bad", prompt="no slot")
    assert "style name" in await command(fake, "add", admin, name="two words", prompt="{prompt}")
    too_long = "{prompt}" + "x" * MAX_TEMPLATE
    assert "Shorten" in await command(fake, "add", admin, name="long", prompt=too_long)
    listed = await command(fake, "list", member)
    assert "`watercolor`: {prompt}, watercolor · negative: photo" in listed
    assert "bad" not in listed and "long" not in listed

    complete = await fake.autocomplete(
        "img2img", {"prompt": "x", "style": "WAT"}, "style", user=member
    )
    assert [c["value"] for c in (await complete.wait_response()).choices] == ["watercolor"]

    job = await slash(fake, user=member, style="watercolor", negative_prompt="blurry", seed=3)
    done = await job.wait_original(has_images(1), timeout=WAIT)
    assert done.embeds[0]["description"] == "a red fox, watercolor"
    assert fields(done)["Style"] == "watercolor" and fields(done)["Negative"] == "blurry, photo"
    parameters = read_parameters(done.attachments[0].data) or ""
    assert parameters.startswith("a red fox, watercolor\n") and parameters.endswith(
        ", Style: watercolor"
    )
    [record] = await bot.store.recent_for_user(member.id)
    assert record.style == "watercolor" and record.request.negative_prompt == "blurry, photo"

    reroll = await fake.click(done, label="Reroll", user=member)
    rerolled = await reroll.wait_original(has_images(1), timeout=WAIT)
    assert rerolled.embeds[0]["description"] == "a red fox, watercolor"  # not applied twice
    assert fields(rerolled)["Style"] == "watercolor" and fields(rerolled)["Seeds"] != "3"

    remix = await fake.click(done, label="Remix", user=member)
    modal = (await remix.wait_response()).data
    assert _prefilled(modal) == {"Prompt": "a red fox", "Negative prompt": "blurry"}
    assert _select(modal)["options"][0]["default"] is True  # the job's style is chosen
    remixed = await fake.submit_modal(remix, {"Prompt": "a blue fox"})
    remixed_msg = await remixed.wait_original(has_images(1), timeout=WAIT)
    assert remixed_msg.embeds[0]["description"] == "a blue fox, watercolor"
    assert fields(remixed_msg)["Style"] == "watercolor"

    assert "Manage Server" in await command(fake, "remove", member, name="watercolor")
    assert await command(fake, "remove", admin, name="Watercolor") == messages.style_removed(
        "watercolor"
    )
    assert await command(fake, "list", member) == messages.NO_STYLES
    assert "no style `watercolor`" in await command(fake, "remove", admin, name="watercolor")


def _prefilled(modal: dict[str, Any]) -> dict[str, str]:
    out = {}
    for row in modal["components"]:
        for comp in row.get("components", []):
            if comp.get("value"):
                out[comp["label"]] = comp["value"]
    return {k: v for k, v in out.items() if k in ("Prompt", "Negative prompt")}


def _select(modal: dict[str, Any]) -> dict[str, Any]:
    [label] = [c for c in modal["components"] if c.get("label") == "Style"]
    return dict(label["component"])


async def test_the_modal_takes_a_style_from_its_select_or_its_options_line(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    member = fake.world.bob
    await command(fake, "add", fake.world.alice, **WATERCOLOR)
    await command(fake, "add", fake.world.alice, name="ink", prompt="ink drawing of {prompt}")
    posted = await fake.post_user_message(
        fake.world.general, member, "look", attachments=[fake.attachment(INPUT, "photo.png")]
    )
    options = "width=64 height=64 strength=0.3"

    menu = await fake.message_command("Img2Img", posted, user=member)
    select = _select((await menu.wait_response()).data)
    assert [o["value"] for o in select["options"]] == ["ink", "watercolor"]
    submit = await fake.submit_modal(
        menu, {"Prompt": "a cat", OPTIONS_LABEL: options, "Style": ["ink"]}
    )
    done = await submit.wait_original(has_images(1), timeout=WAIT)
    assert done.embeds[0]["description"] == "ink drawing of a cat"

    menu = await fake.message_command("Img2Img", posted, user=member)
    await menu.wait_response()
    line = f"{options} style=watercolor"
    submit = await fake.submit_modal(menu, {"Prompt": "a cat", OPTIONS_LABEL: line})
    done = await submit.wait_original(has_images(1), timeout=WAIT)
    assert done.embeds[0]["description"] == "a cat, watercolor"
    assert fields(done)["Style"] == "watercolor"

    menu = await fake.message_command("Img2Img", posted, user=member)
    await menu.wait_response()
    line = f"{options} style=pastel"
    refused = await fake.submit_modal(menu, {"Prompt": "a cat", OPTIONS_LABEL: line})
    answer = await refused.wait_response()
    assert answer.ephemeral
    assert answer.data["content"] == messages.no_such_style("pastel", ["ink", "watercolor"])


async def test_unknown_styles_are_refused_before_anything_is_queued(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    member = fake.world.bob
    answer = await (await slash(fake, user=member, style="pastel")).wait_response()
    assert answer.ephemeral and answer.type == 4  # refused before the acknowledgement
    assert answer.data["content"] == messages.no_such_style("pastel", [])
    style = new_style("ink", "{prompt}" + ", ink wash" * 40)
    assert await bot.store.put_style(fake.world.guild.id, style, MAX_STYLES)
    long = await slash(fake, user=member, style="ink", prompt="a" * 1800)
    answer = await long.wait_response()
    assert answer.ephemeral and answer.type == 4
    assert answer.data["content"] == messages.style_leaves_room("ink", "prompt", 1600, 1800)
    in_dm = await slash(fake, user=member, channel=fake.world.dm(member), style="pastel")
    assert (await in_dm.wait_response()).data["content"] == messages.STYLES_IN_SERVERS_ONLY
    assert await bot.store.recent_for_user(member.id) == []
    assert bot.queue.pending_for(member.id) == 0


async def test_a_server_holds_at_most_25_styles(fake_discord: FakeDiscord, bot: Img2ImgBot) -> None:
    fake = fake_discord
    guild = fake.world.guild.id
    for n in range(MAX_STYLES):
        assert await bot.store.put_style(guild, new_style(f"s{n}", "{prompt}"), MAX_STYLES)
    full = await command(fake, "add", fake.world.alice, name="one-more", prompt="{prompt}, x")
    assert full == messages.styles_full(MAX_STYLES)
    replaced = await command(fake, "add", fake.world.alice, name="s0", prompt="new {prompt}")
    assert replaced == messages.style_saved("s0")  # replacing one is not adding one
    styles = await bot.store.styles(guild)
    assert len(styles) == MAX_STYLES and styles[0] == ServerStyle("s0", "new {prompt}")
    listed = await command(fake, "list", fake.world.bob)
    assert listed.startswith(f"**Styles** ({MAX_STYLES} of {MAX_STYLES})")


async def test_the_list_shows_every_style_of_a_full_server_in_one_message(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    """25 styles with the longest names and long templates (about 7,000 characters in full):
    every name is listed, the previews are cut shorter to fit one message."""
    guild = fake_discord.world.guild.id
    names = [f"style-{n:02d}-".ljust(MAX_NAME, "x") for n in range(MAX_STYLES)]
    template = "{prompt}, " + "watercolor painting, soft light, " * 14
    negative = "blurry, lowres, " * 31
    for name in names:
        assert await bot.store.put_style(guild, new_style(name, template, negative), MAX_STYLES)
    listed = await command(fake_discord, "list", fake_discord.world.bob)
    assert len(listed) <= 2000
    assert listed.startswith(f"**Styles** ({MAX_STYLES} of {MAX_STYLES})")
    assert all(f"- `{name}`" in listed for name in names)
    assert listed.count(": {prompt}, wat") == listed.count("negative: blur") == MAX_STYLES


async def test_removing_a_very_long_unknown_name_says_there_is_no_such_style(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    """The name is echoed cut short: all of it would take the answer past Discord's 2,000
    characters, and the user would see the generic error instead."""
    fake, admin = fake_discord, fake_discord.world.alice
    async with bot_on(fake, GatedBackend(), tmp_path / "jobs.sqlite3"):
        assert "style:watercolor" in await command(fake, "add", admin, **WATERCOLOR)
        answer = await command(fake, "remove", admin, name="x" * 3000)
    assert answer == messages.no_such_style("x" * 39 + "…", ["watercolor"])
