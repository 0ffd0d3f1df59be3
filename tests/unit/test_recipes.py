"""Every shipped recipe loads with known sections, keys and types."""

from pathlib import Path

import pytest

from perfusion_cli.config import SECTIONS, build, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml"))


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"tiny-cpu.toml", "sd15-industrial.toml", "sd15-pickapic.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe
    for section, values in recipe.items():
        build(SECTIONS[section], values)
