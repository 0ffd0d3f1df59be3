"""``perfusion prepare``: raw logs or the synthetic marketplace → shards + manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, fail, say, table
from perfusion_cli.cli.flags import routes
from perfusion_cli.config import TINY_RECIPE
from perfusion_cli.environment import available_cores

ROUTES = routes("prepare", local=("logs", "out", "synthetic", "engine", "workers", "vocab", "exclude_token", "latents",
                                  "device", "recipe"),
                synthetic=("merchants", "sessions_per_merchant", "style", "taste", "noise", "seed"),
                train_gen=("base_model", "resolution"))


@boundary
def prepare_command(
    ctx: typer.Context,
    logs: Annotated[Optional[str], typer.Argument(
        help="Logs folder (merchants.jsonl, sessions.jsonl, images), or its fsspec URL (https://, s3://, gs://; "
             "pip install 'perfusion\\[remote]'), or a Pick-a-Pic .parquet file/folder.",
        show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", help="Output folder (default: <workspace>/data), or an fsspec URL (memory://, s3://, …): prepared "
                      "locally, then uploaded, the manifest last.")] = None,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", help="Write the embedded synthetic marketplace to OUT/raw, then prepare it.")] = False,
    format: Annotated[Optional[str], typer.Option("--format", help="logs or pickapic.")] = None,
    min_records: Annotated[Optional[int], typer.Option(
        "--min-records", help="Merchants with fewer valid groups are held out (default 10).")] = None,
    merchants: Annotated[Optional[int], typer.Option("--merchants", help="Synthetic: merchants.")] = None,
    sessions_per_merchant: Annotated[Optional[int], typer.Option(
        "--sessions-per-merchant", help="Synthetic: sessions per merchant.")] = None,
    style: Annotated[Optional[str], typer.Option(
        "--style", help="Synthetic: the renderer, catalogue (what the tiny base learned) or studio.")] = None,
    taste: Annotated[Optional[str], typer.Option(
        "--taste", help="Synthetic: the taste mix, colour, mixed or subtle (harder: colour matters less).")] = None,
    noise: Annotated[Optional[float], typer.Option("--noise", help="Synthetic: noise of the merchants' picks.")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="local (this machine, --workers processes) or ray (a Ray cluster, or a local Ray runtime "
                         "with --workers CPUs; pip install 'perfusion\\[distributed]'); the same output.")] = "local",
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, max=1024, help="Processes that decode the images and write the shards (default: the "
                                           "cores available); the output is the same for any number.")] = None,
    vocab: Annotated[Optional[Path], typer.Option(
        "--vocab", help="Prepared data whose merchant feature vocabulary to keep (so the models trained on it read "
                        "these shards: new logs for continued training); values it lacks map to the unknown id.")] = None,
    exclude_token: Annotated[Optional[list[str]], typer.Option(
        "--exclude-token", help="Hold out the sessions `perfusion serve` recorded under this token id (their "
                                "\"recorded_by\"; `perfusion token list` shows ids); repeat for several.")] = None,
    latents: Annotated[bool, typer.Option(
        "--latents", help="Also store each candidate's VAE latent and the prompt's text embedding in the shards "
                          "(fp16), so train-gen never re-encodes them.")] = False,
    base_model: Annotated[Optional[str], typer.Option(
        "--base-model", help="--latents: the base whose VAE and text encoders encode (SD 1.x, SDXL, SD 3.5, FLUX.1; "
                             "default: the recipe's [train-gen] base_model).")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        "--resolution", help="--latents: image resolution (default: the recipe's [train-gen] resolution).")] = None,
    device: options.Device = None,
    seed: options.Seed = None,
    recipe: options.Recipe = None,
) -> None:
    """Validate raw logs and write WebDataset shards + manifest; bad rows go to quarantine.jsonl.

    With --synthetic in a workspace that has no perfusion.toml (and no --recipe), the tiny CPU recipe is
    written there first, so the everyday commands that follow run on the bundled tiny backbones.
    """
    if synthetic == (logs is not None):
        raise fail("give either LOGS_DIR or --synthetic (one of them)")
    if synthetic and (vocab is not None or engine != "local" or exclude_token):
        raise fail("--vocab, --engine and --exclude-token apply to logs you prepare, not to --synthetic")
    workspace = context.workspace(ctx)
    if synthetic and recipe is None and not workspace.recipe.exists():
        from perfusion_cli.io import atomic_write_text

        atomic_write_text(workspace.recipe, TINY_RECIPE.read_text(encoding="utf-8"))
        say(f"wrote {workspace.recipe} (the tiny CPU recipe: bundled tiny backbones, synthetic marketplace)")
    config = context.section(ctx, recipe, "prepare")
    if not latents and (base_model or resolution or device):
        raise fail("--base-model, --resolution and --device apply with --latents")
    if out is not None and "://" in out and not out.startswith("file://") and (synthetic or latents):
        raise fail("--synthetic and --latents write to a local --out folder (upload it afterwards, or prepare logs "
                   "without them to a URL)")
    generator = context.section(ctx, recipe, "train-gen")
    out = out or workspace.data
    from perfusion_cli.data.manifest import load_manifest
    from perfusion_cli.data.prepare import prepare, prepare_synthetic

    workers = workers or available_cores()
    started = time.perf_counter()
    with RichProgress() as progress:
        if synthetic:
            synthetic_config = context.section(ctx, recipe, "synthetic")
            manifest = prepare_synthetic(out, synthetic_config, config, progress, context.command_line(), workers)
        else:
            kept = load_manifest(vocab).vocab if vocab is not None else None
            manifest = prepare(logs, out, config, progress, context.command_line(), workers, vocab=kept, engine=engine,
                               exclude_tokens=tuple(exclude_token or ()))
        if latents:
            from perfusion_cli.environment import pick_device
            from perfusion_cli.latents import store_latents

            tag = store_latents(out, generator.base_model, generator.resolution, pick_device(device or "auto"),
                                progress=progress)
            manifest = load_manifest(out)
    print_summary(manifest, out, time.perf_counter() - started)
    if latents:
        say(f"stored latents: {tag['base_model']} at {tag['resolution']} px (VAE {tag['vae'][:12]}…, text encoder "
            f"{tag['text_encoder'][:12]}…)")


def print_summary(manifest, out: Path, seconds: float) -> None:
    manifest = manifest.raw
    rows = [[split, info["groups"], info["candidates"], info["merchants"], len(info["shards"])]
            for split, info in manifest["splits"].items()]
    console.print(table("prepared groups", ["split", "groups", "candidates", "merchants", "shards"], rows))
    accounting = manifest["accounting"]
    kept_out = [[f"quarantined: {reason}", count] for reason, count in manifest["quarantine"]["reasons"].items()]
    kept_out += [[f"held out: {reason}", count] for reason, count in manifest["held_out"]["reasons"].items()]
    if kept_out:
        console.print(table("rows kept out", ["reason", "rows"], kept_out))
    say(f"input rows {accounting['session_rows']} = in shards {accounting['in_shards']} + quarantined "
        f"{accounting['quarantined']} + held out {accounting['held_out']}  "
        f"({'balanced' if accounting['balanced'] else 'NOT BALANCED'})")
    say(f"merchants: {manifest['merchants']}; merchant rows quarantined: {accounting['merchants_quarantined']}")
    say(f"wrote {out} in {seconds:.1f} s")
