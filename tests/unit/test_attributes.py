"""The perfect-eyes ceiling claims the oracle's attributes in the utility's own basis: every part of
``oracle.parts_of`` but lightness is exactly linear in them, and lightness's tent nearly so."""

from dataclasses import replace

import numpy as np
import pytest

from perfusion_cli.marketplace.oracle import ImageFeatures, stack, utilities
from perfusion_cli.marketplace.synthetic import PERSONAL_SPREAD, profile_taste
from perfusion_cli.evaluation.attributes import ATTRIBUTES, attributes


def images(rng: np.random.Generator, n: int) -> list[ImageFeatures]:
    """Products over the ranges the marketplace draws (and beyond, where the utility clips)."""
    return [ImageFeatures(True, hue=rng.uniform(), saturation=rng.uniform(0.0, 1.0), lightness=rng.uniform(0.2, 0.85),
                          busyness=rng.uniform(), scale=rng.uniform(0.4, 1.0), aspect=float(np.exp(rng.uniform(-0.6, 0.6))))
            for _ in range(n)]


def explained(taste, measured: list[ImageFeatures], columns: slice | list[int] = slice(None)) -> float:
    """R² of the best linear fit of the taste's utilities on the attributes' ``columns``."""
    target = utilities(taste, stack(measured))
    design = attributes(stack(measured))[:, columns]
    design = np.column_stack([design, np.ones(len(design))])
    residual = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return 1 - residual.var() / target.var()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_oracles_attributes_span_every_part_of_a_mixed_taste(seed):
    rng = np.random.default_rng(seed)
    personal = {part: rng.normal(0, spread) for part, spread in PERSONAL_SPREAD.items()}
    taste = profile_taste("womenswear", "bohemian", "coastal", 40.0, "mixed", personal)
    measured = images(rng, 600)
    without_lightness = replace(taste, weights={**taste.weights, "lightness": 0.0})
    assert explained(without_lightness, measured) > 1 - 1e-9  # hue, pattern, framing, cut, vividness: exact
    assert explained(taste, measured) > 0.98  # the lightness tent, from nine bumps
    no_bumps = [i for i, name in enumerate(ATTRIBUTES) if not name.startswith("lightness")]
    assert explained(taste, measured, no_bumps) < explained(taste, measured) - 0.01  # the bumps carry it


def test_an_image_without_a_product_is_its_own_attribute():
    rows = attributes(stack([ImageFeatures(False), *images(np.random.default_rng(0), 1)]))
    assert rows[0].tolist() == [0.0] * (len(ATTRIBUTES) - 1) + [1.0] and rows[1, -1] == 0.0
