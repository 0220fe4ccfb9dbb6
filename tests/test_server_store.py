"""The server's in-memory result store: expiry, and a memory cap that expires the oldest jobs."""

from __future__ import annotations

from inference.result import GeneratedImage, Img2ImgResult
from inference.server.store import ResultStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def result(size: int) -> Img2ImgResult:
    image = GeneratedImage(
        data=b"x" * size, original=b"o" * size, format="png", width=8, height=8, seed=1, nsfw=True
    )
    return Img2ImgResult(id="1", images=[image], nsfw_content_detected=[True])


def finished(store: ResultStore, size: int) -> int:
    job = store.new_job(
        key_id=0, family="/api/v6/images", samples=1, base64_out=False, track_id=None, webhook=None
    )
    store.finish(job, result(size))
    return job.api_id


def test_outputs_expire_after_the_ttl_and_originals_are_not_kept() -> None:
    clock = Clock()
    store = ResultStore(60.0, clock)
    api_id = finished(store, 10)
    job = store.get(api_id)
    assert job is not None and job.result is not None
    assert job.result.images[0].original is None  # never served, so never kept
    assert store.output(job.tokens[0]) is not None
    clock.now = 61.0
    assert store.get(api_id) is None and store.output(job.tokens[0]) is None
    store.sweep()
    assert store.jobs() == []


def test_past_the_memory_cap_the_oldest_finished_jobs_expire_first() -> None:
    store = ResultStore(3600.0, Clock(), max_bytes=25)
    first, second, third = (finished(store, 10) for _ in range(3))
    assert store.get(first) is None  # 30 bytes > 25: the oldest went
    kept = [store.get(second), store.get(third)]
    assert all(job is not None and store.output(job.tokens[0]) for job in kept)
    alone = ResultStore(3600.0, Clock(), max_bytes=5)
    big = finished(alone, 10)
    assert alone.get(big) is not None  # the newest job is kept even when it alone is larger
