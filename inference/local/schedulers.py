"""The 15 schedulers of the API, built fresh for each pipeline call from the model's own config.

A fresh scheduler per call matters: schedulers keep per-run state (step index, multistep history)
and some rewrite their config (DPMSolverSinglestep with an odd step count).

`use_karras_sigmas` is honoured where diffusers supports it (Euler, LMS, Heun, KDPM2,
KDPM2-Ancestral, DPM++ multistep/singlestep, UniPC, DEIS) and ignored elsewhere (EulerAncestral,
DDIM, DDPM, PNDM, LCM, IPNDM): see `inference.request.KARRAS_SCHEDULERS`; results report the
effective value.

diffusers' IPNDMScheduler cannot run img2img (no `add_noise`) and is written for v-prediction
models with continuous time in [0, 1]. `SDIPNDMScheduler` keeps its method (iPNDM: a 4th-order
Adams-Bashforth on the noise prediction, with lower-order warm-up; Zhang & Chen 2022) but runs on
the model's own discrete noise schedule, so the UNet sees the timesteps and noise levels it was
trained on and `add_noise` is the matching forward process.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput

from inference.request import KARRAS_SCHEDULERS, SCHEDULERS

__all__ = ["SDIPNDMScheduler", "make_scheduler"]

_OTHER_SIGMA_SCHEDULES = ("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


def make_scheduler(name: str, base_config: Mapping[str, Any], karras: bool) -> Any:
    """A new scheduler `name` configured like the model's own (`base_config`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}")
    config = json.dumps(dict(base_config), sort_keys=True, default=str)
    # building some schedulers takes a second (KDPM2); copying a built one takes a millisecond
    return copy.deepcopy(_prototype(name, config, karras))


@functools.lru_cache(maxsize=64)
def _prototype(name: str, config_json: str, karras: bool) -> Any:
    cls = SDIPNDMScheduler if name == "IPNDMScheduler" else getattr(diffusers, name)
    overrides: dict[str, Any] = {}
    if name in KARRAS_SCHEDULERS:
        overrides["use_karras_sigmas"] = karras
        accepted = inspect.signature(cls.__init__).parameters
        if karras:  # only one sigma schedule may be switched on
            overrides.update({key: False for key in _OTHER_SIGMA_SCHEDULES if key in accepted})
    if name == "DPMSolverSinglestepScheduler":
        # the API's step counts are odd, for which it switches this on itself (with a warning)
        overrides["lower_order_final"] = True
    return cls.from_config(json.loads(config_json), **overrides)


def _betas(schedule: str, start: float, end: float, count: int) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(start, end, count, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, count, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [
                min(1 - alpha_bar((i + 1) / count) / alpha_bar(i / count), 0.999)
                for i in range(count)
            ],
            dtype=torch.float64,
        )
    raise ValueError(f"beta_schedule {schedule!r} is not supported by IPNDM")


_IPNDMBase: Any = diffusers.IPNDMScheduler  # typed as Any: diffusers declares few attributes


class SDIPNDMScheduler(_IPNDMBase):  # type: ignore[misc]
    """iPNDM on a discrete DDPM noise schedule (epsilon or v prediction), with `add_noise`."""

    # like diffusers' own schedulers: other schedulers' config keys are ignored without warnings
    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        trained_betas: list[float] | None = None,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        # IPNDMScheduler.__init__ is skipped on purpose: it builds the v-diffusion schedule.
        if trained_betas is not None:
            betas = torch.tensor(trained_betas, dtype=torch.float64)
        else:
            betas = _betas(beta_schedule, beta_start, beta_end, num_train_timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self.ets: list[torch.Tensor] = []
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        train = self.config.num_train_timesteps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, train - 1, num_inference_steps).round()[::-1]
        elif spacing == "trailing":
            steps = np.round(np.arange(train, 0, -train / num_inference_steps)) - 1
        else:  # "leading", as SD 1.x configs use
            ratio = train // num_inference_steps
            steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1]
            steps = steps + self.config.steps_offset
        steps = np.clip(steps, 0, train - 1).astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps.copy()).to(device)
        cumprod = self.alphas_cumprod[torch.from_numpy(steps.copy())]
        # signal and noise scale at each step, then the clean end point (1, 0)
        self.alphas = torch.cat([cumprod.sqrt(), torch.ones(1)])
        self.betas = torch.cat([(1.0 - cumprod).sqrt(), torch.zeros(1)])
        self.ets = []
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.step_index is None:
            self._init_step_index(timestep)
        index = self._step_index
        assert index is not None
        eps = self._epsilon(model_output, sample, index)
        self.ets.append(eps)
        history = self.ets
        if len(history) == 1:
            ets = history[-1]
        elif len(history) == 2:
            ets = (3 * history[-1] - history[-2]) / 2
        elif len(history) == 3:
            ets = (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
        else:
            ets = (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4]) / 24
        if len(history) > 4:
            del history[0]
        prev_sample = self._get_prev_sample(sample, index, index + 1, ets)
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _epsilon(self, output: torch.Tensor, sample: torch.Tensor, index: int) -> torch.Tensor:
        alpha, sigma = self.alphas[index], self.betas[index]
        kind = self.config.prediction_type
        if kind == "epsilon":
            return output
        if kind == "v_prediction":
            return alpha * output + sigma * sample
        if kind == "sample":
            return (sample - alpha * output) / sigma
        raise ValueError(f"prediction_type {kind!r} is not supported by IPNDM")

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The forward process at `timesteps`: sqrt(a)·x0 + sqrt(1-a)·noise."""
        cumprod = self.alphas_cumprod[timesteps.long().cpu()]
        cumprod = cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return (
            cumprod.sqrt().reshape(shape) * original_samples
            + (1 - cumprod).sqrt().reshape(shape) * noise
        )
