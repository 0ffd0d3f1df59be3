"""``perfusion pretrain-base``: train the bundled tiny backbones on the synthetic catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli.cli import context, options
from perfusion_cli.cli.console import RichProgress, boundary, console, fail, say, table
from perfusion_cli.cli.flags import routes
from perfusion_cli.config import ASSETS

ROUTES = routes("pretrain-base", local=("out", "sdxl", "siglip", "flux", "source", "recipe"))


@boundary
def pretrain_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder for tiny-clip/ and tiny-sd/ (--sdxl: tiny-sdxl/).")] = ASSETS,
    sdxl: Annotated[bool, typer.Option("--sdxl", help="Make the tiny SDXL-architecture base from the tiny SD one "
                                                      "in --source (its tiny-clip/ and tiny-sd/).")] = False,
    siglip: Annotated[bool, typer.Option("--siglip", help="Make the tiny SigLIP reward-model base (tiny-siglip/), "
                                                          "with --source's tiny-clip/ tokenizer.")] = False,
    flux: Annotated[bool, typer.Option("--flux", help="Make the tiny FLUX-architecture base (tiny-flux/) with "
                                                      "--source's tiny-clip/ and tiny-sd/'s VAE; --unet-steps "
                                                      "sets its transformer's steps.")] = False,
    source: Annotated[Path, typer.Option(
        "--source", help="Where --sdxl, --siglip and --flux find tiny-clip/ (and tiny-sd/).")] = ASSETS,
    unet_steps: Annotated[Optional[int], typer.Option("--unet-steps", help="Training steps of the tiny U-Net.")] = None,
    vae_steps: Annotated[Optional[int], typer.Option("--vae-steps", help="Training steps of the tiny VAE.")] = None,
    clip_steps: Annotated[Optional[int], typer.Option("--clip-steps", help="Training steps of the tiny CLIP.")] = None,
    images: Annotated[Optional[int], typer.Option("--images", help="Catalogue images to draw.")] = None,
    num_threads: Annotated[Optional[int], typer.Option("--threads", help="Torch CPU threads (default: every core).")] = None,
    seed: options.Seed = None,
    recipe: options.Recipe = None,
) -> None:
    """Pre-train the tiny CLIP, VAE and U-Net that `--base-model tiny` loads (CPU, about two hours);
    with --sdxl, the tiny SDXL base that `--base-model tiny-sdxl` loads; with --siglip, the tiny SigLIP that
    `train-rm --base-model tiny-siglip` loads; with --flux, the tiny FLUX base that `--base-model tiny-flux` loads."""
    from perfusion_cli.training.tiny_bases import pretrain_base, pretrain_sdxl, pretrain_siglip
    from perfusion_cli.training.tiny_flux import pretrain_flux

    if sdxl + siglip + flux > 1:
        raise fail("--sdxl, --siglip and --flux make different bases: pass one of them")
    config = context.section(ctx, recipe, "pretrain-base")
    with RichProgress() as progress:
        if sdxl:
            timings, made = pretrain_sdxl(out, config, source, progress), [out / "tiny-sdxl"]
        elif siglip:
            timings, made = pretrain_siglip(out, config, source, progress), [out / "tiny-siglip"]
        elif flux:
            timings, made = pretrain_flux(out, config, source, progress), [out / "tiny-flux"]
        else:
            timings, made = pretrain_base(out, config, progress), [out / "tiny-clip", out / "tiny-sd"]
    console.print(table("pre-training", ["stage", "seconds"], [[k, v] for k, v in timings.items()]))
    say("wrote " + " and ".join(map(str, made)))
