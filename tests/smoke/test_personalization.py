"""PerFusion learns merchants' taste and keeps the picture: on held-out pairs of a marketplace drawn by
another renderer than the one the tiny recipe was tuned on, its samples beat the base's by the oracle
and stay products (clean backgrounds) — on the tiny SD base and on the tiny SDXL base. Exported, the SD
adapter personalizes a stock diffusers pipeline. The tiny FLUX base, with its own recipe, passes the same bars."""

import pytest

from perfusion_cli.config import TINY_RECIPE, GenTrainConfig, build, load_recipe
from perfusion_cli.evaluation.gen import evaluate_generator
from perfusion_cli.evaluation.stock_pipeline import stock_pipeline_gain
from perfusion_cli.export import export_generator
from perfusion_cli.training.gen import train_generator
from tests.helpers import tiny_config, tiny_market


@pytest.fixture(scope="module")
def studio_market(tmp_path_factory):
    """The studio renderer (other silhouettes, textures and canvas; candidates the tiny base does not
    draw: off-policy logs), not the catalogue draw the recipe was tuned on."""
    out = tmp_path_factory.mktemp("studio")
    tiny_market(out, merchants=24, sessions=24, seed=3, style="studio")
    return out


EVALUATION = {"max_pairs": 32, "steps": 15, "guidance": 3.0, "clip_model": "tiny"}


def _trained_and_checked(recipe, market, tmp_path, gain: float):
    """The recipe's generator settings, unshrunk but for fewer steps on a smaller marketplace, trained and
    evaluated on held-out pairs from the same seeds; the bars asserted. Returns (config, evaluation, summary)."""
    config = build(GenTrainConfig, load_recipe(recipe)["train-gen"], {"max_steps": 250, "log_every": 50})
    train_generator(config, market, tmp_path / "gen")
    evaluation = tiny_config("eval-gen", **EVALUATION)
    summary = evaluate_generator(tmp_path / "gen", market, evaluation)
    base, personalized = summary["models"]["base"], summary["models"]["perfusion"]
    # the base scores ~0.1–0.25, a model that learned the hue more
    assert personalized["oracle"] > base["oracle"] + gain, summary["models"]
    assert summary["win_rate"]["oracle"] >= 0.7, summary["win_rate"]
    # the picture kept: the product on a clean background as often as the base's (within 10 %), intact, the prompt
    assert personalized["clean_background"] >= 0.9 * base["clean_background"], summary["models"]
    assert personalized["intact"] >= 0.9 * base["intact"], summary["models"]
    assert personalized["clip"] >= base["clip"] - 2.0, summary["models"]
    return config, evaluation, summary


@pytest.mark.slow
def test_personalized_samples_gain_taste_and_stay_products(studio_market, tmp_path):
    config, evaluation, summary = _trained_and_checked(TINY_RECIPE, studio_market, tmp_path, gain=0.1)
    base, personalized = summary["models"]["base"], summary["models"]["perfusion"]
    # exported: a stock diffusers pipeline with a merchant's embedding beats the same pipeline without the adapter,
    # and on eval gen's pairs and seeds it draws what PerFusion's own pipeline drew (on SDXL the export's pixels
    # are checked against perfusion generate's in tests/smoke/test_export.py)
    exported = export_generator(tmp_path / "gen", studio_market, tmp_path / "export")
    stock = stock_pipeline_gain(tmp_path / "export", studio_market, exported.base_model, config.resolution,
                                pairs=evaluation.max_pairs, steps=evaluation.steps, guidance=evaluation.guidance,
                                images_per_pair=evaluation.n_per_prompt, seed=evaluation.seed)
    assert stock["gain"] > 0.1 and stock["win_rate"] >= 0.7, stock
    assert stock["base"] == pytest.approx(base["oracle"], abs=0.01), (stock, base)
    assert stock["personalized"] == pytest.approx(personalized["oracle"], abs=0.01), (stock, personalized)


@pytest.mark.slow
def test_the_tiny_sdxl_recipe_gains_taste_and_keeps_the_picture(studio_market, tmp_path):
    _trained_and_checked(TINY_RECIPE.parent / "tiny-sdxl-cpu.toml", studio_market, tmp_path, gain=0.1)


@pytest.mark.slow
def test_the_tiny_flux_recipe_gains_taste_and_keeps_the_picture(studio_market, tmp_path):
    """recipes/tiny-flux-cpu.toml on the tiny FLUX base: the same bars, with less gain than on the U-Nets'."""
    config, _, _ = _trained_and_checked(TINY_RECIPE.parent / "tiny-flux-cpu.toml", studio_market, tmp_path, gain=0.05)
    assert (config.base_model, config.logit_mean) == ("tiny-flux", 2.0)
