"""What every command needs from the command line: the workspace, the recipe, its sections."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from perfusion_cli.config import SECTIONS, build, load_recipe, recipe_file, train_gen_values
from perfusion_cli.workspace import Workspace


def workspace(ctx: typer.Context) -> Workspace:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, Workspace) else Workspace.resolve()


def recipe_path(ctx: typer.Context, recipe: Path | None) -> Path | None:
    """``--recipe`` (a file or a shipped recipe's name), else the workspace's ``perfusion.toml`` if present."""
    if recipe is not None:
        return recipe_file(recipe)
    default = workspace(ctx).recipe
    return default if default.is_file() else None


def section(ctx: typer.Context, recipe: Path | None, name: str) -> Any:
    """Build the config of section ``name``: defaults < recipe section < the command's flags routed to it
    (``cli/flags.py``; None = not given)."""
    path = recipe_path(ctx, recipe)
    recipe_values = load_recipe(path)
    overrides = ctx.command.routes.given(ctx.params, name)
    values = (train_gen_values(recipe_values, overrides.get("online")) if name == "train-gen"
              else recipe_values.get(name, {}))
    return build(SECTIONS[name], values, overrides, where=f"recipe {path} [{name}]" if path else name)


def data_dir(ctx: typer.Context, data: Path | None, split: str | None = None) -> Path:
    """The prepared data a command reads (default <workspace>/data), checked before anything heavy loads: its
    manifest, and that ``split`` (when given) holds groups."""
    from perfusion_cli.data.manifest import load_manifest

    folder = data or workspace(ctx).data
    manifest = load_manifest(folder)
    if split is not None:
        manifest.require_groups(split)
    return folder


def generator_run(ctx: typer.Context, model: Path | None) -> Path:
    """The generator run a command reads (default <workspace>/runs/gen), or an error naming train-gen."""
    from perfusion_cli.runs import model_folder

    run = model or workspace(ctx).gen_run
    model_folder(run, "generator")
    return run


def with_default_reward(ctx: typer.Context, config: Any) -> Any:
    """A config whose ``reward`` is the one given (flag, then recipe), else the workspace's if it has one."""
    if config.reward is None:
        return dataclasses.replace(config, reward=workspace(ctx).default_reward())
    return config


def command_line() -> str:
    return " ".join(["perfusion", *map(shlex.quote, sys.argv[1:])])
