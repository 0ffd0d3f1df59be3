"""``perfusion bench``: latency, memory and throughput of a trained run on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, say, table
from perfusion_cli.io import atomic_write_json


@boundary
def bench_command(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option("--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward model run (default <workspace>/runs/rm when it exists).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps per image.")] = 30,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions after one warm-up.")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Groups per train step.")] = 4,
    group_size: Annotated[int, typer.Option("--group-size")] = 5,
    num_workers: Annotated[int, typer.Option("--num-workers", help="Data-loader workers.")] = 0,
    json_out: options.JsonOut = None,
) -> None:
    """Seconds per image and peak memory (base vs personalized, per attention backend), train-step
    cost vs Diffusion-DPO, reward-model throughput, data-loader throughput."""
    from perfusion_cli.bench import run_bench
    from perfusion_cli.data.shards import load_manifest
    from perfusion_cli.workspace import require_run

    workspace = context.workspace(ctx)
    data = data or workspace.data
    load_manifest(data)
    run = require_run(model or workspace.gen_run, "train-gen")
    if reward is None and (workspace.rm_run / "run.json").is_file():
        reward = str(workspace.rm_run)
    progress = RichProgress()
    try:
        result = run_bench(run, data, device, reward, steps, repeats, batch_size, group_size, num_workers,
                           progress=progress, command=context.command_line())
    finally:
        progress.stop()
    print_bench(result)
    if json_out:
        atomic_write_json(json_out, result)


def print_bench(result: dict) -> None:
    generation = result["generation"]
    rows = []
    for backend, entry in generation["backends"].items():
        rows.append([backend, entry["base"]["median"], entry["personalized"]["median"], entry["latency_ratio"],
                     entry["base"]["peak_mb"], entry["personalized"]["peak_mb"], entry["memory_ratio"]])
    console.print(table(f"generation on {result['device']} ({generation['resolution']} px, {generation['steps']} "
                        f"steps; memory: {next(iter(generation['backends'].values()))['base']['kind']}, MB)",
                        ["attention", "base s/img", "PerFusion s/img", "ratio", "base MB", "PerFusion MB",
                         "ratio"], rows))
    if "xformers" in generation:
        say(f"xformers: {generation['xformers']}")
    step = result["train_step"]
    console.print(table(f"train step ({step['groups']} groups, {step['candidates']} candidates)", ["", "median s"], [
        ["PerFusion (shared frozen encoder)", step["perfusion_shared_encoder"]["median"]],
        ["PerFusion (two full frozen passes)", step["perfusion_two_passes"]["median"]],
        ["Diffusion-DPO (whole U-Net trained)", step["diffusion_dpo"]["median"]],
        ["ratio PerFusion / Diffusion-DPO", step["ratio_perfusion_vs_dpo"]],
        ["ratio two passes / shared", step["ratio_two_passes_vs_shared"]]]))
    reward = result["reward"]
    if "unavailable" in reward:
        say(f"reward model: n/a — {reward['unavailable']}")
    else:
        console.print(table("reward-model scoring", ["", "candidates/s"], [
            ["PerFusionRM", reward["perfusionrm"]["candidates_per_second"]],
            ["same CLIP without plug-ins", reward["clip_without_plugins"]["candidates_per_second"]],
            ["ratio", reward["throughput_ratio"]]]))
    loader = result["loader"]
    console.print(table("data loader", ["", "groups/s"], [
        [f"loader ({loader['num_workers']} workers)", loader["groups_per_second"]],
        ["a train step consumes", loader["train_step_consumes_groups_per_second"]],
        ["headroom (loader / consumption)", loader["loader_headroom"]]]))
    say(f"total {result['seconds']:.1f} s")
