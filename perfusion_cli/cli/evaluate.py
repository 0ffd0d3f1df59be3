"""``perfusion eval rm|gen``: metrics tables on screen, ``--json`` for machines, ``--report`` for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, say, table
from perfusion_cli.cli.flags import register, routes

app = typer.Typer(no_args_is_help=True, help="Evaluate the reward model (rm) or the generator (gen).")


@boundary
def eval_rm_command(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[list[str]], typer.Option(
        "--checkpoint", help="A reward-model run folder, or zero-shot:BASE_MODEL; repeat to compare. "
                             "Default: <workspace>/runs/rm.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="test, val, cold_start or train.")] = None,
    batch_size: options.BatchSize = None,
    skip_bad_shards: options.SkipBadShards = None,
    device: options.Device = None,
    json_out: options.JsonOut = None,
    recipe: options.Recipe = None,
) -> None:
    """MAP and GAUC of reward models on one split."""
    config = context.section(ctx, recipe, "eval-rm")
    data = context.data_dir(ctx, data, config.split)
    sources = checkpoint or [str(context.workspace(ctx).rm_run)]
    from perfusion_cli.evaluation.rm import evaluate_reward_model
    from perfusion_cli.io import atomic_write_json

    with RichProgress() as progress:
        results = [evaluate_reward_model(source, data, config, progress) for source in sources]
    from perfusion_cli.data.manifest import load_manifest
    from perfusion_cli.evaluation.intervals import attach_intervals

    bounds, meaning = [], {}
    if load_manifest(data).synthetic:  # the oracle, the tastes, the records ceiling, perfect eyes
        from perfusion_cli.evaluation.ceilings import MEANING as meaning, ceilings

        bounds = ceilings(data, config)
    shares_of = ("oracle", "records ceiling", "perfect eyes")
    attach_intervals(results, bounds, shares_of)  # merchant bootstrap, paired across the rows

    def span(values: list[float] | None, scale: float = 1.0, form: str = "{:.3f}", dash: str = "–") -> str:
        return "-" if not values else dash.join(form.format(v * scale) for v in values)

    def shares(row: dict) -> list[str]:  # GAUC as a share of the oracle's, the records ceiling's, perfect eyes'
        cells = []
        for name in shares_of:
            share = row.get("shares", {}).get(name)
            cells.append(f"{share['share']:.0%} ({span(share['interval'], 100, '{:.0f}', ' – ')})" if share else "-")
        return cells

    def with_interval(row: dict) -> str:  # spaces let a narrow terminal wrap the cell rather than cut it
        return f"{row['gauc']:.4f}" + (f" ({span(row['gauc_interval'], dash=' – ')})" if "gauc_interval" in row else "")

    rows = [[r["model"], r["map"], with_interval(r), r["n_groups"], r["n_merchants"]] for r in results + bounds]
    console.print(table(f"reward model on {config.split}", ["model", "MAP", "GAUC", "groups", "merchants"], rows))
    if bounds:  # a second table, so that an 80-column terminal keeps every interval whole
        console.print(table("GAUC as a share of the ceilings", ["model", *(f"of {name}" for name in shares_of)],
                            [[r["model"], *shares(r)] for r in results + bounds]))
    if results and "gauc_interval" in results[0]:
        console.print("  (brackets: 95 % intervals, merchants resampled alike for every row)")
    for bound in bounds:
        console.print(f"  {bound['model']}: {meaning[bound['model']]}")
    for result in results:
        if result["skipped_shards"] or result["skipped_samples"]:
            say(f"{result['model']}: skipped {len(result['skipped_shards'])} unreadable shard(s) and "
                f"{result['skipped_samples']} undecodable sample(s): " + "; ".join(result["skipped_shards"][:3]))
    if json_out:
        # one shape whatever was asked: every model in the order given, then the ceilings ([] on real data)
        atomic_write_json(json_out, {"split": config.split, "models": results, "ceilings": bounds})


@boundary
def eval_gen_command(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option("--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="test, val or cold_start.")] = None,
    n_per_prompt: Annotated[Optional[int], typer.Option("--n-per-prompt", help="Images per pair and model.")] = None,
    max_pairs: Annotated[Optional[int], typer.Option("--max-pairs", help="At most this many pairs.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    seed: options.Seed = None,
    clip_model: Annotated[Optional[str], typer.Option(
        "--clip-model", help="CLIP for CLIP score and FID features (default: tiny for tiny runs, else ViT-L/14).")] = None,
    aesthetic_weights: Annotated[Optional[str], typer.Option(
        "--aesthetic-weights", help="LAION improved-aesthetic-predictor weights (.pth or .safetensors).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward model run (default <workspace>/runs/rm when it exists).")] = None,
    fid_inception: Annotated[Optional[str], typer.Option(
        "--fid-inception", help="Local inception-2015-12-05.pt for Inception FID (else CLIP-feature FID).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML report here.")] = None,
    json_out: options.JsonOut = None,
    device: options.Device = None,
    branch_every: options.BranchEvery = None,
    branch_until: options.BranchUntil = None,
    recipe: options.Recipe = None,
) -> None:
    """Personalized vs base generation on held-out pairs: CLIP, Aesthetic, PerFusionRM, oracle, FID, win rates."""
    config = context.with_default_reward(ctx, context.section(ctx, recipe, "eval-gen"))
    data, run = context.data_dir(ctx, data, config.split), context.generator_run(ctx, model)
    from perfusion_cli.evaluation.gen import evaluate_generator
    from perfusion_cli.io import atomic_write_json

    with RichProgress() as progress:
        summary = evaluate_generator(run, data, config, report, progress)
    print_generation_summary(summary)
    if json_out:
        atomic_write_json(json_out, summary)


def print_generation_summary(summary: dict) -> None:
    metrics = list(summary["win_rate"])
    rows = [[model, *[values[m] if values[m] is not None else "n/a" for m in metrics]]
            for model, values in summary["models"].items()]
    rows.append(["win rate", *[v if v is not None else "n/a" for v in summary["win_rate"].values()]])
    console.print(table(f"generation on {summary['split']}: {summary['pairs']} pairs, {summary['merchants']} "
                        f"merchants, {summary['images_per_pair']} image(s) each", ["", *metrics], rows))
    spans = summary.get("intervals", {})
    if spans:
        say("PerFusion − base per pair, with 95 % intervals (merchants resampled):")
        for metric, span in spans.items():
            wins = (f", wins {summary['win_rate'][metric]:.2f} ({span['win_rate_interval'][0]:.2f} – "
                    f"{span['win_rate_interval'][1]:.2f})" if "win_rate_interval" in span else "")
            console.print(f"  {metric} {span['gain']:+.3f} ({span['gain_interval'][0]:+.3f} – "
                          f"{span['gain_interval'][1]:+.3f}){wins}")
    fid = summary["fid"]
    if "base" in fid:
        say(f"FID ({fid['features']}; {fid['generated_images']} generated vs {fid['reference_images']} "
            f"reference images): base {fid['base']:.3f}, PerFusion {fid['perfusion']:.3f}")
    else:
        say(f"FID: n/a — {fid['unavailable']}")
    denoising = summary.get("denoising", {})
    if "ratio" in denoising:
        say(f"denoising error on {denoising['groups']} held-out groups: PerFusion {denoising['model_err']:.4f}, "
            f"reference {denoising['ref_err']:.4f} (×{denoising['ratio']:.2f})")
    kept = summary.get("kept_quality", {})
    if kept:
        shown = {k: v for k, v in kept.items() if v is not None}
        say("taste gain at kept quality: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in shown.items()))
    for metric, reason in summary["unavailable"].items():
        say(f"{metric}: n/a — {reason}")
    if summary.get("report"):
        say(f"report: {summary['report']}")


register(app, "rm", eval_rm_command, routes("eval-rm", local=("checkpoint", "data", "json_out", "recipe")))
register(app, "gen", eval_gen_command, routes("eval-gen", local=("model", "data", "report", "json_out", "recipe")))
