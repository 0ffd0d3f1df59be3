"""Procedural product drawings for the synthetic marketplace (DESIGN §7).

A design is an item silhouette (named by the prompt) filled with a colour, a pattern and a material
texture, on a plain light background. Drawing is pure numpy plus one PIL polygon fill, so a 64×64
image costs well under a millisecond and the whole marketplace draws in seconds on two cores.

Two renderers ("styles") draw the same kinds of designs differently, so that recipes can be tuned on
one marketplace and reported on another (DESIGN §7):

- ``catalogue``: what the bundled tiny base was pre-trained on — flat fills on a cool light grey;
- ``studio``: another silhouette for every item, stronger material textures, a dark outline, a faint
  drop shadow and a warm canvas, and products drawn wider or narrower (``width``). A tiny base trained
  on the catalogue does not draw these: for it, studio candidates are off-policy, as real logs are
  whenever the candidates came from another model or from designers.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = np.array([236, 236, 232], dtype=np.float32)
CANVAS = {"catalogue": BACKGROUND, "studio": np.array([247, 242, 233], dtype=np.float32)}
STYLES = tuple(CANVAS)
PATTERNS = ("solid", "stripes", "dots", "checks")
MATERIALS = ("linen", "cotton", "denim", "silk", "wool", "leather")

# Silhouettes as polygons in a unit box centred on the origin (x right, y down), longest side 1.
SILHOUETTES: dict[str, list[tuple[float, float]]] = {
    "dress": [(-0.12, -0.5), (0.12, -0.5), (0.2, -0.36), (0.14, -0.06), (0.38, 0.5), (-0.38, 0.5),
              (-0.14, -0.06), (-0.2, -0.36)],
    "t-shirt": [(-0.14, -0.42), (0.14, -0.42), (0.46, -0.26), (0.38, -0.06), (0.27, -0.12), (0.27, 0.42),
                (-0.27, 0.42), (-0.27, -0.12), (-0.38, -0.06), (-0.46, -0.26)],
    "skirt": [(-0.24, -0.4), (0.24, -0.4), (0.42, 0.4), (-0.42, 0.4)],
    "trousers": [(-0.24, -0.5), (0.24, -0.5), (0.3, 0.5), (0.06, 0.5), (0.0, -0.12), (-0.06, 0.5),
                 (-0.3, 0.5)],
    "hoodie": [(-0.1, -0.5), (0.1, -0.5), (0.2, -0.38), (0.48, 0.34), (0.36, 0.4), (0.26, 0.02),
               (0.26, 0.45), (-0.26, 0.45), (-0.26, 0.02), (-0.36, 0.4), (-0.48, 0.34), (-0.2, -0.38)],
    "handbag": [(-0.4, -0.12), (0.4, -0.12), (0.46, 0.4), (-0.46, 0.4)],
}
ITEMS = tuple(SILHOUETTES)
# The studio renderer's own cut of every item (same items, other shapes).
STUDIO_SILHOUETTES: dict[str, list[tuple[float, float]]] = {
    "dress": [(-0.1, -0.5), (0.1, -0.5), (0.24, -0.3), (0.12, -0.12), (0.3, 0.2), (0.44, 0.5), (-0.44, 0.5),
              (-0.3, 0.2), (-0.12, -0.12), (-0.24, -0.3)],
    "t-shirt": [(-0.12, -0.42), (0.12, -0.42), (0.42, -0.3), (0.46, -0.02), (0.3, -0.02), (0.3, 0.44),
                (-0.3, 0.44), (-0.3, -0.02), (-0.46, -0.02), (-0.42, -0.3)],
    "skirt": [(-0.22, -0.4), (0.22, -0.4), (0.3, 0.0), (0.46, 0.4), (-0.46, 0.4), (-0.3, 0.0)],
    "trousers": [(-0.26, -0.5), (0.26, -0.5), (0.36, 0.5), (0.1, 0.5), (0.0, -0.05), (-0.1, 0.5), (-0.36, 0.5)],
    "hoodie": [(-0.12, -0.5), (0.12, -0.5), (0.24, -0.36), (0.46, 0.4), (0.3, 0.44), (0.24, 0.06), (0.24, 0.46),
               (-0.24, 0.46), (-0.24, 0.06), (-0.3, 0.44), (-0.46, 0.4), (-0.24, -0.36)],
    "handbag": [(-0.34, -0.16), (0.34, -0.16), (0.44, 0.12), (0.38, 0.42), (-0.38, 0.42), (-0.44, 0.12)],
}
# Materials a merchant would plausibly ask for, per item.
ITEM_MATERIALS: dict[str, tuple[str, ...]] = {
    "dress": ("linen", "cotton", "silk"),
    "t-shirt": ("cotton", "linen"),
    "skirt": ("denim", "linen", "silk", "wool"),
    "trousers": ("denim", "linen", "wool", "cotton"),
    "hoodie": ("cotton", "wool"),
    "handbag": ("leather", "denim", "linen"),
}


@dataclass(frozen=True)
class Design:
    """Everything that determines one drawing. ``hue``, ``saturation``, ``lightness`` in [0, 1]."""

    item: str
    material: str
    hue: float
    saturation: float
    lightness: float
    pattern: str
    scale: float
    dx: float = 0.0
    dy: float = 0.0
    seed: int = 0
    width: float = 1.0  # horizontal stretch of the silhouette
    style: str = "catalogue"

    @property
    def prompt(self) -> str:
        return f"{self.material} {self.item}"

    def caption(self) -> str:
        """A caption that names what is drawn (used to pre-train the tiny CLIP and U-Net)."""
        pattern = "" if self.pattern == "solid" else f"{self.pattern} "
        return f"{colour_name(self.hue, self.saturation, self.lightness)} {pattern}{self.prompt}"

    def to_dict(self) -> dict:
        return asdict(self)


def colour_name(hue: float, saturation: float, lightness: float) -> str:
    if saturation < 0.2:
        return "white" if lightness > 0.75 else "black" if lightness < 0.25 else "grey"
    names = ["red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet",
             "magenta", "pink"]
    name = names[int(round(hue * 12)) % 12]
    if lightness < 0.35:
        return f"dark {name}"
    if lightness > 0.68:
        return f"light {name}"
    return name


def _rgb(hue: float, lightness: float, saturation: float) -> np.ndarray:
    return np.array(colorsys.hls_to_rgb(hue % 1.0, lightness, saturation), dtype=np.float32) * 255.0


def _silhouette_alpha(design: Design, size: int) -> np.ndarray:
    """Anti-aliased coverage [H, W] in [0, 1]: the polygon drawn at 3× and box-downsampled."""
    ss = 3
    big = size * ss
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    extent = design.scale * big * 0.9
    cx = big * (0.5 + design.dx)
    cy = big * (0.5 + design.dy)
    outline = (STUDIO_SILHOUETTES if design.style == "studio" else SILHOUETTES)[design.item]
    points = [(cx + x * extent * design.width, cy + y * extent) for x, y in outline]
    draw.polygon(points, fill=255)
    if design.item == "handbag":
        box = [cx - 0.25 * extent, cy - 0.45 * extent, cx + 0.25 * extent, cy + 0.2 * extent]
        draw.arc(box, start=180, end=360, fill=255, width=max(1, int(0.07 * extent)))
    if design.item == "hoodie":
        draw.ellipse([cx - 0.16 * extent, cy - 0.62 * extent, cx + 0.16 * extent, cy - 0.36 * extent], fill=255)
    alpha = np.asarray(canvas, dtype=np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3)) / 255.0
    return alpha


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _pattern_field(pattern: str, size: int, phase: float) -> np.ndarray:
    """1 where the secondary colour shows, 0 elsewhere; [H, W]."""
    period = max(4.0, size / 8.0)
    yy, xx = _grid(size)
    if pattern == "solid":
        return np.zeros((size, size), np.float32)
    if pattern == "stripes":
        return (np.sin(2 * np.pi * (yy / period + phase)) > 0).astype(np.float32)
    if pattern == "checks":
        a = np.sin(2 * np.pi * (yy / period + phase)) > 0
        b = np.sin(2 * np.pi * (xx / period + phase)) > 0
        return (a ^ b).astype(np.float32)
    if pattern == "dots":
        u = (xx / period + phase) % 1.0 - 0.5
        v = (yy / period + phase) % 1.0 - 0.5
        return ((u * u + v * v) < 0.09).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}")


def _texture(material: str, size: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Multiplicative luminance texture [H, W] around 1; ``strength`` scales its amplitude."""
    return 1 + strength * (_material(material, size, rng) - 1)


def _material(material: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    if material == "linen":
        return 1 + 0.05 * noise + 0.03 * np.sin(xx * 2.1) * np.sin(yy * 2.1)
    if material == "cotton":
        return 1 + 0.02 * noise
    if material == "denim":
        return 1 + 0.08 * np.sin((xx + yy) * 2.0) + 0.03 * noise
    if material == "silk":
        return 1 + 0.14 * np.sin(np.pi * 2 * xx / size) + 0.01 * noise
    if material == "wool":
        blurred = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, (1, 1), (0, 1))) / 4
        return 1 + 0.12 * blurred
    if material == "leather":
        return 0.92 + 0.04 * noise
    raise ValueError(f"unknown material {material!r}")


def draw(design: Design, size: int = 64) -> np.ndarray:
    """Render a design as uint8 RGB [size, size, 3]."""
    rng = np.random.default_rng(design.seed)
    alpha = _silhouette_alpha(design, size)[..., None]
    studio = design.style == "studio"
    base = _rgb(design.hue, design.lightness, design.saturation)
    # The secondary colour keeps the hue and moves lightness away from the base, so the mean colour
    # of a patterned item stays close to its base colour.
    shift = -0.3 if design.lightness > 0.5 else 0.3
    second = _rgb(design.hue, np.clip(design.lightness + shift, 0.05, 0.95), design.saturation)
    field = _pattern_field(design.pattern, size, phase=float(rng.uniform()))[..., None]
    garment = base * (1 - field) + second * field
    shade = 1.06 - 0.12 * np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    garment = garment * _texture(design.material, size, rng, 1.8 if studio else 1.0)[..., None] * shade
    canvas = np.broadcast_to(CANVAS[design.style], garment.shape).copy()
    if studio:
        garment = _outlined(garment, alpha)
        canvas = canvas * (1 - 0.06 * np.roll(alpha, (max(1, size // 32), max(1, size // 32)), (0, 1)))
    image = canvas * (1 - alpha) + np.clip(garment, 0, 255) * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _outlined(garment: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Darken the silhouette's rim: pixels with a transparent neighbour."""
    inside = alpha[..., 0] > 0.5
    rim = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    return np.where(rim[..., None], garment * 0.45, garment)


def random_design(rng: np.random.Generator, item: str, material: str, style: str = "catalogue",
                  vary_width: bool = False) -> Design:
    """A design from the population distribution (the catalogue's is what the tiny base learned)."""
    design = Design(
        item=item,
        material=material,
        hue=float(rng.uniform()),
        saturation=float(rng.uniform(0.45, 0.9)),
        lightness=float(rng.uniform(0.25, 0.8)),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))] if rng.uniform() > 0.4 else "solid",
        scale=float(rng.uniform(0.6, 1.0)),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
        seed=int(rng.integers(2**31)),
        style=style,
    )
    if vary_width:  # drawn only when asked, so the default marketplace stays the one the benchmarks used
        design = replace(design, width=float(np.exp(rng.uniform(np.log(0.75), np.log(1.3)))))
    return design
