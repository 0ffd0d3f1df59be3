"""Scoring a split with a reward model and computing MAP / GAUC (DESIGN §6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.data.shards import load_manifest
from perfusion_cli.data.vocab import check_same_vocabulary
from perfusion_cli.metrics import gauc, mean_average_precision
from perfusion_cli.models.reward import RewardModel, load_reward_model


@dataclass
class RankingScores:
    """One entry per valid candidate."""

    scores: np.ndarray
    labels: np.ndarray
    groups: list[str]
    merchants: list[str]

    def extend(self, other: "RankingScores") -> "RankingScores":
        return RankingScores(np.concatenate([self.scores, other.scores]), np.concatenate([self.labels, other.labels]),
                             self.groups + other.groups, self.merchants + other.merchants)


@torch.no_grad()
def score_split(model: RewardModel, data_dir: Path, split: str, *, batch_size: int = 32, device="cpu",
                num_workers: int = 0, max_groups: int = 0, skip_bad_shards: bool = False,
                module: torch.nn.Module | None = None) -> RankingScores:
    """Score every candidate of this process's share of ``split`` (all of it in a single process)."""
    manifest = load_manifest(data_dir)
    spec = StreamSpec(Path(data_dir), split, batch_size, manifest["max_candidates"], model.module.image_size,
                      num_workers=num_workers, skip_bad_shards=skip_bad_shards)
    result = RankingScores(np.zeros(0), np.zeros(0, dtype=bool), [], [])
    seen = 0
    for batch in eval_batches(spec):
        batch = batch.to(device)
        scores = model.score(batch.prompts, batch.images, batch.features, batch.valid, module=module).float().cpu()
        valid = batch.valid.cpu()
        per_group = valid.sum(1).tolist()
        result = result.extend(RankingScores(
            scores[valid].numpy(), batch.selected.cpu()[valid].numpy(),
            [g for g, n in zip(batch.session_ids, per_group) for _ in range(n)],
            [m for m, n in zip(batch.merchant_ids, per_group) for _ in range(n)]))
        seen += len(batch)
        if max_groups and seen >= max_groups:
            break
    return result


def ranking_metrics(scores: RankingScores) -> dict:
    return {"map": mean_average_precision(scores.scores, scores.labels, scores.groups),
            "gauc": gauc(scores.scores, scores.labels, scores.merchants),
            "n_groups": len(set(scores.groups)), "n_merchants": len(set(scores.merchants)),
            "n_candidates": int(len(scores.scores))}


def evaluate_reward_model(source: str, data_dir: Path, split: str, batch_size: int = 32, device: str = "cpu",
                          skip_bad_shards: bool = False) -> dict:
    """``perfusion eval rm``: MAP and GAUC of a reward model (or ``zero-shot:BASE``) on one split."""
    model = load_reward_model(source, device)
    check_same_vocabulary(model.module.settings.features, load_manifest(data_dir)["features"], "reward model",
                          data_dir)
    scores = score_split(model, data_dir, split, batch_size=batch_size, device=device,
                         skip_bad_shards=skip_bad_shards)
    return {"model": str(source), "split": split, **ranking_metrics(scores)}
