"""Ranking metrics (DESIGN §6). Inputs are flat arrays (numpy or torch) over candidates; floats out.

- MAP: per group, the average precision of the candidates ranked by score against the selections;
  the mean over groups that have a positive.
- GAUC: per merchant, the AUC over all its candidates (ties count one half); the average weighted by
  each merchant's number of candidates; merchants whose candidates are all one class are skipped.
  NaN when no merchant has both classes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def _array(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def _groups(keys: Sequence) -> dict:
    index = defaultdict(list)
    for position, key in enumerate(_array(keys).tolist()):
        index[key].append(position)
    return index


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    relevant = labels[order].astype(bool)
    hits = np.cumsum(relevant)
    precision = hits / np.arange(1, len(relevant) + 1)
    return float(precision[relevant].sum() / relevant.sum())


def mean_average_precision(scores, labels, group_ids) -> float:
    scores, labels = _array(scores).astype(np.float64), _array(labels).astype(bool)
    values = [average_precision(scores[i], labels[i]) for i in map(np.array, _groups(group_ids).values())
              if labels[i].any()]
    return float(np.mean(values)) if values else float("nan")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def merchant_aucs(scores, labels, merchant_ids) -> dict:
    """{merchant: (AUC over its candidates, its number of candidates)} for every merchant with both classes."""
    scores, labels = _array(scores).astype(np.float64), _array(labels).astype(bool)
    return {merchant: (auc(scores[index], labels[index]), len(index))
            for merchant, index in ((m, np.array(i)) for m, i in _groups(merchant_ids).items())
            if labels[index].any() and not labels[index].all()}


def weighted_gauc(per_merchant: dict) -> float:
    """GAUC from ``merchant_aucs``: the AUCs averaged, weighted by each merchant's candidates."""
    weight = sum(n for _, n in per_merchant.values())
    return sum(value * n for value, n in per_merchant.values()) / weight if weight else float("nan")


def gauc(scores, labels, merchant_ids) -> float:
    return weighted_gauc(merchant_aucs(scores, labels, merchant_ids))
