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


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            yield from _numeric_fields(hint, f"{prefix}{field.name}.")
            continue
        inner = {a for a in typing.get_args(hint) if a is not type(None)} | {typing.get_origin(hint) or hint}
        if {int, float} & inner or list in inner and int in {a for a in typing.get_args(hint)}:
            yield f"{prefix}{field.name}", field.metadata.get("range", {})


def test_every_size_a_user_can_set_has_an_upper_bound():
    """Third hostile pass: batch_size = 100000, embed_dim = 10**9 and merchants = 2e9 allocated until they died."""
    unbounded = [f"[{section}] {name}" for section, cls in SECTIONS.items()
                 for name, limits in _numeric_fields(cls) if not {"le", "lt"} & set(limits)]
    assert not unbounded, unbounded


@pytest.mark.parametrize("section, key, value, message", [
    ("train-rm", "batch_size", 100_000, "key 'batch_size' must be ≤ 4096, got 100000"),
    ("synthetic", "merchants", 2_000_000_000, "key 'merchants' must be ≤ 100000, got 2000000000"),
    ("generate", "seed", 2**32, "key 'seed' must be ≤ 4294967295, got 4294967296"),
])
def test_a_size_over_its_bound_is_refused_where_it_is_read(section, key, value, message):
    from perfusion_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build(SECTIONS[section], {key: value}, where="recipe r.toml")
    with pytest.raises(ConfigError, match="key 'embed_dim' must be ≤ 4096, got 1000000000"):
        build(SECTIONS["train-rm"], {"merchant": {"embed_dim": 10**9}})
