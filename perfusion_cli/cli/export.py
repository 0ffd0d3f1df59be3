"""``perfusion export``: the trained adapter for stock diffusers pipelines (``export.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context
from perfusion_cli.cli.console import boundary, say


@boundary
def export_command(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="Generator run (default <workspace>/runs/gen).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Prepared data whose merchants get embeddings (default <workspace>/data).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Default <workspace>/outputs/export.")] = None,
) -> None:
    """Write the adapter in diffusers' IP-Adapter format, every merchant's embedding, the merchant encoder and a
    model card: a stock diffusers pipeline then personalizes with load_ip_adapter + ip_adapter_image_embeds."""
    run = context.generator_run(ctx, model)
    from perfusion_cli.export import require_exportable

    require_exportable(run)  # a ControlNet/XS run: one line before the data or any weight is read
    data = context.data_dir(ctx, data)
    from perfusion_cli.export import export_generator

    exported = export_generator(run, data, out or context.workspace(ctx).outputs / "export")
    say(f"exported {exported.layers} cross-attention layers and {exported.merchants} merchant embeddings of "
        f"{exported.base_model} to {exported.folder} (README.md shows how to load them in diffusers)")
