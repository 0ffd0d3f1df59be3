"""How sure an evaluation number is: merchant-bootstrap intervals for GAUC, for one GAUC's share of
another, and for eval gen's gains and win rates.

GAUC averages per-merchant AUCs, and eval gen's numbers average per-pair values whose pairs belong to
merchants, so the merchant is what gets resampled: each of ``DRAWS`` resamples draws the merchants with
replacement (multinomial counts, the same for every row) and recomputes every row's weighted mean. The
2.5th and 97.5th percentiles are the 95 % interval. On a synthetic test split of 126 merchants with
one session each, a GAUC near 0.73 spans about ±0.05.

Every model and ceiling on a split is scored on the same candidates, so the resamples are paired: a
share (PerFusionRM / oracle) is computed within each resample and gets its own interval, narrower than
the two GAUCs' intervals would suggest, since both move together with the merchants drawn.
"""

from __future__ import annotations

import numpy as np

DRAWS = 1000
CHUNK = 100  # resamples built at once: CHUNK × merchants counts in memory
SEED = 0


def resampled_means(rows: list[dict], draws: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """[len(rows), draws] weighted means, each row a {merchant: (value, weight)} dict (GAUC: a
    ``metrics.merchant_aucs`` dict), all rows resampled alike."""
    merchants = sorted(set().union(*rows))
    value = np.array([[row.get(m, (0.0, 0))[0] for row in rows] for m in merchants], dtype=np.float64)  # [M, R]
    weight = np.array([[row.get(m, (0.0, 0))[1] for row in rows] for m in merchants], dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, draws, CHUNK):
        counts = rng.multinomial(len(merchants), np.full(len(merchants), 1.0 / len(merchants)),
                                 size=min(CHUNK, draws - start)).astype(np.float64)  # [c, M]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((counts @ (value * weight)) / (counts @ weight))  # [c, R]
    return np.concatenate(out).T


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` interval of resampled values (NaN draws, with no merchant left, ignored)."""
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]


def attach_intervals(models: list[dict], bounds: list[dict], shares_of: tuple[str, ...]) -> None:
    """Give every row (``models`` then ``bounds``, each with ``merchant_auc``) its ``gauc_interval`` and,
    where ``bounds`` has them, its ``shares`` of the ceilings named in ``shares_of`` with paired intervals;
    the per-merchant AUCs are dropped after."""
    rows = models + bounds
    per_merchant = [row.pop("merchant_auc") for row in rows]
    if not any(per_merchant):  # no merchant with both a pick and a non-pick: nothing to resample
        return
    draws = resampled_means(per_merchant)
    named = {row["model"]: len(models) + j for j, row in enumerate(bounds)}
    for i, row in enumerate(rows):
        row["gauc_interval"] = interval(draws[i])
        row["shares"] = {name: {"share": row["gauc"] / rows[named[name]]["gauc"],
                                "interval": interval(draws[i] / draws[named[name]])}
                         for name in shares_of if name in named}


def merchant_means(values: np.ndarray, merchants: list[str]) -> dict:
    """Per-item ``values`` (NaN: not counted) → {merchant: (mean of its items, how many)} for ``resampled_means``."""
    grouped: dict[str, list[float]] = {}
    for value, merchant in zip(values.tolist(), merchants):
        if not np.isnan(value):
            grouped.setdefault(merchant, []).append(value)
    return {merchant: (float(np.mean(items)), len(items)) for merchant, items in grouped.items()}
