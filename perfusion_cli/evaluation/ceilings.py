"""What a reward model could reach on synthetic data (DESIGN §6-§7): the ceilings of every RM number.

- ``oracle``: each merchant's hidden taste scores its own candidates. The picks are the taste plus
  noise, so this is the best any model can do on these groups.
- ``population taste``: every candidate scored by the average utility over all merchants' tastes, the
  best a model that ignores who the merchant is can do.
- ``profile taste``: each merchant's taste as its profile alone says it (its personal offsets zeroed),
  the best a model that knows a merchant only by its profile can do: the cold-start ceiling, and the
  floor a known merchant's few records have to lift.

All three read the candidates' pixels at the marketplace's own resolution, through the same stream and
metrics as the reward model, so an RM's GAUC reads as a share of the achievable; each candidate is
measured once for the three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.data.oracle import Taste, measure, utility_of
from perfusion_cli.data.synthetic import load_truth, profile_taste, read_truth
from perfusion_cli.ranking import ranking_metrics, score_groups


def _taste_scores(measured: dict, tastes: dict[str, Taste] | None, population: list[Taste] = ()):
    """Each candidate scored by its merchant's taste in ``tastes``, or by the mean over ``population``;
    ``measured`` holds what ``oracle.measure`` read off each candidate, shared by the scorers."""
    def score(batch: GroupBatch) -> torch.Tensor:
        scores = torch.zeros(batch.valid.shape)
        for g, k in zip(*torch.nonzero(batch.valid.cpu(), as_tuple=True)):
            key = (batch.session_ids[g], int(k))
            if key not in measured:
                measured[key] = measure(batch.images[g, k].cpu().numpy())
            features = measured[key]
            if tastes is None:
                scores[g, k] = float(np.mean([utility_of(taste, features) for taste in population]))
            else:
                scores[g, k] = utility_of(tastes[batch.merchant_ids[g]], features)
        return scores

    return score


def _profile_tastes(data_dir: Path, mix: str) -> dict[str, Taste]:
    """Every prepared merchant's taste as its profile alone says it (``synthetic.profile_taste``)."""
    tastes = {}
    for merchant_id, row in read_merchants(data_dir).items():
        profile = row["features"]
        tastes[merchant_id] = profile_taste(profile["category"], profile["style"], profile["region"],
                                            float(profile["price_level"]), mix)
    return tastes


def ceilings(data_dir: Path, config: EvalRMConfig) -> list[dict]:
    """The oracle's, the population taste's and the profile taste's MAP and GAUC on ``config.split``;
    [] for real data."""
    truth = load_truth(data_dir)
    if truth is None:
        return []
    drawn = read_truth(data_dir).get("config", {})
    resolution = int(drawn.get("resolution", 64))
    measured: dict = {}
    scorers = (("oracle (ceiling)", _taste_scores(measured, truth)),
               ("population taste (no personalization)", _taste_scores(measured, None, list(truth.values()))),
               ("profile taste (the profile alone, no personal part)",
                _taste_scores(measured, _profile_tastes(data_dir, drawn.get("taste", "colour")))))
    rows = []
    for name, scorer in scorers:
        scores = score_groups(scorer, data_dir, config.split, resolution, batch_size=config.batch_size)
        rows.append({"model": name, "split": config.split, **ranking_metrics(scores)})
    return rows
