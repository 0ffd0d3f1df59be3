"""Losses against formulas written independently here, including Diffusion-DPO's own expression."""

import math

import pytest
import torch
import torch.nn.functional as F

from perfusion_cli.losses import (bradley_terry_loss, group_dpo_loss, pairwise_dpo_loss, plackett_luce_loss)


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
