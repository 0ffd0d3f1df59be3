"""The ``perfusion`` command: the app, its global options, and the subcommands (one module each).

Nothing here or in the command modules imports torch, diffusers, transformers or webdataset at import
time: ``perfusion --help`` and usage errors answer at once; each command imports what it uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli import __version__
from perfusion_cli.cli import (bench, env, evaluate, export, generate, prepare, pretrain, serve, token, train_gen,
                               train_rm)
from perfusion_cli.cli.flags import register
from perfusion_cli.workspace import ENV_VAR, Workspace

app = typer.Typer(
    name="perfusion", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Personalized text-to-image generation for e-commerce (PerFusionRM + PerFusion).",
)

# Our Rich bars report progress; the libraries' own tqdm bars and info logs would interleave with them.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
         "TOKENIZERS_PARALLELISM": "false"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"perfusion {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", envvar=ENV_VAR, help="Workspace folder (default: the current directory).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    ctx.obj = Workspace.resolve(workdir)
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)


register(app, "prepare", prepare.prepare_command, prepare.ROUTES)
register(app, "train-rm", train_rm.train_rm_command, train_rm.ROUTES)
register(app, "train-gen", train_gen.train_gen_command, train_gen.ROUTES)
app.add_typer(evaluate.app, name="eval")
register(app, "generate", generate.generate_command, generate.ROUTES)
register(app, "bench", bench.bench_command, bench.ROUTES)
register(app, "serve", serve.serve_command, serve.ROUTES)
app.command("export")(export.export_command)
app.add_typer(token.app, name="token")
register(app, "pretrain-base", pretrain.pretrain_command, pretrain.ROUTES)
app.command("env")(env.env_command)


def main() -> None:
    app()
