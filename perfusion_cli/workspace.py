"""The workspace: one folder whose fixed layout gives every command its defaults (DESIGN §2).

    <workspace>/perfusion.toml   optional workspace recipe, read when no --recipe is given
    <workspace>/data/            prepared data           (perfusion prepare)
    <workspace>/runs/rm/         the reward model        (perfusion train-rm)
    <workspace>/runs/gen/        the generator           (perfusion train-gen)
    <workspace>/outputs/         images and reports      (perfusion generate, eval)

The workspace is ``--workdir``, else ``$PERFUSION_HOME``, else the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from perfusion_cli.errors import CheckpointError

ENV_VAR = "PERFUSION_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, workdir: str | Path | None = None) -> "Workspace":
        chosen = workdir or os.environ.get(ENV_VAR) or os.getcwd()
        return cls(Path(chosen).expanduser().resolve())

    @property
    def recipe(self) -> Path:
        return self.root / "perfusion.toml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def rm_run(self) -> Path:
        return self.root / "runs" / "rm"

    @property
    def gen_run(self) -> Path:
        return self.root / "runs" / "gen"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"


def require_run(path: Path, command: str) -> Path:
    """A finished run folder (or its model/ folder), or an error naming the command that makes it."""
    path = Path(path)
    if not (path / "run.json").is_file() and not (path.parent / "run.json").is_file():
        raise CheckpointError(f"no trained model in {path} — run `perfusion {command}` first")
    return path
