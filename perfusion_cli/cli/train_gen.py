"""``perfusion train-gen``: train PerFusion (the personalized branch) with group-level DPO."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import boundary
from perfusion_cli.cli.flags import routes, with_flags
from perfusion_cli.cli.training import run_trainer

ROUTES = routes("train-gen", local=options.TRAINING_LOCAL)


@with_flags(options.TRAINING)
@boundary
def train_gen_command(
    ctx: typer.Context,
    data: options.DataDir = None,
    out: options.Out = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="DPO β (5000 for SD 1.5, Diffusion-DPO's).")] = None,
    branch: Annotated[Optional[str], typer.Option(
        "--branch", help="controlnet (PerFusion's), xs (a thin ControlNet) or adapter (merchant tokens).")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="group (Plackett-Luce) or pairwise.")] = None,
    sft_weight: Annotated[Optional[float], typer.Option(
        "--sft-weight", help="λ of an SFT anchor on the positives (keeps the model near the base).")] = None,
    kl_weight: Annotated[Optional[float], typer.Option(
        "--kl-weight", help="κ of κ·‖ε_θ − ε_ref‖² on every candidate (the per-step KL to the base, as DPOK).")] = None,
    safeguard: Annotated[Optional[float], typer.Option(
        "--safeguard", help="μ of the winner-preserving rule: scale the negatives' gradient so the positives' "
                            "error does not rise (Diffusion-SDPO; 0 is the plain bound).")] = None,
    positives: Annotated[Optional[str], typer.Option(
        "--positives", help="labels (the logged selections) or reward (PerFusionRM's top-k).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward-model run for --positives reward and --online (default <workspace>/runs/rm).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Positives per group with --positives reward.")] = None,
    online: Annotated[Optional[bool], typer.Option(
        "--online/--offline", help="Train on groups drawn from the current model and ranked by the reward model "
                                   "(on-policy), instead of the logged groups.")] = None,
    online_mix: Annotated[Optional[float], typer.Option(
        "--online-mix", help="With --online: the share of steps that train on the logged groups instead.")] = None,
    online_warmup: Annotated[Optional[int], typer.Option(
        "--online-warmup", help="With --online: the first N steps train on the logged groups only.")] = None,
    online_beta: Annotated[Optional[float], typer.Option(
        "--online-beta", help="With --online: β of the on-policy steps (default: --beta's).")] = None,
    online_sft_weight: Annotated[Optional[float], typer.Option(
        "--online-sft-weight", help="With --online: the SFT weight of the on-policy steps (default: --sft-weight's).")
    ] = None,
    online_kl_weight: Annotated[Optional[float], typer.Option(
        "--online-kl-weight", help="With --online: the KL weight of the on-policy steps (default: --kl-weight's).")
    ] = None,
    sample_steps: Annotated[Optional[int], typer.Option(
        "--sample-steps", help="With --online: DDIM steps per drawn candidate.")] = None,
    sample_eta: Annotated[Optional[float], typer.Option(
        "--sample-eta", help="With --online: the draws' noise η (0 deterministic; U-Nets: DDIM's η, 1 DDPM-like; "
                             "flow transformers: the stochastic flow step's, Flow-GRPO's 0.7).")] = None,
    sample_guidance: Annotated[Optional[float], typer.Option(
        "--sample-guidance", help="With --online: classifier-free guidance of the draws.")] = None,
    probe_every: Annotated[Optional[int], typer.Option(
        "--probe-every", help="With --online: probe for reward hacking every N steps (0: no guard).")] = None,
    probe_pairs: Annotated[Optional[int], typer.Option(
        "--probe-pairs", help="(merchant, prompt) pairs of the hacking probe.")] = None,
    judge: Annotated[Optional[str], typer.Option(
        "--judge", help="A second reward-model run the guard judges with (e.g. trained on another seed).")] = None,
    judge_clip: Annotated[Optional[str], typer.Option(
        "--judge-clip", help="The CLIP model of the guard's prompt score (default: tiny for tiny bases, else "
                             "openai/clip-vit-large-patch14).")] = None,
    stop_on_hacking: Annotated[Optional[bool], typer.Option(
        "--stop-on-hacking/--warn-on-hacking", help="End the run when the guard finds reward hacking (exit 3), "
                                                    "keeping the last good probe's weights.")] = None,
    resolution: options.Resolution = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate of the branch.")] = None,
    attention: options.Attention = None,
    share_encoder: Annotated[Optional[bool], typer.Option(
        "--share-encoder/--no-share-encoder", help="One frozen encoder pass for ε_θ and ε_ref.")] = None,
    cache_latents: Annotated[Optional[bool], typer.Option(
        "--cache-latents/--no-cache-latents", help="Encode each image's VAE latent once and keep it in memory.")] = None,
    stored_latents: Annotated[Optional[bool], typer.Option(
        "--stored-latents/--no-stored-latents",
        help="Use the latents prepare --latents stored in the shards (default when the data has them).")] = None,
    resume: options.Resume = None,
    overwrite: options.Overwrite = False,
    recipe: options.Recipe = None,
    **flags,  # options.TRAINING
) -> None:
    """Train the personalized diffusion model PerFusion (DATA_DIR default: <workspace>/data)."""
    config = context.section(ctx, recipe, "train-gen")
    workspace, data = context.workspace(ctx), context.data_dir(ctx, data)
    from perfusion_cli.online.task import train_generator  # torch: after the checks that need no model

    if (config.positives == "reward" or config.online) and config.reward is None:
        config = dataclasses.replace(config, reward=str(workspace.rm_run))
    run_trainer(train_generator, config, data, out or workspace.gen_run, resume, overwrite, context.command_line())
