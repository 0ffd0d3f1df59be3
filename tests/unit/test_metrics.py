"""MAP against torchmetrics and by hand; GAUC against AUC written from its definition.

torchmetrics 1.9's binary_auroc splits some ties differently (seen on rounded normal scores), so GAUC is
checked against the pairwise definition instead."""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalMAP

from perfusion_cli.metrics import gauc, mean_average_precision


def _data(seed, n=300, groups=60, merchants=7):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    labels = rng.uniform(size=n) < 0.3
    group_ids = rng.integers(groups, size=n)
    merchant_ids = rng.integers(merchants, size=n)
    return scores, labels, group_ids, merchant_ids


@pytest.mark.parametrize("seed", range(4))
def test_map_matches_torchmetrics_retrieval_map(seed):
    # torchmetrics 1.9 counts a candidate as retrieved only when its score is > 0, so compare on
    # positive scores; ours ranks any real-valued score (reward scores can be negative).
    scores, labels, groups, _ = _data(seed)
    scores = np.exp(scores)
    metric = RetrievalMAP(empty_target_action="skip")
    expected = metric(torch.tensor(scores), torch.tensor(labels), indexes=torch.tensor(groups)).item()
    assert mean_average_precision(scores, labels, groups) == pytest.approx(expected, rel=1e-6)


def test_map_ranks_negative_scores_too():
    assert mean_average_precision([-0.46, 1.23, 0.20], [1, 0, 1], [0, 0, 0]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_map_by_hand():
    # ranking: 0.9 (pos), 0.8 (neg), 0.1 (pos) → AP = (1/1 + 2/3)/2
    assert mean_average_precision([0.9, 0.1, 0.8], [1, 1, 0], [0, 0, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision([0.9, 0.1], [0, 0], [0, 0]) != mean_average_precision([0.9, 0.1], [0, 0], [0, 0])


def _pairwise_auc(scores, labels):
    """AUC by its definition: the share of (positive, negative) pairs ordered right, ties counting one half."""
    positives, negatives = scores[labels], scores[~labels]
    return np.mean([(p > n) + 0.5 * (p == n) for p in positives for n in negatives])


def _weighted(auc_of, scores, labels, merchants):
    total, weight = 0.0, 0
    for merchant in np.unique(merchants):
        index = merchants == merchant
        if labels[index].all() or not labels[index].any():
            continue
        total += auc_of(scores[index], labels[index]) * index.sum()
        weight += index.sum()
    return total / weight


@pytest.mark.parametrize("seed", range(4))
def test_gauc_is_the_weighted_average_of_pairwise_aucs(seed):
    scores, labels, _, merchants = _data(seed)
    scores = np.round(scores, 1)  # ties inside merchants, -0.0 beside 0.0 included
    assert gauc(scores, labels, merchants) == pytest.approx(_weighted(_pairwise_auc, scores, labels, merchants),
                                                            rel=1e-9)


def test_gauc_skips_one_class_merchants_and_is_nan_without_any():
    assert gauc([0.1, 0.9, 0.5], [0, 1, 1], ["a", "a", "b"]) == pytest.approx(1.0)
    assert np.isnan(gauc([0.1, 0.9], [1, 1], ["a", "a"]))


def test_metrics_accept_torch_inputs():
    scores = torch.tensor([0.2, 0.8, 0.4, 0.1])
    labels = torch.tensor([False, True, True, False])
    assert gauc(scores, labels, ["m"] * 4) == pytest.approx(1.0)
    assert mean_average_precision(scores, labels, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
