"""The 15 schedulers: configuration from the model's own, Karras, and a correct img2img start.

"Oracle" check: noise an image to img2img's first timestep with `add_noise`, then run the sampler
with a model that predicts exactly that noise. A deterministic sampler whose noising step matches
its own update returns the original image; one that does not (diffusers' stock IPNDM with
a made-up add_noise, say) ends far from it.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import pytest
import torch
from tiny_models import SD15_SCHEDULER_CONFIG

from inference.local.batcher import karras_applies
from inference.local.schedulers import SDIPNDMScheduler, make_scheduler
from inference.request import KARRAS_SCHEDULERS, SCHEDULERS

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 vs diffusers

SD15 = SD15_SCHEDULER_CONFIG  # the real SD 1.5 config (PNDM, scaled_linear, offset 1)
EXACT = [  # deterministic samplers that are exact for a constant noise prediction
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "IPNDMScheduler",
]
CLOSE = ["LMSDiscreteScheduler", "DDIMScheduler", "PNDMScheduler", "DEISMultistepScheduler"]


def oracle_error(scheduler: Any, steps: int = 21, strength: float = 0.7) -> tuple[float, float]:
    """Mean distance to x0 after noising, and after denoising with a perfect noise predictor."""
    scheduler.set_timesteps(steps)
    start = steps - int(steps * strength)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):  # as the img2img pipeline does
        scheduler.set_begin_index(start * scheduler.order)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    sample = scheduler.add_noise(x0, noise, timesteps[:1])
    before = (sample - x0).abs().mean().item()
    for t in timesteps:
        scheduler.scale_model_input(sample, t)
        sample = scheduler.step(noise, t, sample).prev_sample
    return before, (sample - x0).abs().mean().item()


@pytest.mark.parametrize("name", EXACT + CLOSE)
@pytest.mark.parametrize("karras", [False, True])
def test_img2img_noising_matches_each_deterministic_sampler(name: str, karras: bool) -> None:
    before, after = oracle_error(make_scheduler(name, SD15, karras))
    assert before > 0.5
    assert after < (1e-3 if name in EXACT else 0.2) * before


def test_stock_ipndm_cannot_do_img2img_but_ours_can() -> None:
    stock = diffusers.IPNDMScheduler.from_config(SD15)
    assert not hasattr(stock, "add_noise")
    ours = make_scheduler("IPNDMScheduler", SD15, karras=True)
    assert isinstance(ours, SDIPNDMScheduler) and isinstance(ours, diffusers.IPNDMScheduler)
    ours.set_timesteps(21)
    # the UNet sees the model's own integer timesteps (not IPNDM's continuous 0..1)
    assert ours.timesteps.dtype == torch.int64 and int(ours.timesteps[0]) > 900


def test_ipndm_understands_v_prediction() -> None:
    scheduler = make_scheduler("IPNDMScheduler", {**SD15, "prediction_type": "v_prediction"}, False)
    scheduler.set_timesteps(21)
    timesteps = scheduler.timesteps[7:]
    scheduler.set_begin_index(7)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 1, 4, 4, 4, generator=generator)
    sample = scheduler.add_noise(x0, noise, timesteps[:1])
    for index, t in enumerate(timesteps):
        alpha, sigma = scheduler.alphas[index + 7], scheduler.betas[index + 7]
        velocity = alpha * noise - sigma * x0
        sample = scheduler.step(velocity, t, sample).prev_sample
    assert (sample - x0).abs().max().item() < 1e-3


def test_karras_list_matches_the_diffusers_classes() -> None:
    takes_karras = {
        name
        for name in SCHEDULERS
        if "use_karras_sigmas" in inspect.signature(getattr(diffusers, name).__init__).parameters
    }
    assert takes_karras - {"IPNDMScheduler"} == KARRAS_SCHEDULERS
    assert karras_applies("EulerDiscreteScheduler", True)
    assert not karras_applies("EulerDiscreteScheduler", False)
    assert not karras_applies("DDIMScheduler", True)


@pytest.mark.parametrize("name", sorted(KARRAS_SCHEDULERS))
def test_karras_is_set_both_ways_whatever_the_model_config_says(name: str) -> None:
    base = {**SD15, "use_karras_sigmas": True, "use_exponential_sigmas": False}
    assert make_scheduler(name, base, karras=False).config.use_karras_sigmas is False
    assert make_scheduler(name, {**SD15, "use_beta_sigmas": True}, True).config.use_karras_sigmas


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_is_a_fresh_object_of_its_class(name: str) -> None:
    first = make_scheduler(name, SD15, karras=True)
    second = make_scheduler(name, SD15, karras=True)
    assert first is not second
    assert isinstance(first, getattr(diffusers, name))
    assert first.config.num_train_timesteps == 1000
    assert first.config.beta_schedule == "scaled_linear"


def test_unknown_scheduler_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("FancyScheduler", SD15, karras=False)


def test_a_scheduler_that_rewrites_its_config_does_not_leak_into_the_next_call() -> None:
    first = make_scheduler("DPMSolverSinglestepScheduler", SD15, karras=False)
    # odd step counts (all of the API's) need lower_order_final: set up front, no warning
    assert first.config.lower_order_final is True
    first.register_to_config(lower_order_final=False, solver_order=3)
    first.set_timesteps(21)
    again = make_scheduler("DPMSolverSinglestepScheduler", SD15, karras=False)
    assert again.config.lower_order_final is True and again.config.solver_order == 2
    assert again.step_index is None and again is not first
