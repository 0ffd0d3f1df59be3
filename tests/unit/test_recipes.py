"""Every shipped recipe loads with known sections, keys and types."""

from pathlib import Path

import pytest

from perfusion_cli.config import ONLINE_SECTION, SECTIONS, GenTrainConfig, build, load_recipe, train_gen_values

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml"))


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"tiny-cpu.toml", "sd15-industrial.toml", "sd15-pickapic.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe
    for section, values in recipe.items():
        if section == ONLINE_SECTION:
            build(GenTrainConfig, train_gen_values(recipe, online=True))
        else:
            build(SECTIONS[section], values)


def test_an_online_run_takes_the_online_sections_keys_over_train_gens(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[train-gen]\nlr = 1e-3\nmax_steps = 400\nkl_weight = 100.0\n\n'
                    '[train-gen-online]\nlr = 2e-3\nkl_weight = 10.0\n')
    recipe = load_recipe(path)
    offline = build(GenTrainConfig, train_gen_values(recipe))
    online = build(GenTrainConfig, train_gen_values(recipe, online=True))
    assert (offline.lr, offline.kl_weight, offline.max_steps) == (1e-3, 100.0, 400)
    assert (online.lr, online.kl_weight, online.max_steps) == (2e-3, 10.0, 400)  # what it leaves out: [train-gen]'s
    path.write_text(path.read_text().replace("[train-gen]\n", "[train-gen]\nonline = true\n"))
    assert build(GenTrainConfig, train_gen_values(load_recipe(path))).lr == 2e-3  # online by the recipe itself
    assert build(GenTrainConfig, train_gen_values(load_recipe(path), online=False)).lr == 1e-3  # --offline


def test_a_bad_key_of_the_online_section_is_named_where_it_is(tmp_path):
    from perfusion_cli.errors import ConfigError

    path = tmp_path / "r.toml"
    path.write_text("[train-gen-online]\nlr = -1.0\n")
    with pytest.raises(ConfigError, match=r"\[train-gen-online\]: key 'lr' must be > 0"):
        load_recipe(path)
    path.write_text("[train-gen-onlin]\nlr = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown section \[train-gen-onlin\] \(known: .*train-gen-online\)"):
        load_recipe(path)


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
