"""Where each command's flags go: the config field a flag sets is the field of the same name, checked when the
command is registered.

A command declares its ``Routes``: the config section it builds (``train-gen``), the other sections some of
its flags set (``serve``'s ``--steps`` sets ``[generate] steps``), and its local parameters, which set no
field (folders, ``--overwrite``). ``register`` refuses, at import, a command with a parameter that is
neither local nor a field of its section — a flag renamed away from its field is a ``TypeError`` naming
both, not a value silently dropped — and ``context.section`` builds a section from the parsed flags routed
to it. ``tests/cli/test_flags.py`` holds the other half: every field has a flag or is listed in
``config.RECIPE_ONLY`` (and in docs/recipes.md).

``with_flags`` adds a group of flags declared once (``options.TRAINING``, shared by ``train-rm`` and
``train-gen``) to a command's signature; the command takes them as ``**flags``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from perfusion_cli.config import SECTIONS

LAST = ("resume", "overwrite", "recipe")  # parameters listed after an added group, as on every command


@dataclass(frozen=True)
class Routes:
    section: str  # the section the command builds; a parameter goes here unless local or routed elsewhere
    local: frozenset[str] = frozenset()  # parameters that set no config field
    others: Mapping[str, frozenset[str]] = field(default_factory=dict)  # section → the parameters it takes

    def section_of(self, name: str) -> str | None:
        if name in self.local:
            return None
        return next((section for section, names in self.others.items() if name in names), self.section)

    def given(self, params: Mapping[str, Any], section: str) -> dict[str, Any]:
        """The flags among ``params`` (Click's parsed values) that set fields of ``section``."""
        return {name: value for name, value in params.items() if self.section_of(name) == section}

    def check(self, command: Callable) -> None:
        """Every parameter of ``command`` (but the context) is local or a field of the section it goes to."""
        for name in inspect.signature(command).parameters:
            section = self.section_of(name) if name != "ctx" else None
            if section is not None and name not in fields_of(section):
                raise TypeError(f"{command.__module__}.{command.__name__}: parameter {name!r} sets no field of "
                                f"[{section}] ({SECTIONS[section].__name__}): name it as the field it sets, or "
                                f"declare it local in the command's Routes")


def routes(section: str, local: tuple[str, ...] = (), **others: tuple[str, ...]) -> Routes:
    """``Routes`` written as keywords: ``routes("serve", local=("model",), generate=("steps",))``."""
    return Routes(section, frozenset(local), {name.replace("_", "-"): frozenset(names) for name, names in others.items()})


@functools.cache
def fields_of(section: str) -> frozenset[str]:
    return frozenset(item.name for item in dataclasses.fields(SECTIONS[section]))


def register(app, name: str, command: Callable, command_routes: Routes) -> None:
    """Add ``command`` to the Typer ``app`` under ``name`` after checking its routes (``TypeError`` on drift)."""
    from perfusion_cli.cli.help import recipe_command

    command_routes.check(command)
    app.command(name, cls=recipe_command(command_routes))(command)


def with_flags(flags: Mapping[str, Any]) -> Callable[[Callable], Callable]:
    """Add ``flags`` (name → Typer ``Annotated`` option type, each defaulting to None) to a command's signature,
    before ``--resume`` / ``--overwrite`` / ``--recipe``; the command receives them in its ``**flags``."""

    def decorate(command: Callable) -> Callable:
        own = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for parameter in inspect.signature(command, eval_str=True).parameters.values()
               if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
        clash = set(flags) & {parameter.name for parameter in own}
        if clash:
            raise TypeError(f"{command.__name__} declares {sorted(clash)} itself and through with_flags")
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
                 for name, annotation in flags.items()]
        head = [parameter for parameter in own if parameter.name not in LAST]
        tail = [parameter for parameter in own if parameter.name in LAST]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(head + added + tail)
        return wrapper

    return decorate
