"""The synthetic marketplace (DESIGN §7): merchants, hidden tastes, sessions, written as raw logs.

Each merchant has profile features (category, style, region, price level, followers, shop age) and a
hidden taste (``oracle.Taste``) that depends on those features plus an idiosyncratic part:

- preferred hue: the style's hue plus a personal offset;
- preferred lightness: the region's lightness plus a personal offset;
- pattern preference: the style's, pulled towards plain by a high price level, plus noise;
- scale preference: the category's, plus noise.

With the richer taste mixes (``taste = "mixed"`` or ``"subtle"``) two more parts are drawn:

- width preference (wide or narrow silhouettes): the category's, plus a large personal part;
- vividness preference (saturated or muted colours): the region's, plus a personal part;

and the weights move from colour towards pattern, silhouette and vividness (``oracle.TASTE_MIXES``).

A session is one prompt ("linen dress") with K candidates drawn from the population distribution of
the marketplace's renderer (``style``: the catalogue the tiny base learned, or the studio's other
silhouettes, textures and canvas); the merchant selects the 1–2 with the highest oracle utility after
Gumbel noise of scale ``noise``. ``followers`` and ``shop_age_years`` carry no taste at all: a model
has to learn to ignore them. The defaults draw exactly the marketplace the benchmarks were first made
on; the other draws change only when asked for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from perfusion_cli.config import SyntheticConfig
from perfusion_cli.data.logs import TRUTH_FILE as TRUTH
from perfusion_cli.data.manifest import MANIFEST, load_manifest
from perfusion_cli.errors import DataError
from perfusion_cli.io import atomic_write_bytes, atomic_write_json
from perfusion_cli.marketplace.drawing import ITEM_MATERIALS, draw, random_design
from perfusion_cli.marketplace.oracle import TASTE_MIXES, Taste, oracle_utility, utility_of, measure  # noqa: F401

CATEGORY_ITEMS = {
    "womenswear": ("dress", "skirt", "t-shirt"),
    "menswear": ("t-shirt", "trousers", "hoodie"),
    "kidswear": ("t-shirt", "hoodie", "dress", "trousers"),
    "accessories": ("handbag",),
}
CATEGORY_SCALE = {"womenswear": 0.3, "menswear": -0.2, "kidswear": -0.5, "accessories": 0.6}
STYLE_HUE = {"minimalist": 0.60, "bohemian": 0.07, "streetwear": 0.33, "classic": 0.97, "romantic": 0.86}
STYLE_PATTERN = {"minimalist": -0.8, "bohemian": 0.8, "streetwear": 0.3, "classic": -0.4, "romantic": 0.5}
REGION_LIGHTNESS = {"nordic": 0.35, "mediterranean": 0.7, "continental": 0.5, "coastal": 0.6}
CATEGORY_WIDTH = {"womenswear": 0.4, "menswear": -0.3, "kidswear": 0.2, "accessories": -0.5}
REGION_VIVID = {"nordic": -0.6, "mediterranean": 0.6, "continental": -0.2, "coastal": 0.3}
SESSION_DAYS = 180
FIRST_ID = 101  # merchants are numbered as real marketplaces number them: 101, 102, … (so 123 is one)


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    category: str
    style: str
    region: str
    price_level: float
    followers: int
    shop_age_years: float
    taste: Taste

    def profile(self) -> dict:
        return {"merchant_id": self.merchant_id, "category": self.category, "style": self.style,
                "region": self.region, "price_level": self.price_level, "followers": self.followers,
                "shop_age_years": self.shop_age_years}


# How far a merchant's taste strays from its profile's: the spread of each personal offset (normal, mean 0).
# width and vivid are drawn only for the richer mixes. Draw order matters: it is the marketplace's random stream.
PERSONAL_SPREAD = {"hue": 0.08, "lightness": 0.06, "pattern": 0.25, "scale": 0.35, "width": 0.5, "vivid": 0.4}
COLOUR_PARTS = ("hue", "lightness", "pattern", "scale")


def personal_parts(mix: str) -> tuple[str, ...]:
    """The taste parts a merchant of this mix has a personal offset on."""
    return COLOUR_PARTS if mix == "colour" else tuple(PERSONAL_SPREAD)


def profile_taste(category: str, style: str, region: str, price_level: float, mix: str = "colour",
                  personal: dict | None = None) -> Taste:
    """A merchant's taste: what its profile says plus its ``personal`` offsets (none: the profile alone,
    the best any model that knows the merchant only by its profile can do). Offsets may be arrays (many
    candidate tastes of one merchant at once); the taste's fields then are arrays too."""
    offset = personal or {}
    price_z = (np.log(price_level) - 3.5) / 0.6
    scalar = lambda value: float(value) if np.ndim(value) == 0 else value  # noqa: E731
    taste = Taste(
        hue=scalar((STYLE_HUE[style] + offset.get("hue", 0.0)) % 1.0),
        lightness=scalar(np.clip(REGION_LIGHTNESS[region] + offset.get("lightness", 0.0), 0.25, 0.8)),
        pattern=scalar(np.clip(STYLE_PATTERN[style] - 0.3 * price_z + offset.get("pattern", 0.0), -1, 1)),
        scale=scalar(np.clip(CATEGORY_SCALE[category] + offset.get("scale", 0.0), -1, 1)),
        weights=dict(TASTE_MIXES[mix]),
    )
    if mix != "colour":  # drawn only for the richer mixes, so the default marketplace stays as it was
        taste = replace(taste, width=scalar(np.clip(CATEGORY_WIDTH[category] + offset.get("width", 0.0), -1, 1)),
                        vivid=scalar(np.clip(REGION_VIVID[region] + offset.get("vivid", 0.0), -1, 1)))
    return taste


def make_merchant(rng: np.random.Generator, index: int, mix: str = "colour") -> Merchant:
    category = str(rng.choice(list(CATEGORY_ITEMS)))
    style = str(rng.choice(list(STYLE_HUE)))
    region = str(rng.choice(list(REGION_LIGHTNESS)))
    price_level = float(np.round(np.exp(rng.normal(3.5, 0.6)), 2))
    personal = {part: rng.normal(0, PERSONAL_SPREAD[part]) for part in personal_parts(mix)}
    return Merchant(
        merchant_id=str(FIRST_ID + index), category=category, style=style, region=region,
        price_level=price_level, followers=int(rng.integers(10, 100_000)),
        shop_age_years=float(np.round(rng.uniform(0.1, 12), 1)),
        taste=profile_taste(category, style, region, price_level, mix, personal),
    )


def choose_selected(utilities: np.ndarray, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """1 or 2 positives: the top candidates by utility plus Gumbel noise of scale ``noise``."""
    n_positive = 1 if rng.uniform() < 0.6 else 2
    noisy = utilities + rng.gumbel(0.0, noise, size=utilities.shape)
    selected = np.zeros(len(utilities), dtype=bool)
    selected[np.argsort(-noisy)[:n_positive]] = True
    return selected


def sessions_for(merchant: Merchant, index: int, config: SyntheticConfig) -> int:
    """Most merchants log the configured number of sessions; one in eight is new and logs few."""
    if index % 8 == 7:
        return max(3, config.sessions_per_merchant // 4)
    return config.sessions_per_merchant


def write_marketplace(out: str | Path, config: SyntheticConfig, progress=None) -> Path:
    """Write raw logs (DESIGN §3) plus ``truth.json`` under ``out``; returns ``out``. ``progress`` (a
    ``progress.Progress``) advances once a merchant."""
    out = Path(out)
    rng = np.random.default_rng(config.seed)
    merchants = [make_merchant(rng, index, config.taste) for index in range(config.merchants)]
    vary_width = config.style != "catalogue" or config.taste != "colour"
    sessions = []
    for index, merchant in enumerate(merchants):
        start = float(rng.uniform(0, 30)) * 86400
        times = np.sort(rng.uniform(0, SESSION_DAYS * 86400, size=sessions_for(merchant, index, config)))
        for number, offset in enumerate(times):
            item = str(rng.choice(CATEGORY_ITEMS[merchant.category]))
            material = str(rng.choice(ITEM_MATERIALS[item]))
            designs = [random_design(rng, item, material, config.style, vary_width) for _ in range(config.group_size)]
            images = [draw(design, config.resolution) for design in designs]
            utilities = np.array([oracle_utility(merchant.taste, image) for image in images])
            selected = choose_selected(utilities, rng, config.noise)
            session_id = f"{merchant.merchant_id}-s{number:03d}"
            candidates = []
            for k, image in enumerate(images):
                relative = f"images/{merchant.merchant_id}/{session_id}-{k}.png"
                _write_png(out / relative, image)
                candidates.append({"image": relative, "selected": bool(selected[k])})
            sessions.append({
                "session_id": session_id, "merchant_id": merchant.merchant_id, "prompt": designs[0].prompt,
                "timestamp": round(1.7e9 + start + float(offset), 3), "candidates": candidates,
            })
        if progress is not None:
            progress.advance(1)
    sessions.sort(key=lambda row: (row["timestamp"], row["session_id"]))
    _write_jsonl(out / "merchants.jsonl", [merchant.profile() for merchant in merchants])
    _write_jsonl(out / "sessions.jsonl", sessions)
    atomic_write_json(out / TRUTH, {
        "merchants": {m.merchant_id: {**m.taste.to_dict(), "style": m.style} for m in merchants},
        "config": asdict(config),
    })
    return out


def truth_problem(data: bytes) -> str | None:
    """What makes ``data`` not a ``truth.json`` of this marketplace, or None: a JSON object whose ``merchants``
    map ids to tastes (the numbers ``COLOUR_PARTS`` at least, ``weights`` a table of numbers)."""
    try:
        truth = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(truth, dict) or not isinstance(truth.get("merchants"), dict):
        return "no \"merchants\" table"
    number = (int, float)
    for merchant, taste in truth["merchants"].items():
        if not isinstance(taste, dict) or not all(isinstance(taste.get(part), number) for part in COLOUR_PARTS):
            return f"merchant {merchant!r} has no taste ({', '.join(COLOUR_PARTS)})"
        weights = taste.get("weights", {})
        if not isinstance(weights, dict) or not all(isinstance(w, number) for w in weights.values()):
            return f"merchant {merchant!r} has weights that are not numbers"
    if not isinstance(truth.get("config", {}), dict):
        return "\"config\" is not a table"
    return None


def read_truth(path: str | Path) -> dict | None:
    """The whole ``truth.json`` (``merchants`` and the marketplace's ``config``) from the file or the folder
    holding one (synthetic raw logs, or a prepared data folder, where ``prepare`` copies it); None for
    real data — a prepared folder whose manifest says so, whatever file sits beside it. A damaged one of
    synthetic data is a DataError naming what is wrong."""
    path = Path(path)
    folder, path = (path, path / TRUTH) if path.is_dir() else (path.parent, path)
    if not path.is_file():
        return None
    if (folder / MANIFEST).is_file() and not load_manifest(folder).synthetic:
        return None
    data = path.read_bytes()
    problem = truth_problem(data)
    if problem:
        raise DataError(f"{path} is not the synthetic marketplace's truth.json ({problem}) — re-run `perfusion "
                        f"prepare`")
    return json.loads(data.decode("utf-8-sig"))


def load_truth(path: str | Path) -> dict[str, Taste] | None:
    """Merchant id → Taste (see ``read_truth``); None when there is no hidden taste (real data)."""
    truth = read_truth(path)
    if truth is None:
        return None
    return {merchant_id: Taste.from_mapping(values) for merchant_id, values in truth["merchants"].items()}


def _write_png(path: Path, image: np.ndarray) -> None:
    # Raw images are written plainly (no fsync per file): sessions.jsonl, which references them, is
    # written last and atomically, so an interrupted run never leaves a log pointing at a torn image.
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    atomic_write_bytes(path, text.encode("utf-8"))
