"""The ``perfusion`` command: the app, its global options, and the subcommands (one module each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from perfusion_cli import __version__
from perfusion_cli.cli import bench, env, evaluate, generate, prepare, pretrain, train_gen, train_rm
from perfusion_cli.workspace import ENV_VAR, Workspace

app = typer.Typer(
    name="perfusion", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Personalized text-to-image generation for e-commerce (PerFusionRM + PerFusion).",
)


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
    _quiet_hugging_face()


def _quiet_hugging_face() -> None:
    """Our Rich bars report progress; the libraries' own tqdm bars and info logs would interleave."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


app.command("prepare")(prepare.prepare_command)
app.command("train-rm")(train_rm.train_rm_command)
app.command("train-gen")(train_gen.train_gen_command)
app.add_typer(evaluate.app, name="eval")
app.command("generate")(generate.generate_command)
app.command("bench")(bench.bench_command)
app.command("pretrain-base")(pretrain.pretrain_command)
app.command("env")(env.env_command)


def main() -> None:
    app()
