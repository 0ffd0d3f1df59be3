"""What a reward model could reach on synthetic data (DESIGN §6-§7): the ceilings of every RM number.

- ``oracle``: each merchant's hidden taste scores its own candidates. The picks are the taste plus
  noise, so this is the best any model can do on these groups.
- ``population taste``: every candidate scored by the average utility over all merchants' tastes, the
  best a model that ignores who the merchant is can do.

Both read the candidates' pixels at the marketplace's own resolution, through the same stream and
metrics as the reward model, so an RM's GAUC reads as a share of the achievable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.data.oracle import measure, utility_of
from perfusion_cli.data.synthetic import load_truth, read_truth
from perfusion_cli.ranking import ranking_metrics, score_groups


def _oracle_scores(truth: dict, population: bool):
    tastes = list(truth.values())

    def score(batch: GroupBatch) -> torch.Tensor:
        scores = torch.zeros(batch.valid.shape)
        for g, k in zip(*torch.nonzero(batch.valid.cpu(), as_tuple=True)):
            features = measure(batch.images[g, k].cpu().numpy())
            if population:
                scores[g, k] = float(np.mean([utility_of(taste, features) for taste in tastes]))
            else:
                scores[g, k] = utility_of(truth[batch.merchant_ids[g]], features)
        return scores

    return score


def ceilings(data_dir: Path, config: EvalRMConfig) -> list[dict]:
    """The oracle's and the population taste's MAP and GAUC on ``config.split``; [] for real data."""
    truth = load_truth(data_dir)
    if truth is None:
        return []
    resolution = int(read_truth(data_dir).get("config", {}).get("resolution", 64))
    rows = []
    for name, population in (("oracle (ceiling)", False), ("population taste (no personalization)", True)):
        scores = score_groups(_oracle_scores(truth, population), data_dir, config.split, resolution,
                              batch_size=config.batch_size)
        rows.append({"model": name, "split": config.split, **ranking_metrics(scores)})
    return rows
