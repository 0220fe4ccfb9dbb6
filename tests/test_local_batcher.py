"""The local backend's queue: batch keys, capacity in images, fairness, removal (no torch)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from inference.local.batcher import Batcher, WorkItem, batch_key, karras_applies
from inference.local.registry import LoraEntry, ModelEntry, Selection, Source, VaeEntry
from inference.port import CancelToken
from inference.request import Img2ImgRequest

MODEL = ModelEntry("m", Source(str(Path("/m")), "folder"), "sd")
OTHER = ModelEntry("o", Source(str(Path("/o")), "folder"), "sd")
LORA_A = LoraEntry("a", Source("/a.safetensors", "file"))
LORA_B = LoraEntry("b", Source("/b.safetensors", "file"))


def item(
    job_id: str,
    *,
    model: ModelEntry = MODEL,
    samples: int = 1,
    size: tuple[int, int] = (64, 64),
    loras: tuple[tuple[LoraEntry, float], ...] = (),
    vae: VaeEntry | None = None,
    **fields: Any,
) -> WorkItem:
    request = Img2ImgRequest(prompt=job_id, samples=samples, **{"seed": 1, **fields})
    selection = Selection(model=model, vae=vae, loras=loras)
    karras = karras_applies(request.scheduler, request.use_karras_sigmas == "yes")
    return WorkItem(
        job_id=job_id,
        request=request,
        selection=selection,
        key=batch_key(request, selection, size, karras=karras),
        image=None,
        seeds=request.seeds(0),
        token=CancelToken(),
        on_progress=lambda *_: None,
        on_done=lambda _: None,
    )


def test_jobs_that_differ_only_in_per_image_inputs_share_a_key() -> None:
    a = item("a", negative_prompt="blurry", strength=0.7)
    b = item("b", seed=99, strength=0.71)  # int(21 * 0.71) == int(21 * 0.7) == 14
    assert a.key == b.key


@pytest.mark.parametrize(
    "change",
    [
        {"model": OTHER},
        {"vae": VaeEntry("v", Source("/v", "folder"))},
        {"loras": ((LORA_A, 1.0),)},
        {"loras": ((LORA_A, 0.5),)},
        {"scheduler": "DDIMScheduler"},
        {"use_karras_sigmas": "no"},
        {"num_inference_steps": 31},
        {"strength": 0.5},
        {"guidance_scale": 5},
        {"size": (64, 72)},
        {"tomesd": "no"},
        {"clip_skip": 2},
    ],
)
def test_anything_a_pipeline_call_shares_splits_the_key(change: dict[str, Any]) -> None:
    assert item("a").key != item("b", **change).key


def test_karras_only_matters_where_the_scheduler_uses_it() -> None:
    assert (
        item("a", scheduler="DDIMScheduler").key
        == item("b", scheduler="DDIMScheduler", use_karras_sigmas="no").key
    )
    assert item("a", clip_skip=1).key == item("b").key  # 1 is "no skip", like None
    assert (
        item("a", loras=((LORA_A, 1.0), (LORA_B, 0.5))).key
        == item("b", loras=((LORA_B, 0.5), (LORA_A, 1.0))).key
    )


def test_a_batch_fills_up_to_the_batch_size_in_images() -> None:
    batcher = Batcher(max_images=4)
    jobs = [item("a", samples=2), item("b"), item("c", samples=2), item("d")]
    for job in jobs:
        batcher.put(job)
    assert [j.job_id for j in batcher.take() or []] == ["a", "b"]  # c would make 5
    assert [j.job_id for j in batcher.take() or []] == ["c", "d"]
    assert len(batcher) == 0


def test_a_job_larger_than_the_batch_still_runs_alone() -> None:
    batcher = Batcher(max_images=2)
    batcher.put(item("big", samples=4))
    batcher.put(item("small"))
    assert [j.job_id for j in batcher.take() or []] == ["big"]
    assert [j.job_id for j in batcher.take() or []] == ["small"]


def test_groups_take_turns_by_their_oldest_job() -> None:
    batcher = Batcher(max_images=4)
    order = [
        item("x1"),
        item("y1", scheduler="DDIMScheduler"),
        item("x2"),
        item("z1", model=OTHER),
        item("y2", scheduler="DDIMScheduler"),
    ]
    for job in order:
        batcher.put(job)
    batches = [[j.job_id for j in batcher.take() or []] for _ in range(3)]
    assert batches == [["x1", "x2"], ["y1", "y2"], ["z1"]]


def test_removed_jobs_are_not_handed_out() -> None:
    batcher = Batcher(max_images=4)
    a, b = item("a"), item("b")
    batcher.put(a)
    batcher.put(b)
    assert batcher.remove(a) is True
    assert batcher.remove(a) is False
    assert batcher.take() == [b]
    assert batcher.remove(b) is False  # already handed out


def test_take_waits_for_work_and_close_releases_it() -> None:
    batcher = Batcher(max_images=4)
    got: list[Any] = []
    taker = threading.Thread(target=lambda: got.append(batcher.take()))
    taker.start()
    job = item("a")
    batcher.put(job)
    taker.join(timeout=10)
    assert got == [[job]]

    waiter = threading.Thread(target=lambda: got.append(batcher.take()))
    waiter.start()
    left = batcher.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and got[-1] is None and left == []
    with pytest.raises(RuntimeError):
        batcher.put(item("late"))


def test_close_returns_the_jobs_still_queued() -> None:
    batcher = Batcher(max_images=4)
    jobs = [item("a"), item("b", model=OTHER)]
    for job in jobs:
        batcher.put(job)
    assert set(batcher.close()) == set(jobs)
    assert batcher.take() is None


def test_gathering_stops_as_soon_as_the_batch_is_full() -> None:
    batcher = Batcher(max_images=2)
    batcher.put(item("a"))
    batcher.put(item("b"))
    # full already: a long gather window must not delay it (the test would time out)
    assert len(batcher.take(gather_seconds=3600) or []) == 2


def test_a_gathering_worker_picks_up_jobs_that_arrive_meanwhile() -> None:
    batcher = Batcher(max_images=2)
    got: list[Any] = []
    batcher.put(item("a"))
    taker = threading.Thread(target=lambda: got.append(batcher.take(gather_seconds=3600)))
    taker.start()
    batcher.put(item("b"))  # completes the batch: take returns without waiting the hour
    taker.join(timeout=30)
    assert not taker.is_alive()
    assert [j.job_id for j in got[0]] == ["a", "b"]
