"""Runs one batch of compatible jobs through a diffusers img2img pipeline (worker thread only).

Rows (one per image) are expanded here: prompt embeddings, init images and generators, one each,
with `num_images_per_prompt=1`, so image i of a job is the same whether it runs alone or batched.
Generators live on the CPU: a seed gives the same noise on every device.

Cancellation: the step callback answers a cancelled job at once (`Cancelled`) and stops the call
when every job in it is cancelled; a cancelled job's rows in a call with live jobs run on (the batch
is one tensor) and their images are dropped. A job whose `enhance_prompt` fails gets that error
alone; the rest of its batch runs. CUDA out-of-memory splits the call in halves and retries (fresh
generators, so the images do not change); one image that does not fit fails its job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inference.errors import BackendError, Cancelled, InferenceError
from inference.local import components
from inference.local.batcher import BatchKey, Outcome, WorkItem
from inference.local.enhance import PromptEnhancer, TemplateEnhancer, prompt_arch
from inference.local.failures import GENERATION_FAILED, unexpected_failure
from inference.local.loading import (
    LoadedModel,
    PipelineCache,
    default_dtype,
    free_memory,
    freeze_imports,
    load_model,
    load_preview_vae,
    load_vae,
    resolve_device,
)
from inference.local.preview import PreviewClock, PreviewDecoders, preview_jpeg
from inference.local.prompts import PromptEmbeds, encode_prompts, pipeline_kwargs
from inference.local.schedulers import make_scheduler

__all__ = ["Engine", "OomHook"]

log = logging.getLogger(__name__)

OomHook = Callable[[int], None]
"""Called with the image count before each pipeline call; may raise OutOfMemoryError (tests)."""


class _Interrupted(Exception):
    """Every job in the running call was cancelled."""


@dataclass(frozen=True)
class _Row:
    item: WorkItem
    seed: int
    embeds: PromptEmbeds


class Engine:
    """Owns the loaded models; `run` executes one batch and reports to each item."""

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        batch_size: int = 4,
        cache_size: int = 2,
        enhancer: PromptEnhancer | None = None,
        oom_hook: OomHook | None = None,
        preview_interval: float = 0.0,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.batch_size = batch_size
        self.enhancer = enhancer or TemplateEnhancer()
        self.oom_hook = oom_hook
        self.preview_interval = preview_interval
        self.cache = PipelineCache(
            lambda entry, make_room: load_model(
                entry, device=self.device, dtype=self.dtype, make_room=make_room
            ),
            cache_size,
        )
        self.preview_decoders = PreviewDecoders(
            lambda source: load_preview_vae(source, device=self.device, dtype=self.dtype)
        )
        freeze_imports()  # full GC passes would otherwise stall the event loop for ~350 ms

    def close(self) -> None:
        self.preview_decoders.clear()
        self.cache.clear()

    def run(self, items: Sequence[WorkItem]) -> None:
        """Run `items` (one batch key) and answer each item exactly once."""
        live = [item for item in items if not _finish_if_cancelled(item)]
        if not live:
            return
        try:
            results = self._generate(live)
        except InferenceError as exc:
            for item in live:
                if not _finish_if_cancelled(item):
                    item.fail(exc)
            return
        except Exception as exc:
            waiting = [item for item in live if not item.answered]
            error = unexpected_failure(exc, [item.job_id for item in waiting], GENERATION_FAILED)
            for item in waiting:
                item.fail(error)
            return
        for item in live:
            if not item.answered and not _finish_if_cancelled(item):
                item.answer(results[id(item)])

    # -- one batch -------------------------------------------------------------------------------

    def _generate(self, items: list[WorkItem]) -> dict[int, Outcome]:
        now = time.perf_counter()
        for item in items:
            item.started_at = now
        first = items[0]
        key = first.key
        if first.selection.model.name not in self.cache:
            for item in items:
                item.on_progress("loading", 0, 0)
        model = self.cache.get(first.selection.model)
        self._prepare(model, first)
        prompts = self._prompts(items, model)
        items = [item for item in items if id(item) in prompts]
        rows: list[_Row] = []
        for item in items:
            embeds = encode_prompts(
                model.pipe,
                model.arch,
                prompts[id(item)],
                item.request.negative_prompt,
                clip_skip=item.request.clip_skip,
                guidance=key.guidance_scale > 1,
            )
            rows.extend(_Row(item, seed, embeds) for seed in item.seeds)
        images: dict[int, list[Any]] = {id(item): [] for item in items}
        for group in _by_prompt_length(rows):
            for start in range(0, len(group), self.batch_size):
                chunk = [r for r in group[start : start + self.batch_size] if not r.item.cancelled]
                if not chunk:
                    continue
                try:
                    made = self._run_rows(model, key, chunk)
                except _Interrupted:
                    continue
                for row, image in zip(chunk, made, strict=True):
                    images[id(row.item)].append(image)
        return {id(i): Outcome(images=images[id(i)], prompt=prompts[id(i)]) for i in items}

    def _prepare(self, model: LoadedModel, item: WorkItem) -> None:
        components.apply_vae(
            model,
            item.selection.vae,
            lambda entry: load_vae(entry, device=self.device, dtype=self.dtype),
        )
        components.apply_loras(model, item.selection.loras)
        components.apply_tome(model, item.key.tomesd, item.selection.model.tome)

    def _prompts(self, items: list[WorkItem], model: LoadedModel) -> dict[int, str]:
        """Each item's prompt, keyed by `id(item)`; an item whose prompt fails (`enhance_prompt`:
        the prompt model cannot load or run) is answered with that error and left out."""
        prompts: dict[int, str] = {}
        for item in items:
            try:
                prompts[id(item)] = self._prompt(item, model)
            except InferenceError as exc:
                item.fail(exc)
            except Exception as exc:
                item.fail(unexpected_failure(exc, [item.job_id], GENERATION_FAILED))
        return prompts

    def _prompt(self, item: WorkItem, model: LoadedModel) -> str:
        if item.request.enhance_prompt != "yes":
            return item.request.prompt
        entry = item.selection.model
        arch = prompt_arch(model.arch, entry.name, entry.source.location)
        return self.enhancer.enhance(item.request.prompt, item.seeds[0], arch)

    def _run_rows(self, model: LoadedModel, key: BatchKey, rows: list[_Row]) -> list[Any]:
        """One pipeline call, split in halves on CUDA out-of-memory."""
        out_of_memory = False
        try:
            if self.oom_hook is not None:
                self.oom_hook(len(rows))
            return self._call(model, key, rows)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # retry outside the handler so its frames free their tensors
        assert out_of_memory
        free_memory()
        if len(rows) == 1:
            raise BackendError(
                f"Out of GPU memory even for one {key.width}x{key.height} image: "
                "try a smaller width and height."
            )
        half = len(rows) // 2
        log.warning(
            "out of GPU memory for %d images: retrying as %d + %d",
            len(rows),
            half,
            len(rows) - half,
        )
        return self._run_rows(model, key, rows[:half]) + self._run_rows(model, key, rows[half:])

    @torch.inference_mode()
    def _call(self, model: LoadedModel, key: BatchKey, rows: list[_Row]) -> list[Any]:
        pipe = model.pipe
        pipe.scheduler = make_scheduler(key.scheduler, model.base_scheduler, key.karras)
        items = list({id(row.item): row.item for row in rows}.values())
        clock = PreviewClock(self.preview_interval)

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            cancelled = [_finish_if_cancelled(item) for item in items]  # each answered at once
            if all(cancelled):
                raise _Interrupted
            total = int(pipe.num_timesteps)
            previews: dict[int, bytes] = {}
            if clock.due(step + 1, total):
                previews = _previews(model, tensors.get("latents"), rows, self.preview_decoders)
            for item in items:
                if item.cancelled:
                    continue
                preview = previews.get(id(item))
                if preview is not None and item.on_preview is not None:
                    item.on_preview(step + 1, total, preview)
                else:
                    item.on_progress("running", step + 1, total)
            return tensors

        result = pipe(
            image=[row.item.image for row in rows],
            strength=rows[0].item.request.strength,
            num_inference_steps=key.steps,
            guidance_scale=key.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(row.seed) for row in rows],
            num_images_per_prompt=1,
            output_type="pil",
            callback_on_step_end=on_step,
            **pipeline_kwargs([row.embeds for row in rows]),
        )
        return list(result.images)


def _finish_if_cancelled(item: WorkItem) -> bool:
    """Answer a cancelled item (`Cancelled`, unless already answered); True when cancelled."""
    if item.cancelled:
        item.answer(Cancelled("The job was cancelled."))
        return True
    return False


def _previews(
    model: LoadedModel, latents: Any, rows: list[_Row], decoders: PreviewDecoders
) -> dict[int, bytes]:
    """A preview per live job that wants one (keyed by `id(item)`), from its own rows' latents
    (rows and latents are in the same order; one model). A failure costs only the previews."""
    wanted = [i for i, row in enumerate(rows) if row.item.on_preview and not row.item.cancelled]
    if not isinstance(latents, torch.Tensor) or not wanted:
        return {}
    try:
        source = rows[0].item.selection.model.preview_vae
        pixels = decoders.pixels(latents[wanted], model.arch, source)
        positions: dict[int, list[int]] = {}
        for position, index in enumerate(wanted):
            positions.setdefault(id(rows[index].item), []).append(position)
        blur = {id(row.item): row.item.request.safety_checker == "yes" for row in rows}
        return {key: preview_jpeg(pixels[at], blur=blur[key]) for key, at in positions.items()}
    except Exception:
        log.warning("making a live preview failed", exc_info=True)
        return {}


def _by_prompt_length(rows: list[_Row]) -> list[list[_Row]]:
    """Rows grouped by their embeddings' length, in order: long prompts (several 77-token
    windows) cannot share a pipeline call with shorter ones."""
    groups: dict[int, list[_Row]] = {}
    for row in rows:
        groups.setdefault(row.embeds.length, []).append(row)
    return list(groups.values())
