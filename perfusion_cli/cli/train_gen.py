"""``perfusion train-gen``: not implemented yet."""

from __future__ import annotations

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet


@boundary
def train_gen_command() -> None:
    """Not implemented yet: PerFusion training (issue 4)."""
    raise NotImplementedYet("`perfusion train-gen` is not implemented yet (PerFusion training (issue 4))")
