"""``perfusion bench``: not implemented yet."""

from __future__ import annotations

from perfusion_cli.cli.console import boundary
from perfusion_cli.errors import NotImplementedYet


@boundary
def bench_command() -> None:
    """Not implemented yet: benchmarks (issue 5)."""
    raise NotImplementedYet("`perfusion bench` is not implemented yet (benchmarks (issue 5))")
