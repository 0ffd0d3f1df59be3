"""Where a training run writes: its run folder, or a staging folder while it replaces an old run.

``--overwrite`` must not destroy the old run before the new one has proved it can start: the new run
writes into ``<run>.overwrite/`` until its first checkpoint (or its end), and only then takes the old
run's place. A run that fails before that leaves the old one untouched (DESIGN §9).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from perfusion_cli.errors import ConfigError
from perfusion_cli.runs import RunDir

STAGING_SUFFIX = ".overwrite"


class TrainingFolder:
    def __init__(self, run_dir: Path, resume: str | None, overwrite: bool, main: bool):
        self.final = RunDir(run_dir)
        self.staging: RunDir | None = None
        self.main = main
        if self.final.root.exists() and not self.final.root.is_dir():
            raise ConfigError(f"--out {self.final.root} is a file, not a folder")
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
        if not self.final.occupied() or resume:
            return
        if not overwrite:
            raise ConfigError(f"{self.final.root} already holds a run: pass --resume latest to continue it, "
                              f"--overwrite to replace it, or --out for another folder")
        self.staging = RunDir(self.final.root.with_name(self.final.root.name + STAGING_SUFFIX))
        if main:
            shutil.rmtree(self.staging.root, ignore_errors=True)

    @property
    def current(self) -> RunDir:
        return self.staging or self.final

    def promote(self) -> None:
        """The new run has a checkpoint: it replaces the old one (called by every process, in step)."""
        if self.staging is None:
            return
        if self.main:
            retired = self.final.root.with_name(f"{self.final.root.name}.replaced-{os.getpid()}")
            os.replace(self.final.root, retired)
            os.replace(self.staging.root, self.final.root)
            shutil.rmtree(retired, ignore_errors=True)
        self.staging = None
