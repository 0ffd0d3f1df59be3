"""What a reward model could reach on synthetic data (DESIGN §6-§7): the ceilings of every RM number.

- ``oracle``: each merchant's hidden taste scores its own candidates. The picks are the taste plus
  noise, so this is the best any model could do on these groups if it knew the taste exactly (a
  merchant with unlimited records).
- ``population taste``: every candidate scored by the average utility over all merchants' tastes, the
  best a model that ignores who the merchant is can do.
- ``profile taste``: each merchant's taste as its profile alone says it (its personal offsets zeroed),
  the best a model that knows a merchant only by its profile can do: the cold-start ceiling, and the
  floor a known merchant's few records have to lift. (Strictly, the profile's *expected* taste is the
  cold-start optimum; the records ceiling gives it for merchants with no training records.)
- ``records ceiling``: each merchant's taste as its profile and its training picks say it, everything
  else about the marketplace known (``taste_posterior``): the best a model can do with what it is
  given. At a few records a merchant the oracle is out of any model's reach; this is the achievable.
- ``perfect eyes``: a taste *learned* from the training picks (``taste_learner``) over the oracle's own
  attributes (``attributes``): what a model that sees what the oracle sees, and knows the taste's form,
  learns from these records. It has to learn the profile's part from the merchants, which the records
  ceiling is given; so it is the bar for a model that reads pixels.

All four read the candidates' pixels at the marketplace's own resolution, through the same stream and
metrics as the reward model, so an RM's GAUC reads as a share of the achievable; each candidate is
measured once for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.loader import EvalStream, GroupBatch, StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.data.oracle import ImageFeatures, Taste, measure, stack, utilities
from perfusion_cli.data.synthetic import load_truth, profile_taste, read_truth
from perfusion_cli.evaluation.attributes import ATTRIBUTES, attributes
from perfusion_cli.evaluation.taste_learner import LearnedTaste, fit_taste, profile_onehot
from perfusion_cli.evaluation.taste_posterior import TastePosterior
from perfusion_cli.ranking import ranking_metrics, score_groups


MEANING = {
    "oracle": "each merchant's hidden taste, known exactly: the best possible given the pick noise, at any "
              "number of records",
    "population taste": "one taste for every merchant: what no personalization can beat",
    "profile taste": "the taste the merchant's profile alone says: the cold-start ceiling",
    "records ceiling": "the taste the profile and the merchant's training picks say: the best a model can do "
                       "with what it is given",
    "perfect eyes": "a taste learned from the training picks over the oracle's own image attributes: what a "
                    "model that sees what the oracle sees learns from these records",
}


def _measure(measured: dict, batch: GroupBatch, g: int) -> ImageFeatures:
    """Group ``g``'s candidates as ``oracle.measure`` reads them ([K] arrays), each measured once."""
    features = []
    for k in torch.nonzero(batch.valid[g].cpu()).flatten().tolist():
        key = (batch.session_ids[g], k)
        if key not in measured:
            measured[key] = measure(batch.images[g, k].cpu().numpy())
        features.append(measured[key])
    return stack(features)


def _scorer(score_group: Callable[[str, ImageFeatures], np.ndarray], measured: dict):
    """A ``score_groups`` scorer from a function of (merchant id, the group's features) → [K] scores."""
    def score(batch: GroupBatch) -> torch.Tensor:
        scores = torch.zeros(batch.valid.shape)
        for g in range(len(batch)):
            values = score_group(batch.merchant_ids[g], _measure(measured, batch, g))
            scores[g, batch.valid[g].cpu()] = torch.as_tensor(values, dtype=torch.float32)
        return scores

    return score


def _profile_tastes(profiles: dict[str, dict], mix: str) -> dict[str, Taste]:
    """Every prepared merchant's taste as its profile alone says it (``synthetic.profile_taste``)."""
    return {merchant_id: profile_taste(profile["category"], profile["style"], profile["region"],
                                       float(profile["price_level"]), mix)
            for merchant_id, profile in profiles.items()}


def _train_groups(data_dir: Path, manifest, resolution: int, batch_size: int, measured: dict) -> list[tuple]:
    """Every training group as (merchant id, its candidates' ``ImageFeatures``, which were picked)."""
    if not manifest.splits.get("train", {}).get("groups"):
        return []
    groups = []
    spec = StreamSpec(Path(data_dir), "train", batch_size, manifest.max_candidates, resolution)
    for batch in EvalStream(spec):
        for g in range(len(batch)):
            selected = batch.selected[g][batch.valid[g]].cpu().numpy()
            groups.append((batch.merchant_ids[g], _measure(measured, batch, g), selected))
    return groups


def _posteriors(profiles: dict[str, dict], drawn: dict, groups: list[tuple]) -> dict[str, TastePosterior]:
    """Every prepared merchant's ``TastePosterior`` after its training sessions (none: the prior)."""
    mix, noise = drawn.get("taste", "colour"), max(float(drawn.get("noise", 0.3)), 1e-3)  # noise 0: near-exact picks
    posteriors = {merchant_id: TastePosterior(merchant_id, profile, mix, noise)
                  for merchant_id, profile in profiles.items()}
    for merchant_id, features, selected in groups:
        posteriors[merchant_id].observe(features, selected)
    return posteriors


def _perfect_eyes(groups: list[tuple], profile_ids: dict[str, torch.Tensor]) -> LearnedTaste | None:
    """The taste learned from the training groups over the oracle's attributes; None without training."""
    if not groups:
        return None
    size = max(len(selected) for _, _, selected in groups)
    image = torch.zeros(len(groups), size, len(ATTRIBUTES))
    picked = torch.zeros(len(groups), size, dtype=torch.bool)
    valid = torch.zeros(len(groups), size, dtype=torch.bool)
    for g, (_, features, selected) in enumerate(groups):
        image[g, :len(selected)] = torch.from_numpy(attributes(features))
        picked[g, :len(selected)] = torch.from_numpy(selected)
        valid[g, :len(selected)] = True
    merchants = [merchant_id for merchant_id, _, _ in groups]
    return fit_taste(image, torch.stack([profile_ids[m] for m in merchants]), merchants, picked, valid)


def ceilings(data_dir: Path, config: EvalRMConfig) -> list[dict]:
    """The oracle's, the population taste's, the profile taste's, the records ceiling's and perfect eyes' MAP
    and GAUC on ``config.split`` (with ``merchant_auc``, as ``ranking_metrics(per_merchant=True)`` gives); []
    for real data. Perfect eyes need a training split."""
    truth = load_truth(data_dir)
    if truth is None:
        return []
    drawn = read_truth(data_dir).get("config", {})
    resolution = int(drawn.get("resolution", 64))
    measured: dict = {}
    population = list(truth.values())
    merchants = read_merchants(data_dir)
    profiles = {merchant_id: row["features"] for merchant_id, row in merchants.items()}
    profile_tastes = _profile_tastes(profiles, drawn.get("taste", "colour"))
    manifest = load_manifest(data_dir)
    groups = _train_groups(data_dir, manifest, resolution, config.batch_size, measured)
    posteriors = _posteriors(profiles, drawn, groups)
    ids = torch.tensor([row["feature_ids"] for row in merchants.values()])
    psi = dict(zip(merchants, profile_onehot(ids, manifest.vocab.cardinalities)))
    eyes = _perfect_eyes(groups, psi)
    scorers = {
        "oracle": lambda merchant, features: utilities(truth[merchant], features),
        "population taste": lambda merchant, features: np.mean([utilities(taste, features) for taste in population],
                                                               axis=0),
        "profile taste": lambda merchant, features: utilities(profile_tastes[merchant], features),
        "records ceiling": lambda merchant, features: posteriors[merchant].expected_utility(features),
    }
    if eyes is not None:
        scorers["perfect eyes"] = lambda merchant, features: eyes.scores(
            torch.from_numpy(attributes(features))[None], psi[merchant][None], [merchant])[0].numpy()
    rows = []
    for name, score_group in scorers.items():
        scores = score_groups(_scorer(score_group, measured), data_dir, config.split, resolution,
                              batch_size=config.batch_size)
        rows.append({"model": name, "split": config.split, **ranking_metrics(scores, per_merchant=True)})
    return rows
