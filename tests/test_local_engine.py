"""The local engine on tiny random-weight models: every option, batching, cancellation, OOM.

Tiny models loaded through the real registry and loading code (HF_HUB_OFFLINE=1). Outputs of
random weights mean nothing, so the tests assert properties: sizes, determinism, that an option
changes the output, that a batch equals the same jobs run alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from tiny_models import TinyModels, gradient_image

from inference.errors import BackendError, BackendUnavailable, Cancelled, InvalidRequest
from inference.images import fit_to_size
from inference.local import loading
from inference.local.batcher import Outcome, WorkItem, batch_key, karras_applies
from inference.local.engine import Engine
from inference.local.enhance import CausalLMEnhancer, TemplateEnhancer
from inference.local.loading import PipelineCache, load_model
from inference.local.registry import ModelEntry, ModelRegistry, Source
from inference.port import CancelToken
from inference.request import SCHEDULERS, Img2ImgRequest

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FAST = {"strength": 0.3, "width": 64, "height": 64}  # int(21 * 0.3) = 6 denoising steps


@pytest.fixture(scope="module", autouse=True)
def offline(monkeypatch_module: pytest.MonkeyPatch) -> None:
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


class Job:
    """A work item plus what the engine reported for it."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        on_step: Callable[[Job, int, int], None] | None = None,
        **fields: Any,
    ) -> None:
        body = {"prompt": "a red fox", "seed": 1, "safety_checker": "no", **FAST, **fields}
        self.request = Img2ImgRequest(**body)
        selection = registry.select(self.request)
        image = fit_to_size(gradient_image(), self.request.width or 64, self.request.height or 64)
        karras = karras_applies(self.request.scheduler, self.request.use_karras_sigmas == "yes")
        self.token = CancelToken()
        self.events: list[tuple[str, int, int]] = []
        self.results: list[Outcome | BaseException] = []
        self._on_step = on_step
        self.item = WorkItem(
            job_id=str(id(self)),
            request=self.request,
            selection=selection,
            key=batch_key(self.request, selection, image.size, karras=karras),
            image=image,
            seeds=self.request.seeds(0),
            token=self.token,
            on_progress=self._progress,
            on_done=self.results.append,
        )

    def _progress(self, stage: str, step: int, total: int) -> None:
        self.events.append((stage, step, total))
        if self._on_step is not None and stage == "running":
            self._on_step(self, step, total)

    @property
    def outcome(self) -> Outcome:
        assert len(self.results) == 1, self.results
        result = self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    @property
    def arrays(self) -> list[np.ndarray]:
        return [np.asarray(image, dtype=np.float64) for image in self.outcome.images]


def run(engine: Engine, *jobs: Job) -> None:
    engine.run([job.item for job in jobs])


def generate(engine: Engine, registry: ModelRegistry, **fields: Any) -> list[np.ndarray]:
    job = Job(registry, **fields)
    run(engine, job)
    return job.arrays


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


# -- schedulers, seeds, samples ---------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_makes_an_image_of_the_requested_size(
    engine: Engine, registry: ModelRegistry, scheduler: str
) -> None:
    job = Job(registry, scheduler=scheduler, width=72, height=64)
    run(engine, job)
    (image,) = job.outcome.images
    assert image.size == (72, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 1  # not a blank or NaN-black image
    running = [e for e in job.events if e[0] == "running"]
    assert running and running[-1][1] == running[-1][2]  # every step ran


def test_the_same_seed_gives_the_same_image_and_another_seed_another(
    engine: Engine, registry: ModelRegistry
) -> None:
    (first,) = generate(engine, registry, seed=7)
    (again,) = generate(engine, registry, seed=7)
    (other,) = generate(engine, registry, seed=8)
    assert np.array_equal(first, again)
    assert differ(first, other) > 1


def test_samples_use_consecutive_seeds(engine: Engine, registry: ModelRegistry) -> None:
    job = Job(registry, seed=41, samples=3)
    run(engine, job)
    images = job.arrays
    assert len(images) == 3 and job.item.seeds == [41, 42, 43]
    assert differ(images[0], images[1]) > 1 and differ(images[1], images[2]) > 1
    (alone,) = generate(engine, registry, seed=42)
    assert np.abs(images[1] - alone).max() <= 3  # image i is seed + i run alone


# -- options that must change the output ------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "changed"),
    [
        ({"use_karras_sigmas": "no"}, {"use_karras_sigmas": "yes"}),
        ({"clip_skip": 1}, {"clip_skip": 2}),
        ({"tomesd": "no"}, {"tomesd": "yes"}),
        ({"vae": None}, {"vae": "other"}),
        ({"lora_model": None}, {"lora_model": "detail", "lora_strength": "1"}),
        ({"prompt": "a red fox"}, {"prompt": "the ocean at night"}),
        ({"negative_prompt": None}, {"negative_prompt": "blurry, dark"}),
        ({"guidance_scale": 7.5}, {"guidance_scale": 2}),
        ({"strength": 0.3}, {"strength": 0.6}),
    ],
    ids=[
        "karras",
        "clip_skip",
        "tomesd",
        "vae",
        "lora",
        "prompt",
        "negative",
        "guidance",
        "strength",
    ],
)
def test_each_option_changes_the_image(
    engine: Engine, registry: ModelRegistry, base: dict[str, Any], changed: dict[str, Any]
) -> None:
    common = {"scheduler": "EulerDiscreteScheduler", "tomesd": "no", "seed": 3}
    (before,) = generate(engine, registry, **{**common, **base})
    (after,) = generate(engine, registry, **{**common, **changed})
    assert differ(before, after) > 0.5


def test_options_that_mean_no_change_give_the_same_image(
    engine: Engine, registry: ModelRegistry
) -> None:
    common = {"scheduler": "EulerDiscreteScheduler", "seed": 5, "tomesd": "no"}
    (plain,) = generate(engine, registry, **common)
    (skip_one,) = generate(engine, registry, clip_skip=1, **common)
    (lora_zero,) = generate(engine, registry, lora_model="detail", lora_strength="0", **common)
    (lora_full,) = generate(engine, registry, lora_model="detail", **common)
    (vae_back,) = generate(engine, registry, **common)  # after LoRA: adapters switched off again
    assert np.array_equal(plain, skip_one)
    assert np.abs(plain - lora_zero).max() <= 2
    assert differ(plain, lora_full) > 0.5
    assert np.array_equal(plain, vae_back)


def test_karras_is_ignored_where_the_scheduler_has_none(
    engine: Engine, registry: ModelRegistry
) -> None:
    (yes,) = generate(engine, registry, scheduler="DDIMScheduler", use_karras_sigmas="yes")
    (no,) = generate(engine, registry, scheduler="DDIMScheduler", use_karras_sigmas="no")
    assert np.array_equal(yes, no)


def test_vae_swap_and_back(engine: Engine, registry: ModelRegistry) -> None:
    (own,) = generate(engine, registry, seed=9)
    (other,) = generate(engine, registry, seed=9, vae="other")
    (own_again,) = generate(engine, registry, seed=9)
    assert differ(own, other) > 0.5
    assert np.array_equal(own, own_again)


def test_a_vae_from_a_single_file_matches_its_folder(
    engine: Engine, registry: ModelRegistry
) -> None:
    (folder,) = generate(engine, registry, seed=15, vae="other")
    (single,) = generate(engine, registry, seed=15, vae="other-file")
    assert np.abs(folder - single).max() <= 1


def test_several_loras_add_up_with_their_strengths(engine: Engine, registry: ModelRegistry) -> None:
    common = {"scheduler": "EulerDiscreteScheduler", "seed": 17, "tomesd": "no"}
    (none,) = generate(engine, registry, **common)
    (one,) = generate(engine, registry, lora_model="detail", lora_strength="1", **common)
    (halves,) = generate(
        engine, registry, lora_model="detail,detail-copy", lora_strength="0.5,0.5", **common
    )
    (half,) = generate(engine, registry, lora_model="detail", lora_strength="0.5", **common)
    assert differ(one, none) > 5
    assert np.abs(one - halves).max() <= 2  # the same LoRA twice at 0.5 is that LoRA at 1
    assert differ(one, half) > 0.2 * differ(one, none)


def test_tomesd_is_reproducible(engine: Engine, registry: ModelRegistry) -> None:
    (first,) = generate(engine, registry, tomesd="yes", seed=11)
    generate(engine, registry, tomesd="yes", seed=12, prompt="something else")
    torch.rand(100)  # the global RNG moves on between calls
    (again,) = generate(engine, registry, tomesd="yes", seed=11)
    assert np.array_equal(first, again)


# -- other models -------------------------------------------------------------------------------


def test_sdxl_runs_through_the_same_registry_and_engine(
    engine: Engine, registry: ModelRegistry
) -> None:
    job = Job(registry, model_id="tiny-xl", samples=2, width=64, height=72)
    run(engine, job)
    assert [image.size for image in job.outcome.images] == [(64, 72), (64, 72)]
    (skip,) = generate(engine, registry, model_id="tiny-xl", clip_skip=2, width=64, height=72)
    assert differ(job.arrays[0], skip) > 0.5
    (negative,) = generate(
        engine, registry, model_id="tiny-xl", negative_prompt="blurry", width=64, height=72
    )
    assert differ(job.arrays[0], negative) > 0.5  # no negative prompt = zero embeddings


def test_a_single_file_checkpoint_loads_and_matches_its_folder(
    engine: Engine, registry: ModelRegistry
) -> None:
    (folder,) = generate(engine, registry, model_id="tiny", seed=21)
    (single,) = generate(engine, registry, model_id="tiny-file", seed=21)
    assert np.abs(folder - single).max() <= 1


def test_the_cache_keeps_at_most_its_size_and_evicts_the_least_recent() -> None:
    loads: list[str] = []

    def loader(entry: ModelEntry, make_room: Callable[[], None]) -> Any:
        make_room()
        loads.append(entry.name)
        return object()

    cache = PipelineCache(loader, size=2)
    a, b, c = (ModelEntry(n, Source(n, "hub"), "sd") for n in "abc")
    first = cache.get(a)
    cache.get(b)
    assert cache.get(a) is first  # a hit, and now the most recent
    cache.get(c)  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.get(b)
    assert loads == ["a", "b", "c", "b"]


def tiny_cache(size: int) -> PipelineCache:
    return PipelineCache(
        lambda e, room: load_model(e, device="cpu", dtype=torch.float32, make_room=room), size
    )


def test_a_model_that_cannot_load_leaves_the_cached_one_loaded(
    models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # not cached: refused without the hub
    cache = tiny_cache(1)
    tiny = ModelEntry("tiny", Source(str(models.sd), "folder"), "sd")
    loaded = cache.get(tiny)
    with pytest.raises(BackendUnavailable):
        cache.get(ModelEntry("gone", Source("org/not-downloaded", "hub"), None))
    assert cache.get(tiny) is loaded


def test_the_cache_evicts_before_the_next_weights_load(
    models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA the evicted model must leave GPU memory before the next one's weights arrive."""
    cached_while_loading: list[list[str]] = []
    real = loading.module_loading

    @contextmanager
    def recording() -> Iterator[None]:
        cached_while_loading.append([name for name in ("one", "two") if name in cache])
        with real():
            yield

    monkeypatch.setattr(loading, "module_loading", recording)
    cache = tiny_cache(1)
    for name in ("one", "two"):
        cache.get(ModelEntry(name, Source(str(models.sd), "folder"), "sd"))
    assert cached_while_loading == [[], []] and "two" in cache


def test_loading_is_reported_only_when_a_model_loads(registry: ModelRegistry) -> None:
    engine = Engine(device="cpu", batch_size=4, cache_size=1)
    try:
        first, second = Job(registry), Job(registry)
        run(engine, first)
        run(engine, second)
    finally:
        engine.close()
    assert first.events[0] == ("loading", 0, 0)
    assert all(stage == "running" for stage, _, _ in second.events)
    steps = [step for _, step, _ in second.events]
    assert steps == list(range(1, 7)) and {total for *_, total in second.events} == {6}


# -- batching -----------------------------------------------------------------------------------


def test_a_batch_equals_the_same_jobs_run_alone(engine: Engine, registry: ModelRegistry) -> None:
    assert_batch_equals_alone(
        engine,
        registry,
        [
            {"prompt": "a red fox", "seed": 100},
            {"prompt": "a blue bird", "seed": 200, "samples": 2, "negative_prompt": "blurry"},
            {"prompt": "the ocean", "seed": 300, "strength": 0.32},  # same step count as 0.3
        ],
    )


def assert_batch_equals_alone(
    engine: Engine, registry: ModelRegistry, specs: list[dict[str, Any]]
) -> None:
    """The jobs of `specs` (one batch key) run together give what each gives run alone."""
    batched = [Job(registry, **spec) for spec in specs]
    assert len({job.item.key for job in batched}) == 1
    run(engine, *batched)
    for spec, job in zip(specs, batched, strict=True):
        alone = generate(engine, registry, **spec)
        assert len(job.arrays) == len(alone)
        for together, single in zip(job.arrays, alone, strict=True):
            assert np.abs(together - single).max() <= 3
            assert np.abs(together - single).mean() < 0.2


def test_a_job_larger_than_the_batch_size_runs_in_chunks(registry: ModelRegistry) -> None:
    engine = Engine(device="cpu", batch_size=2, cache_size=1)
    try:
        job = Job(registry, samples=3, seed=60)
        run(engine, job)
        (last,) = generate(engine, registry, seed=62)
    finally:
        engine.close()
    assert len(job.arrays) == 3
    assert np.abs(job.arrays[2] - last).max() <= 3


# -- cancellation ---------------------------------------------------------------------------------


def cancel_at(step: int) -> Callable[[Job, int, int], None]:
    def on_step(job: Job, at: int, total: int) -> None:
        if at == step:
            job.token.cancel()

    return on_step


def test_cancel_stops_a_running_job_at_the_next_step(
    engine: Engine, registry: ModelRegistry
) -> None:
    job = Job(registry, on_step=cancel_at(2), strength=0.6)  # 12 steps
    run(engine, job)
    assert isinstance(job.results[0], Cancelled) and len(job.results) == 1
    assert max(step for _, step, _ in job.events) == 2


def test_cancelling_one_job_of_a_batch_keeps_the_others(
    engine: Engine, registry: ModelRegistry
) -> None:
    keep = Job(registry, seed=70)
    drop = Job(registry, seed=71, on_step=cancel_at(2))
    run(engine, keep, drop)
    assert isinstance(drop.results[0], Cancelled)
    assert len(keep.arrays) == 1
    assert max(step for _, step, _ in drop.events) == 2  # no progress after its cancel
    assert max(step for _, step, _ in keep.events) == 6
    (alone,) = generate(engine, registry, seed=70)
    assert np.abs(keep.arrays[0] - alone).max() <= 3


def test_a_job_cancelled_in_a_batch_is_answered_within_a_step(
    engine: Engine, registry: ModelRegistry
) -> None:
    keep = Job(registry, seed=70)  # 6 steps
    drop = Job(registry, seed=71, on_step=cancel_at(2))
    keep_step_at_answer: list[int] = []

    def on_done(value: Outcome | BaseException) -> None:
        keep_step_at_answer.append(max(step for _, step, _ in keep.events))
        drop.results.append(value)

    drop.item.on_done = on_done
    run(engine, keep, drop)
    assert isinstance(drop.results[0], Cancelled) and len(drop.results) == 1
    assert keep_step_at_answer == [2]  # at the next step, not when the batch ended (6)
    assert len(keep.arrays) == 1 and max(step for _, step, _ in keep.events) == 6


def test_jobs_cancelled_before_their_batch_starts_do_not_run(
    engine: Engine, registry: ModelRegistry
) -> None:
    job = Job(registry)
    job.token.cancel()
    run(engine, job)
    assert isinstance(job.results[0], Cancelled) and job.events == []


# -- out of GPU memory --------------------------------------------------------------------------


class OomAbove:
    """An OOM hook: fail calls with more than `limit` images, record every call's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[int] = []

    def __call__(self, images: int) -> None:
        self.calls.append(images)
        if images > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")


def test_out_of_memory_splits_the_batch_and_still_makes_every_image(
    engine: Engine, registry: ModelRegistry
) -> None:
    normal = Job(registry, samples=4, seed=80)
    run(engine, normal)
    hook = OomAbove(1)
    engine.oom_hook = hook
    try:
        split = Job(registry, samples=4, seed=80)
        run(engine, split)
    finally:
        engine.oom_hook = None
    assert hook.calls == [4, 2, 1, 1, 2, 1, 1]
    for a, b in zip(normal.arrays, split.arrays, strict=True):
        assert np.abs(a - b).max() <= 3


def test_out_of_memory_for_a_single_image_fails_cleanly(
    engine: Engine, registry: ModelRegistry
) -> None:
    engine.oom_hook = OomAbove(0)
    try:
        job = Job(registry, samples=2)
        run(engine, job)
    finally:
        engine.oom_hook = None
    assert isinstance(job.results[0], BackendError)
    assert "smaller width and height" in str(job.results[0])
    assert len(generate(engine, registry)) == 1  # and the engine still works


# -- bad values ---------------------------------------------------------------------------------


def test_clip_skip_deeper_than_the_text_encoder_is_refused(
    engine: Engine, registry: ModelRegistry
) -> None:
    job = Job(registry, clip_skip=8)  # the tiny encoder has 5 layers
    run(engine, job)
    error = job.results[0]
    assert isinstance(error, InvalidRequest) and error.field == "clip_skip"
    assert "at most 6" in str(error)


def test_each_job_of_a_failed_batch_gets_its_own_error(
    engine: Engine, registry: ModelRegistry
) -> None:
    jobs = [Job(registry, clip_skip=8, seed=seed) for seed in (1, 2)]
    run(engine, *jobs)
    errors = [job.results[0] for job in jobs]
    assert all(isinstance(e, InvalidRequest) and e.field == "clip_skip" for e in errors)
    assert errors[0] is not errors[1]  # raising one adds frames to its traceback only


def test_a_lora_that_does_not_fit_is_refused_and_the_model_still_works(
    engine: Engine, registry: ModelRegistry
) -> None:
    (before,) = generate(engine, registry, model_id="tiny-xl", seed=90)
    job = Job(registry, model_id="tiny-xl", lora_model="detail", seed=90)
    run(engine, job)
    error = job.results[0]
    assert isinstance(error, InvalidRequest) and error.field == "lora_model"
    assert "'detail'" in str(error) and "'tiny-xl'" in str(error)
    (after,) = generate(engine, registry, model_id="tiny-xl", seed=90)
    assert np.array_equal(before, after)


# -- enhance_prompt -----------------------------------------------------------------------------


def test_enhance_prompt_without_a_model_adds_quality_tags(
    engine: Engine, registry: ModelRegistry
) -> None:
    job = Job(registry, prompt="a red fox, best quality", enhance_prompt="yes")
    run(engine, job)
    prompt = job.outcome.prompt
    assert prompt.startswith("a red fox, best quality, masterpiece")
    assert prompt.count("best quality") == 1
    plain = Job(registry, prompt="a red fox")
    run(engine, plain)
    assert plain.outcome.prompt == "a red fox"
    assert differ(job.arrays[0], plain.arrays[0]) > 0.5


def test_the_template_enhancer_is_bounded() -> None:
    long = "x" * 1995
    assert len(TemplateEnhancer().enhance(long, 0)) <= 2000


def test_enhance_prompt_with_a_language_model_is_seeded_and_bounded(models: TinyModels) -> None:
    enhancer = CausalLMEnhancer(str(models.prompt_lm), device="cpu", max_new_tokens=12)
    first = enhancer.enhance("a cat on a sofa", 1)
    assert first.startswith("a cat on a sofa, ") and len(first) > len("a cat on a sofa, ")
    assert enhancer.enhance("a cat on a sofa", 1) == first
    assert enhancer.enhance("a cat on a sofa", 2) != first
    assert all(ch.isprintable() for ch in first)
    assert len(enhancer.enhance("word " * 399, 1)) <= 2000
    state = torch.random.get_rng_state()
    enhancer.enhance("a dog", 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_the_engine_uses_the_language_model_when_configured(
    models: TinyModels, registry: ModelRegistry
) -> None:
    enhancer = CausalLMEnhancer(str(models.prompt_lm), device="cpu", max_new_tokens=8)
    engine = Engine(device="cpu", batch_size=4, cache_size=1, enhancer=enhancer)
    try:
        job = Job(registry, prompt="a red fox", enhance_prompt="yes", seed=5)
        run(engine, job)
    finally:
        engine.close()
    assert job.outcome.prompt == enhancer.enhance("a red fox", 5) != "a red fox"


def test_engine_runs_from_another_thread(engine: Engine, registry: ModelRegistry) -> None:
    job = Job(registry, seed=123)
    worker = threading.Thread(target=run, args=(engine, job))
    worker.start()
    worker.join(timeout=120)
    assert len(job.arrays) == 1
