"""Flags and config fields: every flag sets the field of its name, every field has a flag or is recipe-only."""

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer

from perfusion_cli.cli import context
from perfusion_cli.cli.flags import register, routes
from perfusion_cli.cli.main import app
from perfusion_cli.config import RECIPE_ONLY, SECTIONS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def _commands(group, prefix: str = ""):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer carries its own click)
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


COMMANDS = dict(_commands(typer.main.get_command(app)))
CONFIGURED = {name: command for name, command in COMMANDS.items() if hasattr(command, "routes")}


def test_a_flag_renamed_away_from_its_field_is_refused_when_registered():
    def train_gen_command(ctx: typer.Context, group_sizes: Annotated[Optional[int], typer.Option()] = None):
        """A flag that drifted: the field is group_size."""

    with pytest.raises(TypeError, match=r"parameter 'group_sizes' sets no field of \[train-gen\] \(GenTrainConfig\)"):
        register(typer.Typer(), "train-gen", train_gen_command, routes("train-gen"))


def test_every_command_that_reads_a_recipe_declares_its_routes():
    assert set(CONFIGURED) == {"prepare", "train-rm", "train-gen", "generate", "bench", "serve", "pretrain-base",
                               "eval rm", "eval gen"}


@pytest.mark.parametrize("name", sorted(CONFIGURED))
def test_each_flag_is_local_or_names_a_field_of_the_section_it_sets(name):
    command = CONFIGURED[name]
    for param in command.params:
        section = command.routes.section_of(param.name)
        if section is not None:
            assert param.name in {f.name for f in dataclasses.fields(SECTIONS[section])}, (name, param.name)
    assert command.routes.local <= {param.name for param in command.params}, "a local name the command lacks"


def test_every_field_has_a_flag_or_is_recipe_only_and_documented():
    flagged = {section: set() for section in SECTIONS}
    for command in CONFIGURED.values():
        for param in command.params:
            section = command.routes.section_of(param.name)
            if section is not None:
                flagged[section].add(param.name)
    documented = DOCS.read_text(encoding="utf-8")
    for section, config in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(config)}
        recipe_only = RECIPE_ONLY.get(section, frozenset())
        assert fields - flagged[section] == recipe_only, section  # no field without a way to set it
        assert not recipe_only & flagged[section], section  # and no stale recipe-only entry
        row = re.search(rf"^\| `\[{section}\]`[^|]*\|[^|]*\|(.*)$", documented, re.M)
        assert row, f"docs/recipes.md has no row for [{section}]"
        for key in recipe_only:
            assert f"`{key}`" in row.group(1), f"[{section}] {key} is recipe-only but docs/recipes.md does not say so"


def _other_value(config_type, name):
    """A valid value of field ``name`` that differs from its default (None when the type has no obvious one)."""
    field = next(f for f in dataclasses.fields(config_type) if f.name == name)
    default = config_type().__getattribute__(name)
    limits = field.metadata.get("range", {})
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        low = limits.get("ge", limits.get("gt", 0) + 1)
        return default + 1 if default + 1 <= limits.get("le", default + 1) else low
    if isinstance(default, float):
        return default / 2 if default else limits.get("le", 1.0) / 2
    return None


@pytest.mark.parametrize("name", sorted(CONFIGURED))
def test_each_numeric_or_switch_flag_reaches_its_field(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no perfusion.toml: defaults < flags
    command = CONFIGURED[name]
    tried = 0
    for param in command.params:
        section = command.routes.section_of(param.name)
        if section is None:
            continue
        value = _other_value(SECTIONS[section], param.name)
        if value is None:
            continue
        ctx = typer.Context(command)
        ctx.params = {param.name: value}
        assert getattr(context.section(ctx, None, section), param.name) == value, (name, param.name)
        tried += 1
    assert tried, f"{name}: no flag checked"
