"""Per-merchant tokens for ``perfusion serve``: which caller may ask and record for which merchant.

    <workspace>/serve/tokens.jsonl   one token a line, file mode 0600:
                                     {"id", "merchant_id", "created", "salt", "sha256", "revoked"?}

A token reads ``<id>.<secret>``. The id names it in ``perfusion token list``, in a revocation and in the
``recorded_by`` of every session it records; the secret (32 random bytes) is printed once by
``perfusion token add`` and kept only as a salted SHA-256 — enough for a random secret, which no
dictionary holds. A revoked token stays in the file (marked, with the time), so it is refused rather than
forgotten. A running server re-reads the file whenever it changes (size, mtime or inode, checked on
every request), so a revocation holds from the next request on.

The operator's token (``serve --token`` / ``PERFUSION_TOKEN``) is not in the file: it acts for every
merchant, and sessions it records say ``"recorded_by": "operator"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from perfusion_cli.errors import ConfigError
from perfusion_cli.io import atomic_path

TOKENS_FILE = "tokens.jsonl"
OPERATOR = "operator"


@dataclass(frozen=True)
class Grant:
    """Who a request acts as: a merchant token's id and merchant, or the operator (``merchant_id`` None)."""

    token_id: str
    merchant_id: str | None

    def allows(self, merchant_id: str) -> bool:
        return self.merchant_id is None or self.merchant_id == merchant_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


class TokenFile:
    """The tokens of one workspace: ``add``, ``rows`` and ``revoke`` for the CLI, ``grant`` for the server."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: tuple | None = None  # (inode, size, mtime) of the file last read
        self._rows: dict[str, dict] = {}
        self._reading = threading.Lock()

    # -- the CLI's side ----------------------------------------------------------------------------------

    def add(self, merchant_id: str) -> str:
        """A new token for ``merchant_id``; returns it (the only time its secret exists outside the caller)."""
        with self._editing() as rows:
            token_id = secrets.token_hex(6)
            while token_id in rows or token_id == OPERATOR:  # pragma: no cover — 48 random bits
                token_id = secrets.token_hex(6)
            secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
            rows[token_id] = {"id": token_id, "merchant_id": merchant_id, "created": _now(), "salt": salt,
                              "sha256": _digest(salt, secret)}
        return f"{token_id}.{secret}"

    def revoke(self, token_id: str) -> dict:
        """Mark a token revoked; ``ConfigError`` when there is none by that id. Returns its row."""
        with self._editing() as rows:
            row = rows.get(token_id)
            if row is None:
                known = ", ".join(sorted(rows)[:8]) or "none yet"
                raise ConfigError(f"no token {token_id!r} in {self.path} (tokens: {known})")
            row.setdefault("revoked", _now())
            return dict(row)

    def rows(self) -> list[dict]:
        """Every token's row, secrets' hashes left out."""
        return [{key: value for key, value in row.items() if key not in ("salt", "sha256")}
                for row in self._read().values()]

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, dict]]:
        """The rows to change in place, written back whole under a lock (``io.atomic_path``: a temporary file,
        created 0600, renamed into place), so two ``perfusion token`` commands at once lose nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = self._read()
            yield rows
            with atomic_path(self.path) as temporary:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    os.fchmod(handle.fileno(), 0o600)  # whatever the umask
                    handle.writelines(json.dumps(row) + "\n" for row in rows.values())

    # -- the server's side -------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether any token was ever made here (a revoked one counts: it must keep being refused)."""
        return bool(self._current())

    def active(self) -> int:
        return sum("revoked" not in row for row in self._current().values())

    def grant(self, presented: str) -> Grant | None:
        """The grant of a presented merchant token, or None when it is unknown, malformed or revoked."""
        token_id, _, secret = presented.partition(".")
        row = self._current().get(token_id)
        if row is None or not secret or "revoked" in row:
            return None
        if not hmac.compare_digest(_digest(row["salt"], secret), row["sha256"]):
            return None
        return Grant(token_id, row["merchant_id"])

    def _current(self) -> dict[str, dict]:
        """The rows, re-read when the file changed since the last look."""
        try:
            status = os.stat(self.path)
            seen = (status.st_ino, status.st_size, status.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        with self._reading:
            if seen != self._seen:
                self._rows, self._seen = self._read(), seen
            return self._rows

    def _read(self) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return rows
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not all(isinstance(row.get(key), str) for key in ("id", "merchant_id", "salt", "sha256")):
                    raise ValueError("a field is missing")
                bytes.fromhex(row["salt"])
            except ValueError as exc:
                raise ConfigError(f"{self.path} line {number} is not a token row ({exc}): the file is written by "
                                  f"`perfusion token`; restore it or remove the line") from None
            rows[row["id"]] = row
        return rows
