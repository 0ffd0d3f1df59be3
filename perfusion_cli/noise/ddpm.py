"""The U-Nets' process (SD 1.x/2.x, SDXL): a discrete β schedule, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, ε or v
prediction."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from perfusion_cli.errors import ConfigError


class DDPM:
    """Times are integer timesteps drawn uniformly from the schedule's ``num_train_timesteps``."""

    schedulers = (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler)

    def __init__(self, scheduler):
        self.scheduler = scheduler if isinstance(scheduler, DDPMScheduler) else DDPMScheduler.from_config(
            scheduler.config)
        self.prediction = self.scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type {self.prediction!r} is not supported")

    def times(self, count: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        drawn = torch.randint(0, self.scheduler.config.num_train_timesteps, (count,), generator=generator,
                              device="cpu" if generator is not None else device)
        return drawn.to(device)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, times)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """ε, or the velocity √ᾱ·ε − √(1 − ᾱ)·x_0 for v-prediction models (SD 2.x)."""
        return noise if self.prediction == "epsilon" else self.scheduler.get_velocity(x0, noise, times)
