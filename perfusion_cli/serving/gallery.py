"""The candidates ``serve`` has shown: each a PNG under an opaque id, with what it was made for.

An id is 32 random hex digits; it names a file only after it matches that pattern, so no request can
name a path. Images stay on disk (``<workspace>/outputs/serve``) so a pick recorded after a restart
still finds the candidates it names; those shown longer ago than ``keep_days`` are removed at start
(a recorded pick has its own copy in the logs).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Shown:
    """What one candidate was generated for."""

    request_id: str
    merchant_id: str
    prompt: str
    seed: int
    score: float | None
    profile: dict | None  # the cold-start features it was made with (None: the prepared data's merchant)


def new_id() -> str:
    return secrets.token_hex(16)


class Gallery:
    def __init__(self, root: Path, keep_days: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pruned = self.prune(keep_days) if keep_days is not None else 0

    def prune(self, keep_days: float) -> int:
        """Remove candidates shown more than ``keep_days`` ago; returns how many."""
        cutoff, removed = time.time() - keep_days * 86400, 0
        for path in self.root.glob("*.json"):
            if _ID.fullmatch(path.stem) and path.stat().st_mtime < cutoff:
                path.with_suffix(".png").unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def add(self, data: bytes, shown: Shown) -> str:
        image_id = new_id()
        _write(self.root / f"{image_id}.png", data)
        _write(self.root / f"{image_id}.json", json.dumps(asdict(shown)).encode("utf-8"))
        return image_id

    def image(self, image_id: str) -> bytes | None:
        if not _ID.fullmatch(image_id):
            return None
        try:
            return (self.root / f"{image_id}.png").read_bytes()
        except OSError:
            return None

    def shown(self, image_id: str) -> Shown | None:
        if not _ID.fullmatch(image_id):
            return None
        try:
            return Shown(**json.loads((self.root / f"{image_id}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
