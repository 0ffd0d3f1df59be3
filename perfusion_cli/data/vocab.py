"""The merchant feature vocabulary: every profile feature becomes one sparse id (DESIGN §3, §4).

Categorical values get ids 1..n in sorted order; numeric values are bucketized at quantile boundaries
into ids 1..b. Id 0 is the out-of-vocabulary id: a missing value, a value never seen among the
training merchants, or any value of a merchant the model never trained on (``merchant_id`` of a
cold-start merchant). The vocabulary is built from training merchants only, so cold-start evaluation
is honest.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from perfusion_cli.errors import VocabularyMismatch

OOV = 0
MERCHANT_ID = "merchant_id"
MERCHANT_ID_COLUMN = 0  # every vocabulary's first feature is the merchant id (FeatureVocab holds it to that)


@dataclass
class Feature:
    name: str
    kind: str  # "categorical" or "numeric"
    values: list[str] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of ids, the OOV id included."""
        return 1 + (len(self.values) if self.kind == "categorical" else len(self.boundaries) + 1)

    def encode(self, value: Any) -> int:
        if value is None:
            return OOV
        if self.kind == "numeric":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return OOV
            return 1 + bisect.bisect_right(self.boundaries, float(value))
        index = self._index.get(category_key(value))
        return OOV if index is None else index

    def __post_init__(self) -> None:
        self._index = {value: position + 1 for position, value in enumerate(self.values)}

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "values": self.values, "boundaries": self.boundaries,
                "size": self.size}


def category_key(value: Any) -> str:
    """The string a categorical value is stored under (booleans and numbers as JSON spells them)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass
class FeatureVocab:
    features: list[Feature]

    def __post_init__(self) -> None:
        if not self.features or self.features[MERCHANT_ID_COLUMN].name != MERCHANT_ID:
            raise VocabularyMismatch(f"a merchant feature vocabulary starts with {MERCHANT_ID!r} (column "
                                     f"{MERCHANT_ID_COLUMN}); this one has {self.names[:1] or 'no feature'}")

    @property
    def names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def cardinalities(self) -> list[int]:
        return [feature.size for feature in self.features]

    def encode(self, merchant_id: str, profile: dict) -> list[int]:
        values = {**profile, MERCHANT_ID: merchant_id}
        return [feature.encode(values.get(feature.name)) for feature in self.features]

    def to_json(self) -> list[dict]:
        return [feature.to_json() for feature in self.features]

    def require_same(self, data: "FeatureVocab", what: str, data_dir) -> None:
        """The one compatibility check: a model's feature ids mean something only under its vocabulary."""
        if self != data:
            raise VocabularyMismatch(f"the {what} was trained on data with a different merchant feature vocabulary "
                                     f"than {data_dir}: use the data folder it was trained on")

    @classmethod
    def from_json(cls, items: list[dict]) -> "FeatureVocab":
        return cls([Feature(item["name"], item["kind"], list(item.get("values", [])),
                            [float(b) for b in item.get("boundaries", [])]) for item in items])


def infer_kinds(profiles: Iterable[dict]) -> dict[str, str]:
    """A feature is numeric when every non-null value is a number (booleans are categorical)."""
    kinds: dict[str, str] = {}
    for profile in profiles:
        for name, value in profile.items():
            if value is None:
                kinds.setdefault(name, "numeric")
                continue
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric:
                kinds[name] = "categorical"
            else:
                kinds.setdefault(name, "numeric")
    return kinds


def build_vocab(all_profiles: dict[str, dict], training: Iterable[str], buckets: int) -> FeatureVocab:
    """Kinds come from every valid profile; values and boundaries from the training merchants only."""
    training = sorted(training)
    kinds = infer_kinds(all_profiles.values())
    features = [Feature(MERCHANT_ID, "categorical", values=training)]
    for name in sorted(kinds):
        seen = [all_profiles[m].get(name) for m in training if all_profiles[m].get(name) is not None]
        if kinds[name] == "categorical":
            features.append(Feature(name, "categorical", values=sorted({category_key(v) for v in seen})))
        else:
            features.append(Feature(name, "numeric", boundaries=quantile_boundaries(seen, buckets)))
    return FeatureVocab(features)


def quantile_boundaries(values: list[float], buckets: int) -> list[float]:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    if len(finite) < 2 or buckets < 2:
        return []
    quantiles = np.quantile(np.array(finite), np.linspace(0, 1, buckets + 1)[1:-1])
    return sorted({round(float(q), 6) for q in quantiles})
