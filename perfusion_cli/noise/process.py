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


def noise_process(scheduler) -> NoiseProcess:
    """The process a base's training scheduler (its folder's ``scheduler/``) defines."""
    from perfusion_cli.noise.ddpm import DDPM
    from perfusion_cli.noise.rectified_flow import RectifiedFlow

    for process in (DDPM, RectifiedFlow):
        if isinstance(scheduler, process.schedulers):
            return process(scheduler)
    raise ConfigError(f"no noise process for the scheduler {type(scheduler).__name__}: PerFusion trains DDPM-family "
                      f"(SD 1.x/2.x, SDXL) and flow-matching (SD 3.x, FLUX.1) bases")
