"""``perfusion train-gen``: train PerFusion (the personalized branch) with group-level DPO."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import boundary
from perfusion_cli.cli.training import run_trainer
from perfusion_cli.data.shards import load_manifest


@boundary
def train_gen_command(
    ctx: typer.Context,
    data: options.DataDir = None,
    out: options.Out = None,
    group_size: Annotated[Optional[int], typer.Option("--group-size", help="Candidates per group (K).")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="DPO β (5000 for SD 1.5, Diffusion-DPO's).")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="group (Plackett-Luce) or pairwise.")] = None,
    positives: Annotated[Optional[str], typer.Option(
        "--positives", help="labels (the logged selections) or reward (PerFusionRM's top-k).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward-model run for --positives reward (default <workspace>/runs/rm).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Positives per group with --positives reward.")] = None,
    base_model: options.BaseModel = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr")] = None,
    batch_size: options.BatchSize = None,
    max_steps: options.MaxSteps = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum")] = None,
    mixed_precision: options.MixedPrecision = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    attention: Annotated[Optional[str], typer.Option("--attention", help="sdpa or xformers.")] = None,
    share_encoder: Annotated[Optional[bool], typer.Option(
        "--share-encoder/--no-share-encoder", help="One frozen encoder pass for ε_θ and ε_ref.")] = None,
    cache_latents: Annotated[Optional[bool], typer.Option("--cache-latents/--no-cache-latents")] = None,
    checkpoint_every: options.CheckpointEvery = None,
    keep_last: options.KeepLast = None,
    seed: options.Seed = None,
    skip_bad_shards: options.SkipBadShards = None,
    resume: options.Resume = None,
    overwrite: options.Overwrite = False,
    recipe: options.Recipe = None,
) -> None:
    """Train the personalized diffusion model PerFusion (DATA_DIR default: <workspace>/data)."""
    from perfusion_cli.training.gen import train_generator

    workspace = context.workspace(ctx)
    data = data or workspace.data
    load_manifest(data)
    if positives == "reward" and reward is None:
        reward = str(workspace.rm_run)
    config = context.section(ctx, recipe, "train-gen", {
        "group_size": group_size, "beta": beta, "loss": loss, "positives": positives, "reward": reward,
        "top_k": top_k, "base_model": base_model, "resolution": resolution, "lr": lr, "batch_size": batch_size,
        "max_steps": max_steps, "grad_accum": grad_accum, "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing, "attention": attention, "share_encoder": share_encoder,
        "cache_latents": cache_latents, "checkpoint_every": checkpoint_every, "keep_last": keep_last, "seed": seed,
        "skip_bad_shards": skip_bad_shards})
    run_trainer(train_generator, config, data, out or workspace.gen_run, resume, overwrite, context.command_line())
