"""``merchant_table.jsonl`` of a prepared data folder: every valid merchant, its role, profile and feature ids.

``prepare`` writes it (``merchant_table``); ``generate`` and ``serve`` read it (``read_merchants``) to
encode a merchant with the vocabulary a model was trained on. Folders prepared before version 0.2 called it
``merchants.jsonl``, the raw logs' name; ``read_merchants`` still reads those (``LEGACY``), and
``is_prepared_table`` tells such a file from raw logs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.errors import DataError

MERCHANTS = "merchant_table.jsonl"
LEGACY = "merchants.jsonl"  # the table's name before 0.2: the same name as the raw logs' profiles


def merchant_table(profiles: dict[str, dict], records, roles: dict[str, str], vocab: FeatureVocab) -> list[dict]:
    counts = Counter(record.merchant_id for record in records)
    return [{"merchant_id": merchant_id, "role": roles.get(merchant_id, "no_sessions"),
             "groups": counts.get(merchant_id, 0), "features": profiles[merchant_id],
             "feature_ids": vocab.encode(merchant_id, profiles[merchant_id])}
            for merchant_id in sorted(profiles)]


def is_prepared_table(first_line: bytes) -> bool:
    """Whether a ``merchants.jsonl`` whose first line this is holds a prepared table (not raw profiles)."""
    try:
        row = json.loads(first_line.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(row, dict) and {"role", "feature_ids", "features"} <= set(row)


def read_merchants(data_dir: str | Path) -> dict[str, dict]:
    path = Path(data_dir) / MERCHANTS
    if not path.exists() and (Path(data_dir) / LEGACY).exists():
        path = Path(data_dir) / LEGACY
    try:
        with open(path, encoding="utf-8") as handle:
            return {row["merchant_id"]: row for row in map(json.loads, handle)}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is missing or damaged ({exc}) — re-run `perfusion prepare`") from None


COLD_START_ADVICE = "for a new merchant pass --cold-start mean, or --cold-start features --features key=value …"


class UnknownMerchant(DataError):
    """A merchant the prepared data does not hold, with no cold-start profile to stand in for it."""


def require_known(merchant: str, merchants: dict[str, dict], data_dir: str | Path, advice: str) -> None:
    """``UnknownMerchant`` naming a few ids the data does hold (those that trained first) and ``advice``,
    unless ``merchant`` is in the prepared table ``merchants``. Needs no model: commands call it first."""
    if merchant in merchants:
        return
    trained = sorted(merchants, key=lambda m: (merchants[m].get("role") != "train", not m.isdigit(),
                                              int(m) if m.isdigit() else 0, m))
    shown = ", ".join(trained[:5]) + (", …" if len(trained) > 5 else "")
    raise UnknownMerchant(f"unknown merchant {merchant!r}: it is not in the prepared data ({data_dir}), which holds "
                          f"{len(merchants)} merchant(s): {shown or 'none'} — {advice}")
