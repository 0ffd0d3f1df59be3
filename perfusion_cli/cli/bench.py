"""``perfusion bench``: latency, memory and throughput of a trained run on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, fail, say, table
from perfusion_cli.cli.flags import routes

ROUTES = routes("bench", local=("model", "data", "reward", "json_out", "recipe", "plan", "merchants", "branch",
                                 "branch_every", "branch_until"))


@boundary
def bench_command(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option("--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward model run (default <workspace>/runs/rm when it exists).")] = None,
    device: options.Device = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps per image.")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", help="Timed repetitions after one warm-up.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Groups per train step.")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="Data-loader workers.")] = None,
    json_out: options.JsonOut = None,
    recipe: options.Recipe = None,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Count what the recipe costs at its real settings, from configs alone (no weights, no GPU).")] = False,
    merchants: Annotated[int, typer.Option(
        "--merchants", min=1, help="With --plan: merchants in the vocabulary (sizes the id embedding).")] = 10_000,
    branch: Annotated[Optional[str], typer.Option(
        "--branch", help="With --plan: the branch kind to count (else the recipe's train-gen branch).")] = None,
    branch_every: options.BranchEvery = None,
    branch_until: options.BranchUntil = None,
) -> None:
    """Seconds per image and peak memory (base vs personalized, per attention backend), train-step
    cost vs Diffusion-DPO (β, loss and group size from the recipe's train-gen section), reward-model
    throughput, data-loader throughput. With --plan: parameters, GFLOPs and peak memory per process of
    the recipe's train-rm, train-gen and generate, counted on the meta device."""
    if plan:
        overrides = {"train-gen": {"branch": branch}, "generate": {"branch_every": branch_every,
                                                                  "branch_until": branch_until}}
        return plan_command(ctx, recipe, merchants, json_out, {section: {k: v for k, v in keys.items() if v is not None}
                                                               for section, keys in overrides.items()})
    if (branch, branch_every, branch_until) != (None, None, None):
        raise fail("--branch, --branch-every and --branch-until apply to --plan (a run knows its branch kind, and "
                   "bench measures every reuse setting)")
    config = context.section(ctx, recipe, "bench")
    train = context.section(ctx, recipe, "train-gen")
    data, run = context.data_dir(ctx, data), context.generator_run(ctx, model)
    reward = reward if reward is not None else context.workspace(ctx).default_reward()
    from perfusion_cli.benchmark import run_bench
    from perfusion_cli.io import atomic_write_json

    with RichProgress() as progress:
        result = run_bench(run, data, config, train, reward, progress=progress, command=context.command_line())
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
    cheap = result["branch_reuse"]
    console.print(table("branch reuse (SDPA)", ["", "s/image", "× base"],
                        [[name, value, cheap["ratio_to_base"][name]] for name, value in cheap["seconds_per_image"].items()]))
    console.print(table("batched generation (requests from different merchants)", ["requests", "one by one img/s",
                                                                                   "batched img/s", "speed-up"],
                        [[k, v["one_by_one_images_per_second"], v["batched_images_per_second"], v["speedup"]]
                         for k, v in result["batched"].items()]))
    step = result["train_step"]
    shared = ([["PerFusion (two full frozen passes)", step["perfusion_two_passes"]["median"]],
               ["ratio two passes / shared", step["ratio_two_passes_vs_shared"]]]
              if "perfusion_two_passes" in step else [])
    console.print(table(f"train step ({step['groups']} groups, {step['candidates']} candidates)", ["", "median s"], [
        ["PerFusion (shared frozen encoder)" if step["shared_encoder"] else "PerFusion (no encoder half to share)",
         step["perfusion_shared_encoder"]["median"]],
        ["Diffusion-DPO (whole denoiser trained)", step["diffusion_dpo"]["median"]],
        ["ratio PerFusion / Diffusion-DPO", step["ratio_perfusion_vs_dpo"]], *shared]))
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


def plan_command(ctx: typer.Context, recipe: Path | None, merchants: int, json_out: Path | None,
                 overrides: dict[str, dict]) -> None:
    path = context.recipe_path(ctx, recipe)
    if path is None:
        raise fail("--plan needs a recipe: --recipe FILE.toml (or a shipped one: --recipe sd15-industrial)")
    from perfusion_cli.io import atomic_write_json
    from perfusion_cli.plan import plan_recipe

    with console.status(f"counting {path} on the meta device"):
        result = plan_recipe(str(path), merchants, overrides=overrides)
    rows = [[job["job"], f"{job['trainable_parameters'] / 1e6:,.1f}M", f"{job['frozen_parameters'] / 1e6:,.1f}M",
             f"{job['gflops']:,.0f}", f"{job['peak_gib']:.2f}",
             job["precision"] + (", ckpt" if job["gradient_checkpointing"] else ""),
             "/".join(card.split()[0] for card, fits in job["fits"].items() if fits) or "none"]
            for job in result["jobs"]]
    console.print(table(f"plan for {path} (per process; counted on the meta device, offline)",
                        ["job", "trainable", "frozen", "GFLOPs", "peak GiB", "precision", "fits (GB)"], rows))
    for job in result["jobs"]:
        say(f"{job['job']}: {job['shape']}" + (f"; {job['notes']}" if job["notes"] else ""))
    for key, value in result["assumptions"].items():
        if key != "merchant_encoder":
            say(f"assumed {key.replace('_', ' ')}: {value}")
    if json_out:
        atomic_write_json(json_out, result)
