"""What every command needs from the command line: the workspace and the recipe."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, TypeVar

import typer

from perfusion_cli.config import build, load_recipe, SECTIONS
from perfusion_cli.workspace import Workspace

T = TypeVar("T")


def workspace(ctx: typer.Context) -> Workspace:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, Workspace) else Workspace.resolve()


def recipe_path(ctx: typer.Context, recipe: Path | None) -> Path | None:
    if recipe is not None:
        return recipe
    default = workspace(ctx).recipe
    return default if default.is_file() else None


def section(ctx: typer.Context, recipe: Path | None, name: str, overrides: dict[str, Any]) -> Any:
    """Build the config of section ``name``: defaults < recipe section < flags (None = not given)."""
    path = recipe_path(ctx, recipe)
    values = load_recipe(path).get(name, {})
    return build(SECTIONS[name], values, overrides, where=f"recipe {path} [{name}]" if path else "flags")


def command_line() -> str:
    return " ".join(["perfusion", *map(shlex.quote, sys.argv[1:])])
