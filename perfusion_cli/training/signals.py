"""SIGTERM and SIGINT during training: finish the step, checkpoint, exit (DESIGN §9).

Between steps the loop reads ``received``. While the loop waits for data (``interruptible``), a signal
raises ``StopRequested`` at once instead, so a stream that has nothing to give cannot hold a run
hostage; the loop then checkpoints the last completed step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopRequested(BaseException):
    """A stop signal arrived while the loop was waiting for data (a BaseException, like KeyboardInterrupt,
    so that the data pipeline's handlers for damaged samples do not swallow it)."""


class StopSignals:
    NAMES = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("SIGINT", 130)}

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}
        self._interruptible = False

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.NAMES:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        self.received = number
        if self._interruptible:
            self._interruptible = False
            raise StopRequested()

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.received:
            raise StopRequested()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
