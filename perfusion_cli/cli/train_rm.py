"""``perfusion train-rm``: train PerFusionRM (or a baseline) on prepared data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import boundary
from perfusion_cli.cli.flags import routes, with_flags
from perfusion_cli.cli.training import run_trainer

ROUTES = routes("train-rm", local=options.TRAINING_LOCAL)


@with_flags(options.TRAINING)
@boundary
def train_rm_command(
    ctx: typer.Context,
    data: options.DataDir = None,
    out: options.Out = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="pl (Plackett-Luce) or bt (Bradley-Terry).")] = None,
    plugin: Annotated[Optional[bool], typer.Option(
        "--plugin/--no-plugin", help="--no-plugin: the same CLIP without personalization (baseline).")] = None,
    shared_plugin: Annotated[Optional[bool], typer.Option(
        "--shared-plugin/--separate-plugins", help="One merchant encoder for both towers (ablation).")] = None,
    freeze_backbone: Annotated[Optional[bool], typer.Option(
        "--freeze-backbone/--train-backbone", help="Train only the plug-ins.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate of the plug-ins.")] = None,
    backbone_lr: Annotated[Optional[float], typer.Option("--backbone-lr", help="Learning rate of CLIP.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        "--eval-every", help="Steps between validations (0: none, whatever the recipe says).")] = None,
    init_from: Annotated[Optional[str], typer.Option(
        "--init-from", help="Start from this trained reward model (a run folder): continued training on new "
                            "logs prepared with its vocabulary (prepare LOGS --vocab DATA).")] = None,
    resume: options.Resume = None,
    overwrite: options.Overwrite = False,
    recipe: options.Recipe = None,
    **flags,  # options.TRAINING
) -> None:
    """Train the personalized reward model PerFusionRM (DATA_DIR default: <workspace>/data)."""
    config = context.section(ctx, recipe, "train-rm")
    workspace, data = context.workspace(ctx), context.data_dir(ctx, data)
    from perfusion_cli.training.rm import train_reward_model  # torch: after the checks that need no model

    run_trainer(train_reward_model, config, data, out or workspace.rm_run, resume, overwrite, context.command_line())
