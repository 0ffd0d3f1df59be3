"""``perfusion eval rm|gen``: metrics tables on screen, ``--json`` for machines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import boundary, console, table
from perfusion_cli.errors import NotImplementedYet
from perfusion_cli.io import atomic_write_json

app = typer.Typer(no_args_is_help=True, help="Evaluate the reward model (rm) or the generator (gen).")


@app.command("rm")
@boundary
def eval_rm_command(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[list[str]], typer.Option(
        "--checkpoint", help="A reward-model run folder, or zero-shot:BASE_MODEL; repeat to compare. "
                             "Default: <workspace>/runs/rm.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    split: Annotated[str, typer.Option("--split", help="test, val, cold_start or train.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    skip_bad_shards: Annotated[bool, typer.Option("--skip-bad-shards")] = False,
    json_out: options.JsonOut = None,
) -> None:
    """MAP and GAUC of reward models on one split."""
    from perfusion_cli.data.shards import load_manifest
    from perfusion_cli.evaluation.ranking import evaluate_reward_model

    workspace = context.workspace(ctx)
    data = data or workspace.data
    load_manifest(data)
    sources = checkpoint or [str(workspace.rm_run)]
    results = [evaluate_reward_model(source, data, split, batch_size, skip_bad_shards=skip_bad_shards)
               for source in sources]
    rows = [[r["model"], r["map"], r["gauc"], r["n_groups"], r["n_merchants"]] for r in results]
    console.print(table(f"reward model on {split}", ["model", "MAP", "GAUC", "groups", "merchants"], rows))
    if json_out:
        atomic_write_json(json_out, results[0] if len(results) == 1 else results)


@app.command("gen")
@boundary
def eval_gen_command() -> None:
    """Not implemented yet: generation metrics (issue 5)."""
    raise NotImplementedYet("`perfusion eval gen` is not implemented yet (issue 5)")
