"""``evaluation.ceilings`` scores every ceiling from one measured pass over a split; the rows must be what
the reward model's own path (``ranking.score_groups``: the stream, batch by batch) gives the same scorer."""

import numpy as np
import pytest
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.marketplace.oracle import oracle_utility
from perfusion_cli.marketplace.synthetic import load_truth
from perfusion_cli.evaluation.ceilings import ceilings
from perfusion_cli.reward_scoring import ranking_metrics, score_groups


@pytest.mark.parametrize("split", ["val", "train"])
def test_the_oracle_row_is_the_streamed_oracle(market, split):
    data_dir, manifest = market
    truth = load_truth(data_dir)

    def oracle(batch):  # each candidate's utility from its pixels, group by group as the stream yields them
        scores = torch.zeros(batch.valid.shape)
        for g, k in torch.nonzero(batch.valid).tolist():
            scores[g, k] = oracle_utility(truth[batch.merchant_ids[g]], batch.images[g, k].numpy())
        return scores

    streamed = ranking_metrics(score_groups(oracle, data_dir, split, 64, batch_size=5), per_merchant=True)
    rows = {row["model"]: row for row in ceilings(data_dir, EvalRMConfig(split=split, batch_size=7))}
    assert list(rows) == ["oracle", "population taste", "profile taste", "records ceiling", "perfect eyes"]
    row = rows["oracle"]
    assert row["n_groups"] == streamed["n_groups"] == manifest.splits[split]["groups"]
    assert row["n_candidates"] == streamed["n_candidates"] and row["n_merchants"] == streamed["n_merchants"]
    assert row["map"] == pytest.approx(streamed["map"], abs=1e-6)
    assert row["gauc"] == pytest.approx(streamed["gauc"], abs=1e-6)
    assert row["merchant_auc"].keys() == streamed["merchant_auc"].keys()
    for merchant, (auc, candidates) in streamed["merchant_auc"].items():
        assert row["merchant_auc"][merchant][1] == candidates
        assert row["merchant_auc"][merchant][0] == pytest.approx(auc, abs=1e-6)
    assert all(row["n_groups"] == streamed["n_groups"] for row in rows.values())
    assert len({round(row["gauc"], 6) for row in rows.values()}) > 1, "each ceiling scores with its own taste"
    assert np.isfinite([row["map"] for row in rows.values()]).all()
