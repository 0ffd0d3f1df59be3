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

All five read the candidates' pixels at the marketplace's own resolution, through the same stream and
metrics as the reward model, so an RM's GAUC reads as a share of the achievable. Each split they need
(the training split, the evaluated one) is streamed once and each candidate measured once, for all five.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.loader import EvalStream, StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.marketplace.oracle import ImageFeatures, Taste, measure, stack, utilities
from perfusion_cli.marketplace.synthetic import load_truth, profile_taste, read_truth
from perfusion_cli.evaluation.attributes import ATTRIBUTES, attributes
from perfusion_cli.evaluation.taste_learner import LearnedTaste, fit_taste, profile_onehot
from perfusion_cli.evaluation.taste_posterior import TastePosterior
from perfusion_cli.reward_scoring import RankingScores, ranking_metrics


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


@dataclass
class MeasuredGroup:
    """One group of a split as the oracle reads it: its candidates' ``ImageFeatures`` ([K] arrays, valid
    candidates only) and which of them were picked."""

    session_id: str
    merchant_id: str
    features: ImageFeatures
    selected: np.ndarray  # [K] bool


def _measured_groups(data_dir: Path, manifest, split: str, resolution: int, batch_size: int) -> list[MeasuredGroup]:
    """Every group of ``split``, each candidate decoded and measured once (one pass over the shards)."""
    if not manifest.splits.get(split, {}).get("groups"):
        return []
    groups = []
    for batch in EvalStream(StreamSpec(Path(data_dir), split, batch_size, manifest.max_candidates, resolution)):
        for g in range(len(batch)):
            candidates = torch.nonzero(batch.valid[g]).flatten().tolist()
            features = stack([measure(batch.images[g, k].numpy()) for k in candidates])
            groups.append(MeasuredGroup(batch.session_ids[g], batch.merchant_ids[g], features,
                                        batch.selected[g][batch.valid[g]].numpy().astype(bool)))
    return groups


def _ranking(groups: list[MeasuredGroup], score_group: Callable[[str, ImageFeatures], np.ndarray]) -> RankingScores:
    """A scorer of (merchant id, a group's features) → [K] scores over every group, as ``score_groups``
    collects a reward model's."""
    sizes = [len(group.selected) for group in groups]
    scores = [np.asarray(score_group(group.merchant_id, group.features), dtype=np.float32) for group in groups]
    return RankingScores(np.concatenate(scores) if scores else np.zeros(0),
                         np.concatenate([group.selected for group in groups]) if groups else np.zeros(0, bool),
                         [group.session_id for group, n in zip(groups, sizes) for _ in range(n)],
                         [group.merchant_id for group, n in zip(groups, sizes) for _ in range(n)])


def _profile_tastes(profiles: dict[str, dict], mix: str) -> dict[str, Taste]:
    """Every prepared merchant's taste as its profile alone says it (``synthetic.profile_taste``)."""
    return {merchant_id: profile_taste(profile["category"], profile["style"], profile["region"],
                                       float(profile["price_level"]), mix)
            for merchant_id, profile in profiles.items()}


def _posteriors(profiles: dict[str, dict], drawn: dict, groups: list[MeasuredGroup]) -> dict[str, TastePosterior]:
    """Every prepared merchant's ``TastePosterior`` after its training sessions (none: the prior)."""
    mix, noise = drawn.get("taste", "colour"), max(float(drawn.get("noise", 0.3)), 1e-3)  # noise 0: near-exact picks
    posteriors = {merchant_id: TastePosterior(merchant_id, profile, mix, noise)
                  for merchant_id, profile in profiles.items()}
    for group in groups:
        posteriors[group.merchant_id].observe(group.features, group.selected)
    return posteriors


def _perfect_eyes(groups: list[MeasuredGroup], profile_ids: dict[str, torch.Tensor]) -> LearnedTaste | None:
    """The taste learned from the training groups over the oracle's attributes; None without training."""
    if not groups:
        return None
    size = max(len(group.selected) for group in groups)
    image = torch.zeros(len(groups), size, len(ATTRIBUTES))
    picked = torch.zeros(len(groups), size, dtype=torch.bool)
    valid = torch.zeros(len(groups), size, dtype=torch.bool)
    for g, group in enumerate(groups):
        candidates = len(group.selected)
        image[g, :candidates] = torch.from_numpy(attributes(group.features))
        picked[g, :candidates] = torch.from_numpy(group.selected)
        valid[g, :candidates] = True
    merchants = [group.merchant_id for group in groups]
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
    population = list(truth.values())
    merchants = read_merchants(data_dir)
    profiles = {merchant_id: row["features"] for merchant_id, row in merchants.items()}
    profile_tastes = _profile_tastes(profiles, drawn.get("taste", "colour"))
    manifest = load_manifest(data_dir)
    groups = _measured_groups(data_dir, manifest, "train", resolution, config.batch_size)
    evaluated = groups if config.split == "train" else _measured_groups(data_dir, manifest, config.split, resolution,
                                                                         config.batch_size)
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
    return [{"model": name, "split": config.split,
             **ranking_metrics(_ranking(evaluated, score_group), per_merchant=True)}
            for name, score_group in scorers.items()]
