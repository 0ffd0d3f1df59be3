"""The workspace: one folder whose fixed layout gives every command its defaults (DESIGN §2).

    <workspace>/perfusion.toml   the workspace recipe, read when no --recipe is given
                                 (``prepare --synthetic`` writes the tiny recipe here when it is missing)
    <workspace>/data/            prepared data           (perfusion prepare)
    <workspace>/runs/rm/         the reward model        (perfusion train-rm)
    <workspace>/runs/gen/        the generator           (perfusion train-gen)
    <workspace>/outputs/         images and reports      (perfusion generate, eval; serve's candidates)
    <workspace>/logs/            raw logs                (perfusion serve records picks; prepare reads them)
    <workspace>/serve/tokens.jsonl  merchant tokens      (perfusion token add; serve checks them)

The workspace is ``--workdir``, else ``$PERFUSION_HOME``, else the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from perfusion_cli.runs import has_model

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

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tokens(self) -> Path:
        return self.root / "serve" / "tokens.jsonl"

    def default_reward(self) -> str | None:
        """The workspace's reward model when one has been trained (commands score with it if it is there)."""
        return str(self.rm_run) if has_model(self.rm_run, "reward") else None
