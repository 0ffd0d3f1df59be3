"""The stochastic flow step (``noise/flow_sde.py``) keeps the probability-flow ODE's marginals. On Gaussian data
x_0 ~ N(μ, s²) the exact velocity of x_σ = (1 − σ)·x_0 + σ·ε is known in closed form (written here from the
conditional expectations, not from the step's formula), so draws from pure noise must end on the data's mean and
spread whatever η — while η > 0 moves each draw off its deterministic path."""

import pytest
import torch

from perfusion_cli.noise.flow_sde import flow_sde_step

MEAN, SPREAD = 1.5, 0.4


def _velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[ε − x_0 | x_σ = x] for x_0 ~ N(MEAN, SPREAD²), ε ~ N(0, 1)."""
    variance = (1 - sigma) ** 2 * SPREAD ** 2 + sigma ** 2
    centred = x.double() - (1 - sigma) * MEAN
    x0 = MEAN + (1 - sigma) * SPREAD ** 2 / variance * centred
    eps = sigma / variance * centred
    return (eps - x0).float()


def _draw(eta: float, steps: int = 200, count: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.randn(count, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    x = start
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = flow_sde_step(x, _velocity(x, sigma), sigma, sigma_next, eta, generator)
    return start, x


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_draws_end_on_the_data_distribution_whatever_eta(eta):
    _, x = _draw(eta)
    assert x.mean().item() == pytest.approx(MEAN, abs=0.01)
    assert x.std().item() == pytest.approx(SPREAD, rel=0.03)


def test_eta_zero_is_the_euler_step_and_eta_moves_each_draw_off_its_path():
    x, v = torch.randn(8), torch.randn(8)
    assert torch.equal(flow_sde_step(x, v, 0.6, 0.4, 0.0), x - 0.2 * v)
    # the last step, to σ' = 0, is Euler's whatever η: a draw ends on the model's clean estimate
    assert torch.equal(flow_sde_step(x, v, 0.1, 0.0, 0.7), x - 0.1 * v)
    _, deterministic = _draw(0.0, count=20_000)
    _, noisy = _draw(0.7, count=20_000)
    assert torch.corrcoef(torch.stack([deterministic, noisy]))[0, 1] < 0.9


def test_the_noise_without_its_drift_would_widen_the_draws():
    """The check above can fail: the same noise with the score-drift left out ends far wider than the data."""
    start = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    generator, x = torch.Generator().manual_seed(1), start
    sigmas = torch.linspace(1, 0, 201).tolist()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        h, level = sigma - sigma_next, (sigma if sigma < 1 else sigma_next)
        noise = torch.randn(x.shape, generator=generator) if sigma_next > 0 else torch.zeros_like(x)
        x = x - h * _velocity(x, sigma) + (0.49 * level / (1 - level) * h) ** 0.5 * noise
    assert x.std().item() > 1.2 * SPREAD
