"""``perfusion eval rm|gen``: not implemented yet."""

from __future__ import annotations

import typer

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet

app = typer.Typer(no_args_is_help=True, help="Evaluate the reward model (rm) or the generator (gen).")


@app.command("rm")
@boundary
def eval_rm_command() -> None:
    """Not implemented yet: reward-model metrics (issue 3)."""
    raise NotImplementedYet("`perfusion eval rm` is not implemented yet (issue 3)")


@app.command("gen")
@boundary
def eval_gen_command() -> None:
    """Not implemented yet: generation metrics (issue 5)."""
    raise NotImplementedYet("`perfusion eval gen` is not implemented yet (issue 5)")
