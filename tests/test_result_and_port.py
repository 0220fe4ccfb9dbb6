"""The result's API shape (docs/reference.md §3) and the port's plain-data types."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import threading

import pytest
from PIL import Image

from inference import Cancelled, CancelToken, GeneratedImage, Img2ImgRequest, Img2ImgResult, Job
from inference.port import ProgressEvent
from inference.result import effective_meta

SECRET = "sk-result-secret-999"


def make_result() -> Img2ImgResult:
    request = Img2ImgRequest.model_validate(
        {"key": SECRET, "prompt": "a cat", "samples": 2, "seed": 7, "track_id": "t-1"}
    )
    seeds = request.seeds(0)
    images = [
        GeneratedImage(data=b"\x89PNG-fake-%d" % i, format="png", width=64, height=48, seed=s)
        for i, s in enumerate(seeds)
    ]
    return Img2ImgResult(
        id="job-1",
        output=["out/job-1-0.png", "out/job-1-1.png"],
        meta=effective_meta(request, width=64, height=48, seeds=seeds, prompt="a cat, detailed"),
        nsfw_content_detected=[False, True],
        generationTime=1.5,
        track_id=request.track_id,
        images=images,
    )


def test_result_dump_has_the_api_success_shape() -> None:
    dump = make_result().model_dump(mode="json")
    assert set(dump) == {
        "status",
        "id",
        "output",
        "meta",
        "nsfw_content_detected",
        "generationTime",
        "track_id",
        "message",
    }
    assert dump["status"] == "success"
    assert dump["generationTime"] == 1.5
    assert dump["meta"]["seed"] == [7, 8]
    assert dump["meta"]["width"] == 64 and dump["meta"]["height"] == 48
    assert dump["meta"]["prompt"] == "a cat, detailed"
    assert dump["meta"]["original_prompt"] == "a cat"
    assert "key" not in dump["meta"]
    assert SECRET not in json.dumps(dump)
    assert dump["track_id"] == "t-1"


def test_result_travels_as_plain_data_with_its_images() -> None:
    result = make_result()
    wire = json.loads(json.dumps(result.to_wire()))
    back = Img2ImgResult.from_wire(wire)
    assert back.images == result.images
    assert back.seeds == [7, 8]
    assert back.model_dump() == result.model_dump()


def test_job_and_progress_events_round_trip_through_json() -> None:
    job = Job(id="j1", request=Img2ImgRequest(prompt="x", key=SECRET), init_image=b"\x00\xffabc")
    text = job.model_dump_json()
    assert SECRET not in text
    back = Job.model_validate_json(text)
    assert back.init_image == b"\x00\xffabc" and back.request.prompt == "x"
    event = ProgressEvent(job_id="j1", stage="running", step=3, total_steps=12)
    assert ProgressEvent.model_validate_json(event.model_dump_json()) == event
    assert event.fraction == 0.25


async def test_cancel_token_wakes_waiters_from_another_thread() -> None:
    token = CancelToken()
    waiter = asyncio.create_task(token.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    thread = threading.Thread(target=token.cancel)
    thread.start()
    await asyncio.wait_for(waiter, timeout=5)
    thread.join()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()
    await asyncio.wait_for(token.wait(), timeout=1)  # already cancelled: returns at once


def test_results_of_real_encoded_pngs_round_trip_byte_for_byte() -> None:
    noise = Image.frombytes("RGB", (64, 64), random.Random(5).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    data = buffer.getvalue()
    assert {"+", "/"} & set(base64.b64encode(data).decode())  # both base64 alphabets differ here
    image = GeneratedImage(data=data, format="png", width=64, height=64, seed=1)
    result = Img2ImgResult(id="j", images=[image, image])
    back = Img2ImgResult.from_wire(json.loads(json.dumps(result.to_wire())))
    assert [i.data for i in back.images] == [data, data]
    assert Image.open(io.BytesIO(back.images[0].data)).tobytes() == noise.tobytes()
