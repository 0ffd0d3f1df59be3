"""Losses against formulas written independently here, including Diffusion-DPO's own expression."""

import math

import pytest
import torch
import torch.nn.functional as F

from perfusion_cli.losses import (bradley_terry_loss, group_dpo_loss, pairwise_dpo_loss, plackett_luce_loss,
                                  scale_gradient, winner_preserving_scale)


def _random_groups(seed, batch=6, group=5):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, group, generator=generator) * 2
    valid = torch.rand(batch, group, generator=generator) > 0.2
    positive = (torch.rand(batch, group, generator=generator) > 0.6) & valid
    return scores, positive, valid


def _brute_pl(scores, positive, valid):
    losses = []
    for s, p, v in zip(scores.tolist(), positive.tolist(), valid.tolist()):
        pos = [x for x, pi, vi in zip(s, p, v) if pi and vi]
        neg = [x for x, pi, vi in zip(s, p, v) if vi and not pi]
        if not pos or not neg:
            continue
        terms = [-math.log(math.exp(x) / (math.exp(x) + sum(math.exp(n) for n in neg))) for x in pos]
        losses.append(sum(terms) / len(pos))
    return sum(losses) / len(losses)


def _brute_bt(scores, positive, valid):
    losses = []
    for s, p, v in zip(scores.tolist(), positive.tolist(), valid.tolist()):
        pairs = [(a, b) for a, pa, va in zip(s, p, v) if pa and va for b, pb, vb in zip(s, p, v) if vb and not pb]
        if pairs:
            losses.append(sum(math.log(1 + math.exp(-(a - b))) for a, b in pairs) / len(pairs))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", range(5))
def test_plackett_luce_matches_brute_force_on_ragged_groups(seed):
    scores, positive, valid = _random_groups(seed)
    assert plackett_luce_loss(scores, positive, valid).item() == pytest.approx(_brute_pl(scores, positive, valid),
                                                                               rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_bradley_terry_matches_brute_force_on_ragged_groups(seed):
    scores, positive, valid = _random_groups(seed)
    assert bradley_terry_loss(scores, positive, valid).item() == pytest.approx(_brute_bt(scores, positive, valid),
                                                                               rel=1e-5)


def test_with_one_positive_and_one_negative_pl_equals_bt_equals_logsigmoid():
    scores = torch.randn(8, 2)
    positive = torch.tensor([[True, False]] * 4 + [[False, True]] * 4)
    expected = torch.stack([-F.logsigmoid(s[p] - s[~p]) for s, p in zip(scores, positive)]).mean()
    assert plackett_luce_loss(scores, positive).item() == pytest.approx(expected.item(), rel=1e-6)
    assert bradley_terry_loss(scores, positive).item() == pytest.approx(expected.item(), rel=1e-6)


def test_group_dpo_at_one_pair_is_the_diffusion_dpo_loss():
    # Diffusion-DPO (Wallace et al.), train.py: winners first, losers second in the batch.
    generator = torch.Generator().manual_seed(0)
    model_w, model_l, ref_w, ref_l = (torch.rand(16, generator=generator) * 0.2 for _ in range(4))
    beta = 5000.0
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    expected = -F.logsigmoid(inside).mean()
    # ours: candidates [loser, winner] in a random order per group
    swap = torch.rand(16, generator=generator) > 0.5
    model_err = torch.where(swap[:, None], torch.stack([model_w, model_l], 1), torch.stack([model_l, model_w], 1))
    ref_err = torch.where(swap[:, None], torch.stack([ref_w, ref_l], 1), torch.stack([ref_l, ref_w], 1))
    positive = torch.stack([swap, ~swap], 1)
    assert group_dpo_loss(model_err, ref_err, positive, beta).item() == pytest.approx(expected.item(), rel=1e-5)
    assert pairwise_dpo_loss(model_err, ref_err, positive, beta).item() == pytest.approx(expected.item(), rel=1e-5)


def test_group_dpo_is_pl_over_implicit_rewards():
    scores, positive, valid = _random_groups(7)
    model_err = torch.rand(scores.shape)
    ref_err = torch.rand(scores.shape)
    rewards = -0.5 * 300.0 * (model_err - ref_err)
    assert group_dpo_loss(model_err, ref_err, positive, 300.0, valid).item() == pytest.approx(
        _brute_pl(rewards, positive, valid), rel=1e-5)


def test_groups_without_positive_or_negative_contribute_nothing():
    scores = torch.tensor([[1.0, 0.0, 0.5], [3.0, 2.0, 1.0], [0.2, 0.1, 0.0]], requires_grad=True)
    positive = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    loss = plackett_luce_loss(scores, positive)
    assert loss.item() == pytest.approx(_brute_pl(scores.detach()[:1], positive[:1], torch.ones(1, 3, dtype=torch.bool)))
    loss.backward()
    assert scores.grad[1:].abs().sum() == 0
    empty = plackett_luce_loss(scores, torch.zeros(3, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_raising_a_positive_score_lowers_the_loss():
    scores = torch.zeros(1, 4, requires_grad=True)
    positive = torch.tensor([[True, False, True, False]])
    plackett_luce_loss(scores, positive).backward()
    assert (scores.grad[0, [0, 2]] < 0).all() and (scores.grad[0, [1, 3]] > 0).all()


def test_the_winner_preserving_scale_keeps_the_positives_error_from_rising_to_first_order():
    """Pairs (one positive, one negative) in output space, written out as in Diffusion-SDPO's bound: a step
    −∇A + λ∇B on the outputs changes A = ‖e_w‖² by 2·(−‖e_w‖² + λ⟨e_l, e_w⟩)·lr, so λ ≤ (1−μ)‖e_w‖²/⟨e_l, e_w⟩."""
    generator = torch.Generator().manual_seed(3)
    e_w = torch.randn(8, 16, generator=generator)
    e_l = e_w * 3 + torch.randn(8, 16, generator=generator) * 0.5  # aligned: the negative's push hurts the positive
    e_l[0] = -e_w[0]                                                # opposed: nothing to hold back
    residuals = torch.stack([e_w, e_l], dim=1)                     # [B, K=2, D]
    positive = torch.tensor([[True, False]] * 8)
    valid = torch.ones(8, 2, dtype=torch.bool)
    for mu in (0.0, 0.3):
        scale = winner_preserving_scale(residuals, positive, valid, mu)
        expected = [1.0 if float(w @ l) <= 0 else min(1.0, (1 - mu) * float(w @ w) / float(w @ l))
                    for w, l in zip(e_w, e_l)]
        assert scale.tolist() == pytest.approx(expected, rel=1e-5)
        assert scale[0] == 1.0 and (scale[1:] < 1).all()
        change = -(e_w * e_w).sum(1) + scale * (e_l * e_w).sum(1)   # the positive's first-order change
        assert (change <= -mu * (e_w * e_w).sum(1) + 1e-4).all()


def test_the_winner_preserving_scale_averages_each_side_of_a_ragged_group():
    residuals = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [9.0, 9.0]]])  # slot 3 is padding
    positive = torch.tensor([[True, True, False, False]])
    valid = torch.tensor([[True, True, True, False]])
    # e_P = mean of (1,0), (3,0) = (2,0); e_N = (1,2); λ = ‖e_P‖² / ⟨e_N, e_P⟩ = 4 / 2 → capped at 1
    assert winner_preserving_scale(residuals, positive, valid).tolist() == [1.0]
    residuals[0, 2] = torch.tensor([8.0, 0.0])  # ⟨e_N, e_P⟩ = 16 → λ = 4 / 16
    assert winner_preserving_scale(residuals, positive, valid).tolist() == [0.25]


def test_scale_gradient_keeps_values_and_scales_only_the_chosen_gradients():
    values = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    scaled = scale_gradient(values, torch.tensor([0.25]), torch.tensor([[False, True, True]]))
    assert torch.equal(scaled, values.detach())
    scaled.sum().backward()
    assert values.grad.tolist() == [[1.0, 0.25, 0.25]]
