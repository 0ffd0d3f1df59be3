"""Terminal output for the CLI: the error boundary, Rich progress bars and tables.

Everything printed goes through ``printable``: ids, prompts and paths come from users' data, and an ANSI
escape in a merchant id must reach the terminal as the text ``\x1b``, not as a command to it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import re
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from perfusion_cli.errors import PerfusionError

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # control characters but tab and newline


def printable(text: str) -> str:
    """``text`` with every control character (ESC, BEL, CR, NUL, C1 …) written as its escape, e.g. ``\x1b``."""
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)


class SafeConsole(Console):
    """A Rich console whose printed strings pass through ``printable``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = SafeConsole()
err_console = SafeConsole(stderr=True)


def say(message: str) -> None:
    """A plain line on stdout: no Rich markup or highlighting (messages may contain [brackets])."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print("[bold red]error:[/bold red] " + escape(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Library errors become one red line and exit 1; Ctrl-C becomes exit 130, never a traceback.

    An ``OSError`` that reaches here is about the machine or a path the user gave (a full disk, a
    read-only folder, a name too long): it is reported the same way, with the file it concerns.
    """
    try:
        yield
    except PerfusionError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except OSError as exc:
        if exc.errno is None:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        hint = " — free some space and run the command again" if exc.errno == errno.ENOSPC else ""
        raise fail(f"{exc.strerror or exc}{where}{hint}") from None


def boundary(function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return function(*args, **kwargs)

    return wrapper


class RichProgress:
    """The library's Progress protocol drawn with Rich: a bar when the total is known, else a spinner."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: int | None = None) -> None:
        self.stop()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=err_console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(printable(description), total=total, status="")

    def advance(self, amount: int = 1, **fields: float | str) -> None:
        if self._progress is None:
            return
        status = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if status:
            self._progress.update(self._task, advance=amount, status=status)
        else:
            self._progress.update(self._task, advance=amount)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()  # whatever happened: the terminal gets its cursor and line back

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            err_console.print(message, highlight=False, markup=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    result = Table(title=printable(title), title_justify="left", show_lines=False)
    for index, column in enumerate(columns):
        result.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        result.add_row(*[_cell(value) for value in row])
    return result


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(str(value))
