"""The synthetic marketplace and its oracle: selections follow hidden taste, read from pixels alone."""

import json

import numpy as np
import pytest
from PIL import Image

from perfusion_cli.marketplace.drawing import BACKGROUND, Design, draw
from perfusion_cli.marketplace.oracle import NO_PRODUCT, Taste, measure
from perfusion_cli.marketplace.synthetic import load_truth, oracle_utility
from tests.helpers import read_jsonl


def test_selected_candidates_have_higher_oracle_utility_for_most_merchants(market):
    data_dir, _ = market
    raw = data_dir / "raw"
    truth = load_truth(raw)
    by_merchant = {}
    for row in read_jsonl(raw / "sessions.jsonl"):
        for candidate in row["candidates"]:
            utility = oracle_utility(truth[row["merchant_id"]], Image.open(raw / candidate["image"]))
            by_merchant.setdefault(row["merchant_id"], ([], []))[0 if candidate["selected"] else 1].append(utility)
    wins = [np.mean(chosen) > np.mean(rest) for chosen, rest in by_merchant.values()]
    assert np.mean(wins) >= 0.9, f"selected beat unselected for only {np.mean(wins):.0%} of merchants"


def test_tastes_differ_between_merchants_so_personalization_is_measurable(market):
    data_dir, _ = market
    truth = load_truth(data_dir / "raw")
    hues = np.array([taste.hue for taste in truth.values()])
    # circular spread of preferred hues: far from a single shared taste
    resultant = np.abs(np.exp(2j * np.pi * hues).mean())
    assert resultant < 0.8


def _design(hue, pattern="solid", scale=0.8, lightness=0.5):
    return Design("dress", "cotton", hue=hue, saturation=0.8, lightness=lightness, pattern=pattern, scale=scale)


def test_oracle_reads_colour_pattern_and_scale_off_the_pixels():
    features = measure(draw(_design(0.6, "stripes", 0.9)))
    assert features.present
    assert abs(features.hue - 0.6) < 0.03
    assert features.busyness > 0.8
    assert measure(draw(_design(0.6, "solid"))).busyness < 0.3
    assert measure(draw(_design(0.6, scale=0.95))).scale > measure(draw(_design(0.6, scale=0.6))).scale + 0.2


def test_oracle_prefers_the_merchants_hue_and_lightness():
    taste = Taste(hue=0.6, lightness=0.5, pattern=0.0, scale=0.0)
    liked = oracle_utility(taste, draw(_design(0.6)))
    opposite = oracle_utility(taste, draw(_design(0.1)))
    too_dark = oracle_utility(taste, draw(_design(0.6, lightness=0.25)))
    assert liked > too_dark > opposite
    assert oracle_utility(taste.to_dict(), draw(_design(0.6))) == pytest.approx(liked)


def test_an_empty_image_scores_below_any_product():
    blank = np.broadcast_to(BACKGROUND.astype(np.uint8), (64, 64, 3))
    taste = Taste(0.0, 0.5, 0.0, 0.0)
    assert oracle_utility(taste, blank) == NO_PRODUCT
    worst = min(oracle_utility(taste, draw(_design(h / 10))) for h in range(10))
    assert worst > NO_PRODUCT


def test_oracle_accepts_float_chw_tensors_like_a_pipeline_returns():
    image = draw(_design(0.3))
    taste = Taste(0.3, 0.5, 0.2, 0.1)
    chw = image.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert oracle_utility(taste, chw) == pytest.approx(oracle_utility(taste, image), abs=1e-3)


def test_drawing_is_deterministic_and_truth_lists_every_merchant(market):
    design = _design(0.2, "dots")
    assert np.array_equal(draw(design), draw(design))
    data_dir, _ = market
    truth = json.loads((data_dir / "raw" / "truth.json").read_text())
    merchants = [row["merchant_id"] for row in read_jsonl(data_dir / "raw" / "merchants.jsonl")]
    assert sorted(truth["merchants"]) == sorted(merchants)
