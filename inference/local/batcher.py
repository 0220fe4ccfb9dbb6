"""The local backend's queue: groups compatible jobs into batches for one pipeline call.

Jobs are compatible when everything that a pipeline call shares matches (`BatchKey`): model, VAE,
LoRA set and strengths, scheduler and whether Karras sigmas apply, steps, denoising steps, guidance,
output size, ToMe and clip skip. Prompts, negative prompts, init images and seeds may differ.

Fairness: the next batch is the group whose oldest job is the oldest in the queue; it takes that
group's jobs in arrival order up to the batch size in images. Pure Python and thread-safe: the
event loop puts and removes, the GPU worker thread takes.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from inference.local.registry import Selection
from inference.port import CancelToken
from inference.request import KARRAS_SCHEDULERS, Img2ImgRequest

__all__ = [
    "BatchKey",
    "Batcher",
    "Outcome",
    "PreviewHook",
    "WorkItem",
    "batch_key",
    "karras_applies",
    "own_copy",
]


def karras_applies(scheduler: str, requested: bool) -> bool:
    """Whether Karras sigmas are really used for `scheduler` when `requested`."""
    return requested and scheduler in KARRAS_SCHEDULERS


@dataclass(frozen=True)
class BatchKey:
    model: str
    vae: str | None
    loras: tuple[tuple[str, float], ...]
    scheduler: str
    karras: bool
    steps: int
    denoising_steps: int
    guidance_scale: float
    width: int
    height: int
    tomesd: bool
    clip_skip: int  # 1 = no skip (None in the request)


def batch_key(
    request: Img2ImgRequest, selection: Selection, size: tuple[int, int], *, karras: bool
) -> BatchKey:
    """The key of a request; `karras` is whether Karras sigmas really apply to its scheduler."""
    return BatchKey(
        model=selection.model.name,
        vae=selection.vae.name if selection.vae else None,
        loras=tuple(sorted((lora.name, strength) for lora, strength in selection.loras)),
        scheduler=request.scheduler,
        karras=karras,
        steps=request.num_inference_steps,
        denoising_steps=request.denoising_steps,
        guidance_scale=request.guidance_scale,
        width=size[0],
        height=size[1],
        tomesd=request.tomesd == "yes",
        clip_skip=request.clip_skip or 1,
    )


@dataclass(frozen=True)
class Outcome:
    """What the worker made for one job: raw images (one per seed) and the prompt it used."""

    images: list[Any]
    prompt: str


Stage = Literal["loading", "running"]
ProgressHook = Callable[[Stage, int, int], None]  # stage, step, total; on the worker thread
DoneHook = Callable[[Outcome | BaseException], None]  # called once, on the worker thread
PreviewHook = Callable[[int, int, bytes], None]  # step, total, image: that step's progress


@dataclass(eq=False)
class WorkItem:
    """One job waiting for, or inside, a batch."""

    job_id: str
    request: Img2ImgRequest
    selection: Selection
    key: BatchKey
    image: Any  # PIL image already fitted to the output size
    seeds: list[int]
    token: CancelToken
    on_progress: ProgressHook
    on_done: DoneHook
    abandoned: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None  # time.perf_counter() when the engine took it up
    on_preview: PreviewHook | None = None  # None: the job gets no live previews
    answered: bool = False  # `answer` was called; later answers are ignored

    @property
    def samples(self) -> int:
        return len(self.seeds)

    def answer(self, value: Outcome | BaseException) -> None:
        """Call `on_done` with `value` unless the item was answered already (a job cancelled
        in the middle of a pipeline call is answered at once; its rows run on to the end)."""
        if not self.answered:
            self.answered = True
            self.on_done(value)

    def fail(self, error: BaseException) -> None:
        """Answer with a copy of `error`, which the jobs of a batch may share: each raise
        adds the raiser's frames to the exception's traceback, so one shared object would
        keep every job's frames (and their images) alive and growing."""
        self.answer(own_copy(error))

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled or self.abandoned.is_set()


def own_copy(error: BaseException) -> BaseException:
    """A fresh exception of the same type, message and attributes, with the same cause, and
    no traceback of its own."""
    try:
        fresh = copy.copy(error)  # (type, args, __dict__): no traceback, cause or context
    except Exception:  # a constructor that does not take its own args back
        return error
    fresh.__cause__ = error.__cause__
    return fresh


class Batcher:
    """Holds queued items; `take` hands the worker the next batch (up to `max_images` images)."""

    def __init__(self, max_images: int) -> None:
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        self.max_images = max_images
        self._groups: dict[BatchKey, deque[tuple[int, WorkItem]]] = {}
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return sum(len(group) for group in self._groups.values())

    def put(self, item: WorkItem) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._groups.setdefault(item.key, deque()).append((next(self._order), item))
            self._cond.notify_all()

    def remove(self, item: WorkItem) -> bool:
        """Take `item` out of the queue; False when it already left (running or done)."""
        with self._cond:
            group = self._groups.get(item.key)
            if not group:
                return False
            for entry in group:
                if entry[1] is item:
                    group.remove(entry)
                    if not group:
                        del self._groups[item.key]
                    self._cond.notify_all()
                    return True
            return False

    def take(self, *, gather_seconds: float = 0.0) -> list[WorkItem] | None:
        """Block until a batch is ready and return it; None once closed.

        With `gather_seconds`, a batch that is not full waits up to that long for more
        compatible jobs (they usually arrive together when the bot releases several at once).
        """
        with self._cond:
            deadline: float | None = None
            while True:
                if self._closed:
                    return None
                if not self._groups:
                    deadline = None
                    self._cond.wait()
                    continue
                key = min(self._groups, key=lambda k: self._groups[k][0][0])
                now = time.monotonic()
                if deadline is None:
                    deadline = now + gather_seconds
                if self._images(key) >= self.max_images or now >= deadline:
                    return self._pop(key)
                self._cond.wait(deadline - now)

    def _images(self, key: BatchKey) -> int:
        return sum(item.samples for _, item in self._groups[key])

    def _pop(self, key: BatchKey) -> list[WorkItem]:
        group = self._groups[key]
        batch: list[WorkItem] = []
        images = 0
        while group and (not batch or images + group[0][1].samples <= self.max_images):
            _, item = group.popleft()
            batch.append(item)
            images += item.samples
        if not group:
            del self._groups[key]
        return batch

    def close(self) -> list[WorkItem]:
        """Stop handing out batches; return the items still queued."""
        with self._cond:
            self._closed = True
            left = [item for group in self._groups.values() for _, item in group]
            self._groups.clear()
            self._cond.notify_all()
            return left
