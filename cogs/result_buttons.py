"""Per-image result buttons: Upscale N, Vary (subtle) N, Vary (strong) N (CONTRACT §8).

Anyone may use them: they build on the posted images, read back from the job store as the
uncensored originals (`GeneratedImage.source`), never from the posted, possibly censored files.
Until the queue has accepted the new job only the stored job's metadata is read; the image's
bytes are read after that, under the bound on stored images (`bot.loads`).
Vary runs image N again as a new input with the job's prompt and options, a new seed and a preset
strength. Upscale is one job of kind "upscale" (`inference.upscale`), counted against the daily
quotas by its tiles. With more components than Discord's 25, a select menu stands in for them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot import messages
from bot.errors import report_unexpected
from bot.replies import defer_thinking
from bot.store import JobSummary
from bot.submission import (
    ImageSource,
    prompt_refused,
    queue_in_place,
    submit_job,
    with_current_policy,
)
from inference import GeneratedImage, Img2ImgResult
from inference.upscale import plan_upscale

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = [
    "ACTIONS",
    "VARY_STRENGTHS",
    "ImageAction",
    "ImageActionSelect",
    "add_image_actions",
    "submit_upscale",
]

JOB = r"(?P<job>[0-9a-f]{12})"
VARY_STRENGTHS = {"subtle": 0.35, "strong": 0.7}
"""The strength of each Vary preset (docs/reference.md)."""
ACTIONS = {"upscale": "Upscale", "subtle": "Vary (subtle)", "strong": "Vary (strong)"}
"""Per-image actions by custom_id name, with their labels."""
_ROW_SIZE = 5
_MAX_COMPONENTS = 25


@dataclass(frozen=True)
class _Target:
    """The job and the stored image an action builds on, without their bytes (`image.data` is
    empty: `source` reads the image once a job is accepted)."""

    record: JobSummary
    result: Img2ImgResult
    image: GeneratedImage
    number: int

    @property
    def source(self) -> ImageSource:
        return ImageSource(
            stored=self.record.id, stored_image=self.number - 1, flagged=self.image.nsfw
        )


async def _target(
    interaction: discord.Interaction[Img2ImgBot], job_id: str, number: int
) -> _Target | None:
    store = interaction.client.store
    record = await store.summary(job_id)
    if record is None:
        await interaction.response.send_message(messages.RECORD_GONE, ephemeral=True)
        return None
    result = await store.result_summary(job_id)
    if result is None or len(result.images) < number:
        await interaction.response.send_message(messages.IMAGE_GONE, ephemeral=True)
        return None
    return _Target(record, result, result.images[number - 1], number)


async def run_action(
    interaction: discord.Interaction[Img2ImgBot], job_id: str, action: str, number: int
) -> None:
    target = await _target(interaction, job_id, number)
    if target is None:
        return
    if action == "upscale":
        await submit_upscale(interaction, target)
    else:
        await submit_job(
            interaction,
            _vary_body(target, action),
            target.source,
            applied_style=target.record.style,
        )


def _vary_body(target: _Target, action: str) -> dict[str, Any]:
    """The job's options with a new seed and the preset's strength."""
    body = target.record.request.model_dump(exclude={"init_image", "webhook", "track_id"})
    body.update(seed=None, strength=VARY_STRENGTHS[action])
    return body


async def submit_upscale(interaction: discord.Interaction[Img2ImgBot], target: _Target) -> None:
    """Queue one upscale job of the image: its place taken for as many images as it has tiles."""
    bot = interaction.client
    image, meta = target.image, target.result.meta
    tiles = len(plan_upscale(image.width, image.height, bot.views.tiling).tiles)
    request = target.record.request.model_copy(
        update={
            "prompt": str(meta.get("prompt") or target.record.request.prompt),
            "enhance_prompt": "no",
            "samples": 1,
            "seed": image.seed,
            "init_image": None,
            "webhook": None,
            "track_id": None,
        }
    )
    # the filter may have changed since
    if await prompt_refused(interaction, request.prompt, style=target.record.style):
        return
    request = await with_current_policy(interaction, request)
    thinking_id = await defer_thinking(interaction)
    await bot.acks.settled()
    await queue_in_place(
        interaction,
        request,
        target.source,
        places=tiles,
        message_id=thinking_id,
        refusal_note=messages.upscale_cost(tiles),
        kind="upscale",
        cost=tiles,
        style=target.record.style,
    )


class ImageAction(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"i2i:(?P<action>upscale|subtle|strong):{JOB}:(?P<n>[1-9])",
):
    """Upscale N, Vary (subtle) N or Vary (strong) N."""

    def __init__(self, action: str, job_id: str, number: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"{ACTIONS[action]} {number}",
                emoji="🔍" if action == "upscale" else None,
                style=discord.ButtonStyle.secondary,
                custom_id=f"i2i:{action}:{job_id}:{number}",
            )
        )
        self.action, self.job_id, self.number = action, job_id, number

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImageAction:
        return cls(match["action"], match["job"], int(match["n"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await run_action(interaction, self.job_id, self.action, self.number)
        except Exception as exc:
            await report_unexpected(interaction, exc, f"{self.action} button of job {self.job_id}")


class ImageActionSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]], template=rf"i2i:image-actions:{JOB}"
):
    """The per-image actions as one select menu, where buttons would not fit."""

    def __init__(self, job_id: str, images: int = 0, actions: Sequence[str] = ()) -> None:
        options = [
            discord.SelectOption(label=f"{ACTIONS[action]} {n}", value=f"{action}:{n}")
            for n in range(1, images + 1)
            for action in actions
        ]
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=f"i2i:image-actions:{job_id}",
            placeholder=messages.IMAGE_ACTIONS_PLACEHOLDER,
            options=options[:_MAX_COMPONENTS] or [discord.SelectOption(label="-", value="-")],
        )
        super().__init__(select)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImageActionSelect:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        values = self.item.values
        action, _, number = (values[0] if values else "").partition(":")
        if action not in ACTIONS or not number.isdigit():
            return
        try:
            await run_action(interaction, self.job_id, action, int(number))
        except Exception as exc:
            await report_unexpected(interaction, exc, f"{action} menu of job {self.job_id}")


def _place(view: discord.ui.View, items: Sequence[discord.ui.Item[Any]], row: int) -> int:
    """Add `items` in rows of five from `row`; the next free row."""
    for index, item in enumerate(items):
        item.row = row + index // _ROW_SIZE
        view.add_item(item)
    return row + -(-len(items) // _ROW_SIZE)


def add_image_actions(
    view: discord.ui.View,
    job_id: str,
    uses: Sequence[discord.ui.Item[Any]],
    *,
    upscaled: bool = False,
) -> None:
    """Add the per-image buttons below the view's first row: `uses` (Use N), then Upscale N
    (not under an upscaled result), Vary (subtle) N and Vary (strong) N. One image: all in one
    row; several: a row per action; past Discord's 5 rows or 25 components, a select menu."""
    actions = [a for a in ACTIONS if not (upscaled and a == "upscale")]
    images = len(uses)
    per_action = [[ImageAction(a, job_id, n) for n in range(1, images + 1)] for a in actions]
    if images == 1:
        _place(view, [*uses, *(row[0] for row in per_action)], 1)
        return
    rows_needed = 1 + len(actions)
    fits = images <= _ROW_SIZE and 1 + rows_needed <= 5
    if fits and len(view.children) + images * rows_needed <= _MAX_COMPONENTS:
        row = _place(view, uses, 1)
        for items in per_action:
            row = _place(view, items, row)
        return
    row = _place(view, uses, 1)
    _place(view, [ImageActionSelect(job_id, images, actions)], row)
