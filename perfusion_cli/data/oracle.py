"""The synthetic marketplace's oracle: a merchant's hidden taste, measured from pixels alone.

A taste has four parts, each scored in [-1, 1] from what an image shows:

- hue: cos of the angle between the product's mean hue and the preferred hue, weighted by how
  saturated the product is (a grey item has no hue to like or dislike);
- lightness: 1 - 4·|L - L*|, clipped;
- pattern: preference × (2·busyness - 1), busyness being the luminance spread inside the product;
- scale: preference × how much of the frame the product fills, mapped to [-1, 1].

Utility = 1.0·hue + 0.5·lightness + 0.5·pattern + 0.3·scale. An image with no product in it
(nothing differs from the background) scores ``NO_PRODUCT``, below any real product.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from PIL import Image

from perfusion_cli.data.drawing import BACKGROUND

WEIGHTS = {"hue": 1.0, "lightness": 0.5, "pattern": 0.5, "scale": 0.3}
NO_PRODUCT = -3.0
_MIN_PIXELS = 0.02  # a product covers at least 2% of the frame


@dataclass(frozen=True)
class Taste:
    """A merchant's hidden preference (written to ``truth.json``)."""

    hue: float
    lightness: float
    pattern: float
    scale: float

    @classmethod
    def from_mapping(cls, values: Mapping) -> "Taste":
        return cls(*(float(values[key]) for key in ("hue", "lightness", "pattern", "scale")))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageFeatures:
    """What the oracle reads off an image. ``present`` is False when no product is visible."""

    present: bool
    hue: float = 0.0
    saturation: float = 0.0
    lightness: float = 0.0
    busyness: float = 0.0
    scale: float = 0.0


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8-range float RGB [H, W, 3] from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.max() <= 1.0 + 1e-6 and np.asarray(image).dtype != np.uint8:
        array = array * 255.0
    return array


def _differs_from_background(pixels: np.ndarray) -> np.ndarray:
    return np.abs(pixels - BACKGROUND).max(axis=-1) > 24.0


def product_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels that differ from the background, i.e. the product the oracle reads."""
    return _differs_from_background(_as_array(image))


def measure(image: Image.Image | np.ndarray) -> ImageFeatures:
    """Read the product's colour, busyness and size off the pixels."""
    pixels = _as_array(image)
    size = pixels.shape[0]
    mask = _differs_from_background(pixels)
    if mask.mean() < _MIN_PIXELS:
        return ImageFeatures(present=False)
    mean = pixels[mask].mean(axis=0) / 255.0
    hue, lightness, saturation = colorsys.rgb_to_hls(*np.clip(mean, 0, 1))
    # Busyness: luminance spread away from the silhouette's edge (erode the mask by two pixels).
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (1, -1, 2, -2):
            inner &= np.roll(mask, shift, axis=axis)
    luminance = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    spread = float(luminance[inner].std()) if inner.sum() > 8 else 0.0
    busyness = float(np.clip((spread - 0.04) / 0.1, 0.0, 1.0))
    rows, cols = np.nonzero(mask)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / size
    return ImageFeatures(True, float(hue), float(saturation), float(lightness), busyness, float(extent))


def utility_of(taste: Taste, features: ImageFeatures) -> float:
    if not features.present:
        return NO_PRODUCT
    weight = min(1.0, features.saturation / 0.3)
    hue = weight * float(np.cos(2 * np.pi * (features.hue - taste.hue)))
    lightness = float(np.clip(1 - 4 * abs(features.lightness - taste.lightness), -1, 1))
    pattern = taste.pattern * (2 * features.busyness - 1)
    # Products are drawn filling 0.54-0.9 of the frame (scale 0.6-1.0 times 0.9).
    scale = taste.scale * float(np.clip((features.scale - 0.54) / 0.36 * 2 - 1, -1, 1))
    return (WEIGHTS["hue"] * hue + WEIGHTS["lightness"] * lightness + WEIGHTS["pattern"] * pattern
            + WEIGHTS["scale"] * scale)


def oracle_utility(merchant: Taste | Mapping, image: Image.Image | np.ndarray) -> float:
    """How much ``merchant`` (a Taste or its ``truth.json`` entry) likes ``image``, from pixels alone."""
    taste = merchant if isinstance(merchant, Taste) else Taste.from_mapping(merchant)
    return utility_of(taste, measure(image))
