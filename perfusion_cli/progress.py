"""Progress reporting without a UI dependency: library code reports, the CLI draws (with Rich)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1, **fields: float | str) -> None: ...

    def stop(self) -> None: ...

    def log(self, message: str) -> None: ...


class NullProgress:
    """Reports nothing; the default for library calls and tests."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1, **fields: float | str) -> None:
        pass

    def stop(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass
