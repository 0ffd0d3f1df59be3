"""``perfusion generate --merchant ID "PROMPT"``: images in a merchant's taste."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, fail, say, table
from perfusion_cli.cli.flags import routes


MAX_TABLES = 8  # a --requests run prints the tables of its last requests; every folder is logged as written

ROUTES = routes("generate", local=("prompt", "merchant", "requests", "features", "model", "data", "out", "recipe"))


@boundary
def generate_command(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(help="What to design, e.g. \"linen dress\".",
                                                    show_default=False)] = None,
    merchant: Annotated[Optional[str], typer.Option("--merchant", help="Merchant id (from the prepared data).")] = None,
    requests: Annotated[Optional[Path], typer.Option(
        "--requests", help="JSONL of {\"merchant\", \"prompt\", \"n\", \"seed\"}: many requests, the pipeline loaded once, "
                           "batched across merchants.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Images to generate.")] = None,
    seed: options.Seed = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution", help="Default: the training resolution.")] = None,
    rerank: Annotated[Optional[bool], typer.Option("--rerank/--no-rerank", help="Order by PerFusionRM score.")] = None,
    personalization: Annotated[Optional[bool], typer.Option(
        "--personalization/--no-personalization", help="--no-personalization: the base model, same seeds.")] = None,
    cold_start: Annotated[Optional[str], typer.Option(
        "--cold-start", help="For an unknown merchant: mean, or features (with --features).")] = None,
    features: Annotated[Optional[list[str]], typer.Option(
        "--features", help="key=value profile for --cold-start features (repeat, or space/comma separated).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data (default <workspace>/data).")] = None,
    reward: Annotated[Optional[str], typer.Option(
        "--reward", help="Reward model for scores/--rerank (default <workspace>/runs/rm when it exists).")] = None,
    out: options.Out = None,
    device: options.Device = None,
    branch_every: options.BranchEvery = None,
    branch_until: options.BranchUntil = None,
    recipe: options.Recipe = None,
) -> None:
    """Generate product designs for one merchant (--merchant ID "PROMPT") or for many (--requests FILE.jsonl);
    PNGs + metadata.json, one folder per request."""
    if (requests is None) == (merchant is None or prompt is None):
        raise fail('give --merchant ID "PROMPT", or --requests FILE.jsonl (one of them)')
    config = context.with_default_reward(ctx, context.section(ctx, recipe, "generate"))
    data, run = context.data_dir(ctx, data), context.generator_run(ctx, model)
    if features and config.cold_start != "features":
        raise fail("--features only applies with --cold-start features")
    from perfusion_cli.data.merchants import COLD_START_ADVICE, read_merchants, require_known
    from perfusion_cli.data.requests import checked_request, read_requests

    # everything that needs no model is checked before torch loads: the requests, and that each merchant is known
    todo = (read_requests(requests, config.n, config.seed) if requests
            else [checked_request(merchant, prompt, config.n, config.seed)])
    if not config.cold_start:
        known = read_merchants(data)
        for request in todo:
            require_known(request.merchant, known, data, COLD_START_ADVICE)
    from perfusion_cli.data.manifest import load_manifest
    from perfusion_cli.environment import pick_device
    from perfusion_cli.designer import Designer
    from perfusion_cli.preflight import check_generation

    per_call = min(config.batch_size, sum(request.n for request in todo))
    check_generation(run, config, load_manifest(data).vocab, per_call, pick_device(config.device))

    shown = []
    with RichProgress() as progress:
        designer = Designer(run, data, config, progress)
        for metadata in designer.serve(todo, out or context.workspace(ctx).outputs, features):
            if len(todo) > 1:
                progress.log(f"wrote {metadata['folder']}")  # each request as it finishes
            shown.append(metadata)
    for metadata in shown[-MAX_TABLES:]:
        rows = [[image["file"], image["seed"], "-" if image["reward"] is None else image["reward"],
                 "-" if image["oracle"] is None else image["oracle"]] for image in metadata["images"]]
        kind = "personalized" if metadata["personalized"] else "base model"
        console.print(table(f"{metadata['merchant']}: {metadata['prompt']!r} ({kind})",
                            ["image", "seed", "PerFusionRM", "oracle"], rows))
        say(f"wrote {metadata['folder']}")
    if len(shown) > MAX_TABLES:
        say(f"{len(shown)} requests written; the tables above are the last {MAX_TABLES}")
