"""The session journal: picks recorded by ``perfusion serve`` as raw logs ``perfusion prepare`` reads (DESIGN §3).

    LOGS/sessions.jsonl    one session a line, appended under a lock, flushed and fsynced before the reply
    LOGS/merchants.jsonl   every merchant a session names, with the profile serve knows, written before
    LOGS/images/<id>.png   each candidate's PNG, written (temporary name, fsync, rename) before the session

The order makes every acknowledged line complete on disk with what it references. A recorded session is
identified by ``session_id``: the same session again writes nothing (a client's retry), a different one
under a recorded id is refused, and so is a candidate recorded again under another session id (the same
images with reversed picks would teach the opposite preference from one generation). A process killed mid-append can leave a last line without its newline;
opening the journal repairs it: a complete JSON object gets its newline back, anything else is moved to
``sessions.jsonl.torn-<time>`` (never acknowledged, so its client retries) and cut off.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from perfusion_cli.data.logs import IMAGES_DIR, MERCHANTS_FILE, SESSIONS_FILE
from perfusion_cli.errors import DataError

LOCK_FILE = ".serve.lock"


class SessionConflict(DataError):
    """A session id already recorded with other content."""


@dataclass(frozen=True)
class Pick:
    """What a merchant did with one generation: the candidates shown (image ids) and those selected."""

    session_id: str
    merchant_id: str
    prompt: str
    candidates: tuple[str, ...]
    selected: frozenset[str]

    def key(self) -> tuple:
        return self.merchant_id, self.prompt, tuple((c, c in self.selected) for c in self.candidates)


def image_path(image_id: str) -> str:
    return f"{IMAGES_DIR}/{image_id}.png"


class SessionJournal:
    """Appends sessions to a logs folder; one journal per folder (a second ``serve`` on it is refused)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_handle.close()
            raise DataError(f"another `perfusion serve` is recording into {self.root}: stop it, or pass "
                            f"another --logs") from None
        self._lock = threading.Lock()
        self.sessions_path = self.root / SESSIONS_FILE
        self.merchants_path = self.root / MERCHANTS_FILE
        self.repair = _repair_tail(self.sessions_path)
        self._recorded = self._read_sessions()
        self._recorded_in = {image: session for session, (_, _, candidates) in self._recorded.items()
                             for image, _ in candidates}  # candidate id → the session that recorded it
        self._per_merchant = Counter(merchant for merchant, _, _ in self._recorded.values())
        self._merchants = self._read_merchant_ids()

    def close(self) -> None:
        fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
        self._lock_handle.close()

    def __len__(self) -> int:
        return len(self._recorded)

    def count(self, merchant_id: str | None = None) -> int:
        """Sessions recorded, in all or for one merchant."""
        return len(self._recorded) if merchant_id is None else self._per_merchant[merchant_id]

    def record(self, pick: Pick, images: dict[str, bytes], profile: dict, recorded_by: str | None = None) -> bool:
        """Write ``pick`` durably; False when this very session is already recorded. ``images`` holds every
        candidate's PNG bytes by id; ``profile`` the merchant's profile (written once per merchant);
        ``recorded_by`` the id of the token that asked, kept in the line (none on an open server)."""
        with self._lock:
            known = self._recorded.get(pick.session_id)
            if known is not None:
                if known != pick.key():
                    raise SessionConflict(f"session_id {pick.session_id!r} is already recorded with other "
                                          f"candidates, picks, merchant or prompt")
                return False
            for image_id in pick.candidates:
                if image_id in self._recorded_in:
                    raise SessionConflict(f"candidate {image_id} is already recorded in session "
                                          f"{self._recorded_in[image_id]!r}: a generation's picks are recorded once")
            for image_id in pick.candidates:
                _write_once(self.root / image_path(image_id), images[image_id])
            _fsync_dir(self.root / IMAGES_DIR)
            if pick.merchant_id not in self._merchants:
                _append_line(self.merchants_path, {"merchant_id": pick.merchant_id, **profile})
                self._merchants.add(pick.merchant_id)
            moment = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            line = {"session_id": pick.session_id, "merchant_id": pick.merchant_id, "prompt": pick.prompt,
                    "timestamp": moment, "candidates": [{"image": image_path(c), "selected": c in pick.selected}
                                                        for c in pick.candidates]}
            if recorded_by is not None:
                line["recorded_by"] = recorded_by
            _append_line(self.sessions_path, line)
            self._recorded[pick.session_id] = pick.key()
            self._per_merchant[pick.merchant_id] += 1
            self._recorded_in.update(dict.fromkeys(pick.candidates, pick.session_id))
            return True

    def _read_sessions(self) -> dict[str, tuple]:
        recorded: dict[str, tuple] = {}
        if not self.sessions_path.exists():
            return recorded
        with open(self.sessions_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                    candidates = [(Path(c["image"]).stem, bool(c["selected"])) for c in row["candidates"]]
                    recorded[str(row["session_id"])] = (str(row["merchant_id"]), row["prompt"], tuple(candidates))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a line edited by hand: prepare quarantines it with its reason
        return recorded

    def _read_merchant_ids(self) -> set[str]:
        ids: set[str] = set()
        if not self.merchants_path.exists():
            return ids
        with open(self.merchants_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    ids.add(str(json.loads(line)["merchant_id"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return ids


def _append_line(path: Path, row: dict) -> None:
    """One line in one write, then flush + fsync; a new file's directory entry is synced too."""
    new = not path.exists()
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(descriptor, data[written:])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if new:
        _fsync_dir(path.parent)


def _write_once(path: Path, data: bytes) -> None:
    """An image under its final name only when complete and synced (temporary name, fsync, rename)."""
    if path.exists():
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _repair_tail(path: Path) -> str | None:
    """Mend a last line without its newline (see the module docstring); says what it did, or None."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return None
        handle.seek(0)
        data = handle.read()
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            complete = isinstance(json.loads(tail.decode("utf-8")), dict)
        except ValueError:
            complete = False
        if complete:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            what = f"{path.name}: its last line had no newline; added"
        else:
            aside = path.with_name(f"{path.name}.torn-{time.time_ns()}")
            aside.write_bytes(tail)
            handle.truncate(cut)
            what = f"{path.name}: a torn last line ({len(tail)} bytes, never acknowledged) moved to {aside.name}"
        handle.flush()
        os.fsync(handle.fileno())
    return what
