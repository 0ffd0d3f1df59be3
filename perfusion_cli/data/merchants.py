"""``merchant_table.jsonl`` of a prepared data folder: every valid merchant, its role, profile and feature ids.

``prepare`` writes it (``merchant_table``); ``generate`` and ``serve`` read it (``read_merchants``) to
encode a merchant with the vocabulary a model was trained on. Folders prepared before version 0.2 called it
``merchants.jsonl``, the raw logs' name; ``read_merchants`` still reads those (``LEGACY``), and
``is_prepared_table`` tells such a file from raw logs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.records import RowError
from perfusion_cli.data.vocab import MERCHANT_ID, FeatureVocab
from perfusion_cli.errors import ConfigError, DataError

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


def typed_profile(profile: dict, vocab: FeatureVocab, where: str = "features") -> dict:
    """A cold-start profile checked against the vocabulary: known feature names only, numeric features as
    numbers (a numeric string is read as one), categorical ones as given."""
    kinds = {feature.name: feature.kind for feature in vocab.features}
    typed = {}
    for key, value in profile.items():
        if key not in kinds or key == MERCHANT_ID:
            known = ", ".join(k for k in kinds if k != MERCHANT_ID)
            raise ConfigError(f"{where}: unknown feature {key!r} (the model knows: {known})")
        if kinds[key] == "numeric" and value is not None:
            try:
                if isinstance(value, bool):
                    raise ValueError
                typed[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} is numeric, got {value!r}") from None
            if not math.isfinite(typed[key]):
                raise ConfigError(f"{where}: {key} must be finite, got {value!r}")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{where}: {key} must be a string, number or boolean, got {type(value).__name__}")
        else:
            typed[key] = value
    return typed


def profile_features(vocab: FeatureVocab, profile: dict, where: str = "merchant") -> list[int]:
    """A merchant as a line of the raw logs' ``merchants.jsonl`` (``merchant_id`` plus profile features) → the
    feature ids a model trained under ``vocab`` reads; an id the model never saw is out of vocabulary (a cold
    start from the rest of the profile)."""
    if not isinstance(profile, dict) or MERCHANT_ID not in profile:
        raise ConfigError(f"{where}: a merchant is a dict with {MERCHANT_ID!r} and its profile features, as a line of "
                          f"merchants.jsonl; got {type(profile).__name__}")
    try:
        merchant_id = canonical_id(profile[MERCHANT_ID], MERCHANT_ID)
    except RowError as exc:
        raise ConfigError(f"{where}: {exc.detail}") from None
    rest = {key: value for key, value in profile.items() if key != MERCHANT_ID}
    return vocab.encode(merchant_id, typed_profile(rest, vocab, where))
