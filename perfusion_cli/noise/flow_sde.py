"""A stochastic sampling step for rectified flow (x_σ = (1 − σ)·x_0 + σ·ε, v = ε − x_0): the reverse SDE with the
probability-flow ODE's marginals, as Flow-GRPO samples SD 3.5 (Liu et al. 2025, eq. 9) — for rectified flow what
DDIM's η is for ε-prediction. ``train-gen --online --sample-eta η`` draws a flow transformer's groups with it.

From σ down to σ' (h = σ − σ' > 0), with the model's velocity v and the noise level g² = η²·σ/(1 − σ):

    x_σ' = x_σ − h·v − (g²/2)·h·(x_σ + (1 − σ)·v)/σ + g·√h·z,    z ~ N(0, I)

x_σ + (1 − σ)·v is the ε that v implies, so −(x_σ + (1 − σ)·v)/σ is the score, and the g² drift term undoes on
average what the noise adds. η = 0 is the Euler step. At σ = 1, where σ/(1 − σ) has no bound, the level is taken at
σ' (Flow-GRPO's σ_max); the last step, to σ' = 0, is Euler's, so a draw ends on the model's clean estimate and not on
fresh noise."""

from __future__ import annotations

import torch


def flow_sde_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, eta: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One step from σ to ``sigma_next`` < σ; the noise from ``generator`` (else torch's global RNG)."""
    x, v = latents.float(), velocity.float()
    h = sigma - sigma_next
    step = x - h * v
    if eta and sigma_next > 0:
        level = sigma if sigma < 1 else sigma_next
        g2 = eta ** 2 * level / (1 - level)
        noise = torch.randn(x.shape, generator=generator, device=x.device if generator is None else generator.device)
        step = step - g2 / 2 * h * (x + (1 - sigma) * v) / sigma + (g2 * h) ** 0.5 * noise.to(x.device)
    return step.to(latents.dtype)
