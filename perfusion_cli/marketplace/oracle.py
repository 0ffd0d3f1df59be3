"""The synthetic marketplace's oracle: a merchant's hidden taste, measured from pixels alone.

A taste has up to six parts, each scored in [-1, 1] from what an image shows:

- hue: cos of the angle between the product's mean hue and the preferred hue, weighted by how
  saturated the product is (a grey item has no hue to like or dislike);
- lightness: 1 - 4·|L - L*|, clipped;
- pattern: preference × (2·busyness - 1), busyness being the luminance spread inside the product;
- scale: preference × how much of the frame the product fills, mapped to [-1, 1];
- width: preference × how wide the product is for its height (log aspect ratio, scaled);
- vivid: preference × how saturated the product is, mapped to [-1, 1].

Utility = Σ weight · part; the weights are the marketplace's taste mix (``TASTE_MIXES``): ``colour``
(the default draw: mostly hue) or mixes where pattern, silhouette and vividness matter as much or
more. An image with no product in it scores ``NO_PRODUCT``, below any real product.

The background is read from the image's border, so any renderer's canvas works. ``integrity`` says
whether an image is still a product photo: a clean, plain, light background and one intact product.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from perfusion_cli.data.decode import render

PARTS = ("hue", "lightness", "pattern", "scale", "width", "vivid")
TASTE_MIXES = {
    "colour": {"hue": 1.0, "lightness": 0.5, "pattern": 0.5, "scale": 0.3, "width": 0.0, "vivid": 0.0},
    "mixed": {"hue": 0.5, "lightness": 0.3, "pattern": 0.6, "scale": 0.3, "width": 0.6, "vivid": 0.6},
    "subtle": {"hue": 0.25, "lightness": 0.2, "pattern": 0.7, "scale": 0.3, "width": 0.8, "vivid": 0.8},
}
WEIGHTS = TASTE_MIXES["colour"]
NO_PRODUCT = -3.0
_MIN_PIXELS = 0.02  # a product covers at least 2% of the frame
_BORDER = 2


@dataclass(frozen=True)
class Taste:
    """A merchant's hidden preference (written to ``truth.json``), with its marketplace's weights."""

    hue: float
    lightness: float
    pattern: float
    scale: float
    width: float = 0.0
    vivid: float = 0.0
    weights: dict = field(default_factory=lambda: dict(WEIGHTS), compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping) -> "Taste":
        return cls(*(float(values.get(key, 0.0)) for key in PARTS), weights=dict(values.get("weights", WEIGHTS)))

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
    aspect: float = 1.0  # width / height of the product's bounding box


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8-range float RGB [H, W, 3] from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(render(image), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.max() <= 1.0 + 1e-6 and np.asarray(image).dtype != np.uint8:
        array = array * 255.0
    return array


def _border(pixels: np.ndarray) -> np.ndarray:
    """The pixels of the frame's outer ring, [n, 3]."""
    b = _BORDER
    return np.concatenate([pixels[:b].reshape(-1, 3), pixels[-b:].reshape(-1, 3), pixels[b:-b, :b].reshape(-1, 3),
                           pixels[b:-b, -b:].reshape(-1, 3)])


def _mask(pixels: np.ndarray) -> np.ndarray:
    background = np.median(_border(pixels), axis=0)
    return np.abs(pixels - background).max(axis=-1) > 24.0


def product_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels that differ from the background (read off the border), i.e. the product."""
    return _mask(_as_array(image))


def measure(image: Image.Image | np.ndarray) -> ImageFeatures:
    """Read the product's colour, busyness, size and shape off the pixels."""
    pixels = _as_array(image)
    size = pixels.shape[0]
    mask = _mask(pixels)
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
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    return ImageFeatures(True, float(hue), float(saturation), float(lightness), busyness,
                         float(max(height, width) / size), float(width / height))


def parts_of(taste: Taste, features: ImageFeatures) -> dict[str, np.ndarray]:
    """Each part of the utility in [-1, 1], before weighting. The fields may be arrays that broadcast
    (many tastes against many images, as ``utilities`` uses it): one formula for both."""
    weight = np.minimum(1.0, np.asarray(features.saturation) / 0.3)
    return {
        "hue": weight * np.cos(2 * np.pi * (features.hue - taste.hue)),
        "lightness": np.clip(1 - 4 * np.abs(features.lightness - taste.lightness), -1, 1),
        "pattern": taste.pattern * (2 * np.asarray(features.busyness) - 1),
        # Products are drawn filling 0.54-0.9 of the frame (scale 0.6-1.0 times 0.9).
        "scale": taste.scale * np.clip((np.asarray(features.scale) - 0.54) / 0.36 * 2 - 1, -1, 1),
        # Widths are drawn 0.75-1.3 times an item's own aspect: log(1.3) ≈ 0.26.
        "width": taste.width * np.clip(np.log(features.aspect) / 0.5, -1, 1),
        "vivid": taste.vivid * np.clip((np.asarray(features.saturation) - 0.45) / 0.45 * 2 - 1, -1, 1),
    }


def utilities(taste: Taste, features: ImageFeatures) -> np.ndarray:
    """The utility of every image in ``features`` (fields [C], from ``stack``) for every taste in ``taste``
    (fields [S, 1], or floats): [S, C], or [C]. An image with no product scores ``NO_PRODUCT``."""
    total = sum(taste.weights.get(part, 0.0) * value for part, value in parts_of(taste, features).items())
    return np.where(features.present, total, NO_PRODUCT)


def utility_of(taste: Taste, features: ImageFeatures) -> float:
    return float(utilities(taste, features))


def stack(measured: Sequence[ImageFeatures]) -> ImageFeatures:
    """Many images' features as one ``ImageFeatures`` of [C] arrays (absent products keep neutral values)."""
    return ImageFeatures(*(np.array([getattr(f, name.name) for f in measured]) for name in fields(ImageFeatures)))


def oracle_utility(merchant: Taste | Mapping, image: Image.Image | np.ndarray) -> float:
    """How much ``merchant`` (a Taste or its ``truth.json`` entry) likes ``image``, from pixels alone."""
    taste = merchant if isinstance(merchant, Taste) else Taste.from_mapping(merchant)
    return utility_of(taste, measure(image))


@dataclass(frozen=True)
class Integrity:
    """Is this still a product photo? A clean background and one intact product."""

    clean_background: bool  # the border is plain (uniform), light and nearly grey: a product-photo canvas
    intact: bool  # a product is there, in one piece (≥ 90 % of what differs from the canvas), inside the frame

    @property
    def product(self) -> bool:
        return self.clean_background and self.intact


def integrity(image: Image.Image | np.ndarray) -> Integrity:
    from scipy import ndimage

    pixels = _as_array(image)
    border = _border(pixels)
    plain = float(np.abs(border - np.median(border, axis=0)).max(axis=-1).mean()) < 6.0
    light = float(border.mean()) / 255.0 > 0.75
    grey = float((border.max(axis=-1) - border.min(axis=-1)).mean()) / 255.0 < 0.12
    mask = _mask(pixels)
    intact = False
    if mask.mean() >= _MIN_PIXELS:
        labels, count = ndimage.label(mask)
        sizes = np.bincount(labels.ravel())[1:]
        product = labels == (1 + int(sizes.argmax()))
        touches = product[0].any() or product[-1].any() or product[:, 0].any() or product[:, -1].any()
        intact = sizes.max() >= 0.9 * mask.sum() and not touches
    return Integrity(plain and light and grey, bool(intact))
