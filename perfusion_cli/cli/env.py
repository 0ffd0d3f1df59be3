"""``perfusion env``: versions and hardware, for bug reports."""

from __future__ import annotations

from perfusion_cli.cli.console import console, table
from perfusion_cli.environment import describe


def env_command() -> None:
    """Print versions and hardware (paste this into bug reports)."""
    info = describe()
    console.print(table("environment", ["", "value"], [[k, v] for k, v in info.items()]))
