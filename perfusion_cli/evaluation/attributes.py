"""The oracle's attributes of an image in the utility's own basis (synthetic data): what perfect eyes see.

Every part of ``oracle.parts_of`` but lightness is exactly linear in these: hue as its saturation-weighted
cosine and sine, busyness, framing (scale), log aspect and vividness clipped as the utility clips them;
lightness's tent is nearly linear in nine bumps. A taste learned over them (``taste_learner``) has the
oracle's eyes and the taste's form, and learns only its weights.
"""

from __future__ import annotations

import numpy as np

from perfusion_cli.marketplace.oracle import ImageFeatures

LIGHTNESS_BUMPS = np.linspace(0.1, 0.9, 9)
ATTRIBUTES = ["hue cos", "hue sin", "busyness", "framing", "log aspect", "vividness",
              *[f"lightness {c:.1f}" for c in LIGHTNESS_BUMPS], "no product"]


def attributes(features: ImageFeatures) -> np.ndarray:
    """Images' features (``oracle.stack``: [C] arrays) → [C, len(ATTRIBUTES)]; an image without a product
    is only its own last attribute."""
    present = np.asarray(features.present, dtype=bool)
    saturation, hue = np.asarray(features.saturation, dtype=float), np.asarray(features.hue, dtype=float)
    weight = np.minimum(1.0, saturation / 0.3)
    lightness = np.asarray(features.lightness, dtype=float)
    columns = np.column_stack([
        weight * np.cos(2 * np.pi * hue), weight * np.sin(2 * np.pi * hue),
        2 * np.asarray(features.busyness, dtype=float) - 1,
        np.clip((np.asarray(features.scale, dtype=float) - 0.54) / 0.36 * 2 - 1, -1, 1),
        np.clip(np.log(np.asarray(features.aspect, dtype=float)) / 0.5, -1, 1),
        np.clip((saturation - 0.45) / 0.45 * 2 - 1, -1, 1),
        np.exp(-0.5 * np.square((lightness[:, None] - LIGHTNESS_BUMPS) / 0.08)),
        np.zeros(len(present)),
    ])
    columns[~present] = np.eye(len(ATTRIBUTES))[-1]
    return columns.astype(np.float32)
