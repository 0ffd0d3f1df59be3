"""``--help`` that says what a command will do: switches shown as switches, and each flag's default as the recipe
sets it.

Most flags default to "not given": the value then comes from the recipe (``--recipe``, else the workspace's
``perfusion.toml``), else from ``config.py``. A bare ``[default: None]`` would hide that, so a command made with
``recipe_command(routes)`` appends to the help of every flag that sets a recipe key the value it will take
(``default from recipe: 400``, or ``default: 1000`` without a recipe) and shows on/off flags without a type.
Reading the recipe needs no heavy import (``config.py`` is light).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from typer.core import TyperCommand

from perfusion_cli.cli.flags import Routes
from perfusion_cli.config import SECTIONS, build, load_recipe
from perfusion_cli.errors import PerfusionError


def recipe_command(routes: Routes) -> type[TyperCommand]:
    """A Typer command class that carries its ``routes`` (``context.section`` reads them) and whose flags show
    the defaults of the fields they set."""

    class RecipeCommand(TyperCommand):
        def format_help(self, ctx, formatter) -> None:
            defaults, source = _defaults(ctx, routes)
            for param in self.get_params(ctx):
                if param.param_type_name != "option":
                    continue
                if param.is_flag or param.secondary_opts:
                    param.metavar = ""  # a switch: no <bool> beside it
                original = getattr(param, "_plain_help", param.help)
                param._plain_help = original  # format_help may run more than once
                if defaults.get(param.name) is not None and param.default is None:  # None: its help says who decides
                    # parentheses: Rich would read [brackets] as markup and drop them
                    param.help = f"{original or ''} ({source}: {_shown(defaults[param.name])})".strip()
            super().format_help(ctx, formatter)

    RecipeCommand.routes = routes
    return RecipeCommand


def _defaults(ctx, routes: Routes) -> tuple[dict[str, Any], str]:
    """The value each of this command's flags will take when not given, and how to name where it comes from."""
    from perfusion_cli.cli.context import recipe_path

    try:
        path = recipe_path(ctx, ctx.params.get("recipe"))
        recipe = load_recipe(path)
    except PerfusionError:
        path, recipe = None, {}  # a bad recipe is reported when the command runs, not by --help
    configs: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for param in ctx.command.params:
        section = routes.section_of(param.name)
        if section is None:
            continue
        if section not in configs:
            try:
                configs[section] = build(SECTIONS[section], recipe.get(section, {}))
            except PerfusionError:
                configs[section] = SECTIONS[section]()
        values[param.name] = getattr(configs[section], param.name)
    return values, "default from recipe" if path else "default"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if dataclasses.is_dataclass(value):
        return "see the recipe"
    return str(value)
