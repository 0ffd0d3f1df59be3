"""The flow-matching transformers' process (SD 3.x, FLUX.1): x_t = (1 − σ)·x_0 + σ·ε, target v = ε − x_0.

σ is drawn as diffusers' SD3 and FLUX trainers draw it (``examples/dreambooth/train_dreambooth_*_sd3.py``):
u from ``compute_density_for_timestep_sampling`` (logit-normal, mean 0, std 1, by default; or uniform), then the
scheduler's own table at index ⌊u·N⌋, so the base's ``shift`` (SD 3.5: 3.0) is applied as it was in pre-training.
A base whose scheduler shifts by resolution at inference (FLUX.1's ``use_dynamic_shifting``) keeps the unshifted
table in training, as those trainers do. Times are the table's timesteps (σ·1000), what the transformers take
(FLUX's pipeline divides them by 1000 itself; the predictor does the same).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling


class RectifiedFlow:
    schedulers = (FlowMatchEulerDiscreteScheduler,)

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, density: str = "logit_normal",
                 logit_mean: float = 0.0, logit_std: float = 1.0):
        self.scheduler = scheduler
        self.steps = scheduler.config.num_train_timesteps
        self.table = scheduler.timesteps.float().clone()  # the training table: σ·N, descending
        # the table descends, so the trainers' index u·N gives σ ≈ 1 − u: their logit_mean is (1 − σ)'s. Ours is
        # σ's, as in the SD3 paper (σ = sigmoid(u) before the shift; positive: more noise), hence the sign.
        self.density = {"weighting_scheme": {"logit_normal": "logit_normal", "uniform": "none"}[density],
                        "logit_mean": -logit_mean, "logit_std": logit_std, "mode_scale": 1.29}

    def times(self, count: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        u = compute_density_for_timestep_sampling(batch_size=count, generator=generator, **self.density)
        indices = (u * self.steps).long().clamp(max=self.steps - 1)
        return self.table[indices].to(device)

    def sigmas(self, times: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ of ``times``, shaped to broadcast over ``like`` [N, ...]."""
        return (times.float() / self.steps).to(like.dtype).view(-1, *[1] * (like.ndim - 1))

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(times, x0)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        return noise - x0
