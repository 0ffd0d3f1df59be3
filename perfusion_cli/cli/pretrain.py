"""``perfusion pretrain-base``: not implemented yet."""

from __future__ import annotations

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet


@boundary
def pretrain_command() -> None:
    """Not implemented yet: tiny base pre-training (issue 4)."""
    raise NotImplementedYet("`perfusion pretrain-base` is not implemented yet (tiny base pre-training (issue 4))")
