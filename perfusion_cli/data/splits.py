"""Splits (DESIGN §3): by time per merchant, plus a cold-start split of whole held-out merchants.

- Merchants with fewer than ``min_records`` valid groups are held out of the shards and counted.
- A fraction of the remaining merchants (chosen by a hash of their id, so the choice is stable as
  logs grow) form the cold-start split: all their groups, none in training.
- Every other merchant's groups are ordered by time; the oldest go to train, then val, then test.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data import records as R
from perfusion_cli.data.records import GroupRecord, HeldOut

SPLITS = ("train", "val", "test", "cold_start")
ROLE_TRAIN = "train"
ROLE_COLD_START = "cold_start"
ROLE_HELD_OUT = "held_out"


@dataclass
class SplitPlan:
    assignment: dict[int, str]  # input row → split
    held_out: list[HeldOut]
    roles: dict[str, str]  # merchant id → train | cold_start | held_out


def _stable_order(merchant_id: str) -> str:
    return hashlib.sha256(merchant_id.encode("utf-8")).hexdigest()


def _time_split(count: int, config: PrepareConfig) -> tuple[int, int, int]:
    n_val = max(1, round(count * config.val_fraction)) if config.val_fraction > 0 and count >= 3 else 0
    n_test = max(1, round(count * config.test_fraction)) if config.test_fraction > 0 and count >= 3 else 0
    n_train = count - n_val - n_test
    return n_train, n_val, n_test


def plan_splits(records: list[GroupRecord], config: PrepareConfig, file: str) -> SplitPlan:
    by_merchant: dict[str, list[GroupRecord]] = defaultdict(list)
    for record in records:
        by_merchant[record.merchant_id].append(record)
    eligible = sorted((m for m, groups in by_merchant.items() if len(groups) >= config.min_records),
                      key=_stable_order)
    n_cold = round(len(eligible) * config.cold_start_fraction)
    if config.cold_start_fraction > 0 and len(eligible) >= 2:
        n_cold = min(max(1, n_cold), len(eligible) - 1)
    cold = set(eligible[:n_cold])

    assignment: dict[int, str] = {}
    held_out: list[HeldOut] = []
    roles: dict[str, str] = {}
    for merchant_id in sorted(by_merchant):
        groups = sorted(by_merchant[merchant_id], key=lambda r: (r.timestamp, r.row))
        if len(groups) < config.min_records:
            roles[merchant_id] = ROLE_HELD_OUT
            held_out.extend(HeldOut(file, g.row, R.FEW_RECORDS, g.session_id, merchant_id) for g in groups)
        elif merchant_id in cold:
            roles[merchant_id] = ROLE_COLD_START
            assignment.update({g.row: "cold_start" for g in groups})
        else:
            roles[merchant_id] = ROLE_TRAIN
            n_train, n_val, _ = _time_split(len(groups), config)
            for position, group in enumerate(groups):
                split = "train" if position < n_train else "val" if position < n_train + n_val else "test"
                assignment[group.row] = split
    held_out.sort(key=lambda h: h.row)
    return SplitPlan(assignment, held_out, roles)
