"""Bounded reads: a client that opens a connection and sends its request slowly, or never finishes it, is cut off.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but waits for ever on a request
whose headers are incomplete (a slowloris holds a connection, a file descriptor and a task with a few bytes
a minute). ``header_deadline(seconds)`` is uvicorn's h11 protocol with one more timer: armed when a
connection opens and whenever it waits for a new request's headers, cancelled once they are complete;
when it fires, the connection is closed. Bodies are bounded in ``app.BodyLimit``, which reads every body
against the same deadline before the route sees it (408 when it does not arrive in time).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_deadline(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``seconds``."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request's headers
                if self._deadline is None and data:
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
