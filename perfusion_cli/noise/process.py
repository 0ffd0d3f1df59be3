"""The noise-process interface, and the one place that picks a process for a training scheduler."""

from __future__ import annotations

from typing import Protocol

import torch

from perfusion_cli.errors import ConfigError


class NoiseProcess(Protocol):
    def times(self, count: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """[count] training times, as the family's predictor takes them."""

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """x_t of clean latents ``x0`` [N, ...] with noise ``noise`` at ``times`` [N]."""

    def target(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """What the predictor is trained to output at x_t."""


def noise_process(scheduler, time_density: str = "logit_normal", logit_mean: float = 0.0,
                  logit_std: float = 1.0) -> NoiseProcess:
    """The process a base's training scheduler (its folder's ``scheduler/``) defines; the rest: how a flow-matching
    base's σ is drawn (``GenTrainConfig.time_density``)."""
    from perfusion_cli.noise.ddpm import DDPM
    from perfusion_cli.noise.rectified_flow import RectifiedFlow

    if isinstance(scheduler, RectifiedFlow.schedulers):
        return RectifiedFlow(scheduler, time_density, logit_mean, logit_std)
    if isinstance(scheduler, DDPM.schedulers):
        if (time_density, logit_mean, logit_std) != ("logit_normal", 0.0, 1.0):
            raise ConfigError("time_density, logit_mean and logit_std shape a flow-matching base's σ draw; this base "
                              "is a U-Net, whose times are drawn uniformly over its schedule: leave them unset")
        return DDPM(scheduler)
    raise ConfigError(f"no noise process for the scheduler {type(scheduler).__name__}: PerFusion trains DDPM-family "
                      f"(SD 1.x/2.x, SDXL) and flow-matching (SD 3.x, FLUX.1) bases")
