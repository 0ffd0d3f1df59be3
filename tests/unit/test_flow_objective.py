"""The group objective on a rectified-flow noise process: Flow-DPO at one positive and one negative, a
brute-force Plackett-Luce sum at any group size, σ drawn as diffusers' SD3 / FLUX trainers draw it.

The predictor is the tiny U-Net with a perturbed merchant adapter, called through the objective's own path;
only the noise process is the flow one (what a transformer family plugs in). Every expected value below is
written out here from the formulas (x_t = (1 − σ)·x_0 + σ·ε, v = ε − x_0, SD3's shift σ' = s·σ / (1 + (s − 1)·σ)),
not taken from the code under test.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from perfusion_cli.config import GenTrainConfig, MerchantEncoderConfig
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.branch_kinds import create_branch
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.noise import RectifiedFlow, noise_process
from perfusion_cli.objective import GroupDPOObjective

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b", "c"])])
SHIFT, BETA, STEPS = 3.0, 2000.0, 1000


def _flow_objective(tiny_sd_dir, **overrides):
    """The tiny SD base trained as a velocity predictor would be: its scheduler swapped for SD 3.5's flow one."""
    config = GenTrainConfig(base_model=str(tiny_sd_dir), resolution=64, beta=BETA, branch="adapter",
                            merchant=MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8), **overrides)
    frozen = FrozenSD.load(config.base_model, torch.device("cpu"))
    frozen.sd.noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=STEPS, shift=SHIFT)
    branch = create_branch(config, frozen.sd.unet, VOCAB, config.base_model)
    torch.manual_seed(1)
    with torch.no_grad():  # a branch that has learned something: v_θ ≠ v_ref
        for parameter in branch.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    objective = GroupDPOObjective(frozen, config)
    seen = {}
    predict = objective.predict

    def recorded(policy, noisy, times, text, features):
        seen.update(noisy=noisy, times=times)
        seen["personalized"], seen["reference"] = predict(policy, noisy, times, text, features)
        return seen["personalized"], seen["reference"]

    objective.predict = recorded
    return objective, frozen, branch, seen


def _independent_draw(seed: int, groups: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """What the objective should draw after ``manual_seed(seed)``: one ε per group, then one logit-normal u per
    group mapped through the shifted table: index ⌊u·N⌋ of timesteps N, N−1, …, 1,
    σ = shift·s / (1 + (shift − 1)·s)."""
    torch.manual_seed(seed)
    noise = torch.randn((groups, *shape))
    u = torch.sigmoid(torch.normal(0.0, 1.0, size=(groups,)))
    s = (STEPS - (u * STEPS).long()).float() / STEPS
    return noise, SHIFT * s / (1 + (SHIFT - 1) * s)


def _run(objective, frozen, branch, groups: int, k: int, valid: torch.Tensor, positive: torch.Tensor, seed: int):
    torch.manual_seed(100 + seed)
    x0 = torch.randn(int(valid.sum()), 4, 8, 8)
    rows = torch.arange(groups).repeat_interleave(k)[valid.flatten()]
    text = frozen.text(["linen dress", "wool hoodie", "silk scarf"][:groups])
    features = torch.tensor([[1], [2], [3]])[:groups]
    torch.manual_seed(seed)
    loss, terms = objective.terms(branch, x0, text, features, rows, valid, positive)
    noise, sigma = _independent_draw(seed, groups, x0.shape[1:])
    return loss, x0, noise[rows], sigma[rows].view(-1, 1, 1, 1), rows


def test_the_flow_process_draws_sigma_as_the_sd3_trainer_and_noises_by_interpolation(tiny_sd_dir):
    objective, _, _, _ = _flow_objective(tiny_sd_dir)
    assert isinstance(objective.process, RectifiedFlow)
    torch.manual_seed(3)
    times = objective.process.times(4096, torch.device("cpu"))
    torch.manual_seed(3)
    u = torch.sigmoid(torch.normal(0.0, 1.0, size=(4096,)))
    s = (STEPS - (u * STEPS).long()).float() / STEPS
    assert torch.allclose(times / STEPS, SHIFT * s / (1 + (SHIFT - 1) * s), atol=1e-6)
    assert 0.6 < (times / STEPS).median() < 0.8  # shift 3 moves the logit-normal's median 0.5 to 0.75
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([250.0, 900.0])
    sigma = (t / STEPS).view(-1, 1, 1, 1)
    assert torch.allclose(objective.process.noisy(x0, noise, t), (1 - sigma) * x0 + sigma * noise)
    assert torch.equal(objective.process.target(x0, noise, t), noise - x0)


def test_the_flow_group_loss_at_one_positive_and_one_negative_is_flow_dpo(tiny_sd_dir):
    objective, frozen, branch, seen = _flow_objective(tiny_sd_dir)
    valid = torch.ones(2, 2, dtype=torch.bool)
    positive = torch.tensor([[True, False], [False, True]])
    loss, x0, noise, sigma, _ = _run(objective, frozen, branch, 2, 2, valid, positive, seed=5)
    x_t = (1 - sigma) * x0 + sigma * noise
    assert torch.allclose(seen["noisy"], x_t, atol=1e-5)  # one ε and one σ per group, shared by its pair
    v = noise - x0
    err = lambda prediction: (v - prediction.float()).pow(2).mean(dim=(1, 2, 3))  # noqa: E731
    model, reference = err(seen["personalized"]), err(seen["reference"])
    expected = []
    for group, (winner, loser) in enumerate([(0, 1), (3, 2)]):
        inside = (model[winner] - reference[winner]) - (model[loser] - reference[loser])
        expected.append(-F.logsigmoid(-0.5 * BETA * inside))
    assert torch.stack(expected).mean().item() != pytest.approx(math.log(2), abs=1e-3)  # not a trivial 0.693
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_the_flow_group_loss_is_a_plackett_luce_sum_at_any_group_size(tiny_sd_dir):
    objective, frozen, branch, seen = _flow_objective(tiny_sd_dir)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False], [True, True, True, True, False]])
    positive = torch.tensor([[True, False, True, False, False], [False, True, False, False, False],
                             [True, True, True, False, False]])
    loss, x0, noise, sigma, rows = _run(objective, frozen, branch, 3, 5, valid, positive, seed=8)
    assert torch.allclose(seen["noisy"], (1 - sigma) * x0 + sigma * noise, atol=1e-5)
    v = noise - x0
    model = (v - seen["personalized"].float()).pow(2).mean(dim=(1, 2, 3)).tolist()
    reference = (v - seen["reference"].float()).pow(2).mean(dim=(1, 2, 3)).tolist()
    reward = [-0.5 * BETA * (m - r) for m, r in zip(model, reference)]  # one per valid candidate, in row order
    per_group, index = [], 0
    for group in range(3):
        slots = [slot for slot in range(5) if valid[group, slot]]
        r = dict(zip(slots, reward[index:index + len(slots)]))
        index += len(slots)
        winners = [slot for slot in slots if positive[group, slot]]
        losers = [slot for slot in slots if not positive[group, slot]]
        terms = [-math.log(math.exp(r[p]) / (math.exp(r[p]) + sum(math.exp(r[n]) for n in losers))) for p in winners]
        per_group.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(per_group) / 3, rel=1e-5)


def test_each_base_scheduler_picks_its_noise_process(tiny_sd_dir):
    from diffusers import DDPMScheduler, PNDMScheduler

    from perfusion_cli.errors import ConfigError
    from perfusion_cli.noise import DDPM

    assert isinstance(noise_process(DDPMScheduler()), DDPM)
    assert isinstance(noise_process(FlowMatchEulerDiscreteScheduler(shift=3.0)), RectifiedFlow)
    with pytest.raises(ConfigError, match="no noise process for the scheduler PNDMScheduler"):
        noise_process(PNDMScheduler())


@pytest.mark.parametrize("mean, std", [(1.0, 0.5), (-1.5, 1.0)])
def test_logit_mean_is_sigmas_own_as_in_the_sd3_paper(mean, std):
    """σ = sigmoid(u), u ~ N(logit_mean, logit_std²) (no shift here): positive means more noise. diffusers' trainers'
    index ⌊u·N⌋ into the descending table gives 1 − σ, so the process flips the sign it hands them."""
    process = noise_process(FlowMatchEulerDiscreteScheduler(num_train_timesteps=STEPS, shift=1.0), "logit_normal",
                            mean, std)
    torch.manual_seed(0)
    sigma = process.times(20_000, torch.device("cpu")) / STEPS
    expected = torch.sigmoid(torch.distributions.Normal(mean, std).icdf(torch.tensor([0.1, 0.5, 0.9])))
    assert torch.allclose(torch.quantile(sigma, torch.tensor([0.1, 0.5, 0.9])), expected, atol=0.01)
    uniform = noise_process(FlowMatchEulerDiscreteScheduler(num_train_timesteps=STEPS, shift=1.0), "uniform")
    assert torch.allclose(torch.quantile(uniform.times(20_000, torch.device("cpu")) / STEPS,
                                         torch.tensor([0.1, 0.5, 0.9])), torch.tensor([0.1, 0.5, 0.9]), atol=0.01)


def test_a_unet_refuses_a_flow_sigma_draw_in_one_line():
    from diffusers import DDPMScheduler

    from perfusion_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="this base is a U-Net, whose times are drawn uniformly over its schedule"):
        noise_process(DDPMScheduler(), "logit_normal", 1.0, 1.0)
