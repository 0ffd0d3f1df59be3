"""``perfusion train-rm``: not implemented yet."""

from __future__ import annotations

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet


@boundary
def train_rm_command() -> None:
    """Not implemented yet: PerFusionRM training (issue 3)."""
    raise NotImplementedYet("`perfusion train-rm` is not implemented yet (PerFusionRM training (issue 3))")
