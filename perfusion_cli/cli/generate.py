"""``perfusion generate``: not implemented yet."""

from __future__ import annotations

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet


@boundary
def generate_command() -> None:
    """Not implemented yet: generation (issue 4)."""
    raise NotImplementedYet("`perfusion generate` is not implemented yet (generation (issue 4))")
