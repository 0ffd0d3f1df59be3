"""Scoring a split with a reward model, and its MAP / GAUC (DESIGN §6).

Used by ``train-rm`` for validation and by ``eval rm``; it sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perfusion_cli.data.loader import EvalStream, GroupBatch, StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.metrics import mean_average_precision, merchant_aucs, weighted_gauc
from perfusion_cli.models.reward import RewardModel


@dataclass
class RankingScores:
    """One entry per valid candidate, plus what the stream had to skip."""

    scores: np.ndarray
    labels: np.ndarray
    groups: list[str]
    merchants: list[str]
    skipped_shards: list[str] = field(default_factory=list)
    skipped_samples: int = 0

    def extend(self, other: "RankingScores") -> "RankingScores":
        return RankingScores(np.concatenate([self.scores, other.scores]), np.concatenate([self.labels, other.labels]),
                             self.groups + other.groups, self.merchants + other.merchants,
                             self.skipped_shards + other.skipped_shards, self.skipped_samples + other.skipped_samples)


@torch.no_grad()
def score_split(model: RewardModel, data_dir: Path, split: str, *, batch_size: int = 32, device="cpu",
                num_workers: int = 0, max_groups: int | None = None, skip_bad_shards: bool = False,
                module: torch.nn.Module | None = None, progress=None) -> RankingScores:
    """Score every candidate of this process's share of ``split`` (all of it in a single process)."""

    def score(batch: GroupBatch) -> torch.Tensor:
        return model.score(batch.prompts, batch.images, batch.features, batch.valid, module=module)

    return score_groups(score, data_dir, split, model.module.image_size, batch_size=batch_size, device=device,
                        num_workers=num_workers, max_groups=max_groups, skip_bad_shards=skip_bad_shards,
                        progress=progress)


@torch.no_grad()
def score_groups(score: Callable[[GroupBatch], torch.Tensor], data_dir: Path, split: str, resolution: int, *,
                 batch_size: int = 32, device="cpu", num_workers: int = 0, max_groups: int | None = None,
                 skip_bad_shards: bool = False, progress=None) -> RankingScores:
    """Any scorer of groups ([B, K] scores for a batch) over a split: the reward model, or the oracle."""
    manifest = load_manifest(data_dir)
    spec = StreamSpec(Path(data_dir), split, batch_size, manifest.max_candidates, resolution,
                      num_workers=num_workers, skip_bad_shards=skip_bad_shards)
    stream = EvalStream(spec)
    parts = {"scores": [], "labels": [], "groups": [], "merchants": []}
    seen = 0
    for batch in stream:
        batch = batch.to(device)
        scores = score(batch).float().cpu()
        valid = batch.valid.cpu()
        per_group = valid.sum(1).tolist()
        parts["scores"].append(scores[valid].numpy())
        parts["labels"].append(batch.selected.cpu()[valid].numpy())
        parts["groups"] += [g for g, n in zip(batch.session_ids, per_group) for _ in range(n)]
        parts["merchants"] += [m for m, n in zip(batch.merchant_ids, per_group) for _ in range(n)]
        seen += len(batch)
        if progress is not None:
            progress.advance(len(batch))
        if max_groups and seen >= max_groups:
            break
    concat = lambda arrays, dtype: np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)  # noqa: E731
    return RankingScores(concat(parts["scores"], float), concat(parts["labels"], bool), parts["groups"],
                         parts["merchants"], stream.skipped_shards, stream.skipped_samples)


def ranking_metrics(scores: RankingScores, per_merchant: bool = False) -> dict:
    """MAP, GAUC and counts; ``per_merchant`` adds ``merchant_auc`` ({merchant: (AUC, candidates)}) for
    ``evaluation.intervals``."""
    aucs = merchant_aucs(scores.scores, scores.labels, scores.merchants)
    metrics = {"map": mean_average_precision(scores.scores, scores.labels, scores.groups),
               "gauc": weighted_gauc(aucs),
               "n_groups": len(set(scores.groups)), "n_merchants": len(set(scores.merchants)),
               "n_candidates": int(len(scores.scores)), "skipped_shards": scores.skipped_shards,
               "skipped_samples": scores.skipped_samples}
    return {**metrics, "merchant_auc": aucs} if per_merchant else metrics
