"""eval rm's merchant-bootstrap intervals: one resample against GAUC on the resampled data, coverage, pairing."""

import numpy as np
import pytest

from perfusion_cli.evaluation.intervals import SEED, attach_intervals, interval, resampled_means
from perfusion_cli.metrics import gauc, merchant_aucs


def candidates(rng: np.random.Generator, merchants: int, skill: float):
    """Candidate-level scores, picks and merchant ids: 3–7 candidates a merchant, 1–2 picks, scores that
    rank the picks higher by ``skill``."""
    scores, labels, ids = [], [], []
    for m in range(merchants):
        k = int(rng.integers(3, 8))
        picked = np.zeros(k, dtype=bool)
        picked[rng.choice(k, size=int(rng.integers(1, 3)), replace=False)] = True
        scores.append(rng.normal(size=k) + skill * picked)
        labels.append(picked)
        ids += [f"m{m}"] * k
    return np.concatenate(scores), np.concatenate(labels), ids


def test_one_resample_is_the_gauc_of_the_merchants_it_drew():
    rng = np.random.default_rng(1)
    scores, labels, ids = candidates(rng, 40, 1.0)
    per_merchant = merchant_aucs(scores, labels, ids)
    merchants = sorted(per_merchant)
    # the resample's multinomial counts, drawn as the module draws its first one
    counts = np.random.default_rng(SEED).multinomial(len(merchants), np.full(len(merchants), 1 / len(merchants)))
    ids_array = np.array(ids)
    drawn_scores, drawn_labels, drawn_ids = [], [], []
    for merchant, count in zip(merchants, counts):
        mine = ids_array == merchant
        for copy in range(count):  # each copy a merchant of its own, as resampling with replacement makes it
            drawn_scores.append(scores[mine])
            drawn_labels.append(labels[mine])
            drawn_ids += [f"{merchant}#{copy}"] * int(mine.sum())
    expected = gauc(np.concatenate(drawn_scores), np.concatenate(drawn_labels), drawn_ids)
    assert resampled_means([per_merchant], draws=1)[0, 0] == pytest.approx(expected, abs=1e-12)


def test_the_interval_covers_the_true_gauc_about_95_times_in_100():
    # merchants' AUCs drawn from a known distribution, equal weights: the true GAUC is its mean
    values, odds = np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.array([0.05, 0.1, 0.2, 0.3, 0.35])
    truth = float(values @ odds)
    rng = np.random.default_rng(7)
    covered = 0
    trials = 200
    for trial in range(trials):
        per_merchant = {f"m{i}": (float(v), 5) for i, v in enumerate(rng.choice(values, size=126, p=odds))}
        low, high = interval(resampled_means([per_merchant], draws=400, seed=trial)[0])
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.99


def test_a_share_of_a_row_that_moves_with_it_is_surer_than_either_row():
    rng = np.random.default_rng(3)
    scores, labels, ids = candidates(rng, 126, 1.0)
    model = merchant_aucs(scores, labels, ids)
    near = scores + 0.2 * rng.normal(size=len(scores))  # a near copy of the model
    better = scores + 1.5 * labels  # the model plus what it misses: hard merchants stay the hardest
    close, oracle = merchant_aucs(near, labels, ids), merchant_aucs(better, labels, ids)
    rows = [{"model": "rm", "gauc": gauc(scores, labels, ids), "merchant_auc": model},
            {"model": "near copy", "gauc": gauc(near, labels, ids), "merchant_auc": close}]
    bounds = [{"model": "oracle", "gauc": gauc(better, labels, ids), "merchant_auc": oracle}]
    attach_intervals(rows, bounds, ("oracle", "records ceiling"))
    assert all("merchant_auc" not in row for row in rows + bounds)
    assert bounds[0]["shares"] == {"oracle": {"share": 1.0, "interval": [1.0, 1.0]}}  # no ceiling named twice
    for row in rows + bounds:
        low, high = row["gauc_interval"]
        assert low < row["gauc"] < high
    # paired: the share's interval is narrower, relative to its size, than the GAUC's own
    share = rows[0]["shares"]["oracle"]
    width = lambda span, centre: (span[1] - span[0]) / centre  # noqa: E731
    assert width(share["interval"], share["share"]) < width(rows[0]["gauc_interval"], rows[0]["gauc"])
    # and the model against its near copy, resampled alike, moves far less than either
    draws = resampled_means([model, close])
    spread = interval(draws[0] - draws[1])
    assert spread[1] - spread[0] < 0.5 * (rows[0]["gauc_interval"][1] - rows[0]["gauc_interval"][0])


def test_rows_with_no_merchant_of_both_classes_get_no_interval():
    rows = [{"model": "rm", "gauc": float("nan"), "merchant_auc": {}}]
    attach_intervals(rows, [], ("oracle",))
    assert set(rows[0]) == {"model", "gauc"}
