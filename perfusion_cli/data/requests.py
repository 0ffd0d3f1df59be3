"""Generation requests: one merchant's prompt, ``n`` images from seeds ``seed``, ``seed + 1``, ….

``perfusion generate`` builds one from ``--merchant ID "PROMPT"`` or reads many from ``--requests FILE.jsonl``
(one ``{"merchant", "prompt", "n"?, "seed"?}`` a line); ``serve`` builds one per HTTP ask. Every request is
checked here, before any model loads: the merchant id in its canonical form (``identifiers``), a prompt that is
not empty, ``n`` in 1..``MAX_N``, and seeds that stay in 0..``MAX_SEED`` up to the last image's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from perfusion_cli.config import MAX_SEED
from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.records import RowError, check_text
from perfusion_cli.errors import ConfigError, DataError

MAX_N = 256
MAX_REQUESTS = 100_000  # lines of one --requests file


@dataclass(frozen=True)
class Request:
    """One merchant's prompt: ``n`` images from seeds ``seed``, ``seed + 1``, …"""

    merchant: str
    prompt: str
    n: int
    seed: int


def checked_request(merchant: object, prompt: object, n: object, seed: object) -> Request:
    """A ``Request`` from loosely typed values; ConfigError saying what is wrong."""
    try:
        merchant_id = canonical_id(merchant, "merchant")
        if not isinstance(prompt, str):
            raise RowError("bad_type", "the prompt must be a string")
        check_text(prompt)
    except RowError as exc:
        raise ConfigError(exc.detail) from None
    if not prompt.strip():
        raise ConfigError("the prompt must not be empty")
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not 1 <= n <= MAX_N:
        raise ConfigError(f"n must be in 1..{MAX_N}, got {n}")
    if not 0 <= seed <= MAX_SEED - (n - 1):
        raise ConfigError(f"seed must be in 0..{MAX_SEED - (n - 1)} so that the last image's seed (seed + n − 1) "
                          f"stays ≤ {MAX_SEED}, got {seed}")
    return Request(merchant_id, prompt, n, seed)


def read_requests(path: Path, n: int, seed: int) -> list[Request]:
    """``--requests FILE.jsonl`` (``n`` and ``seed``: the defaults of a line without them); a bad line is an error
    naming it, and nothing is generated until every line is valid."""
    requests = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "merchant" not in row or "prompt" not in row:
                raise ConfigError("expected {\"merchant\", \"prompt\", \"n\"?, \"seed\"?}")
            requests.append(checked_request(row["merchant"], row["prompt"], row.get("n", n), row.get("seed", seed)))
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path} line {number}: not JSON ({type(exc).__name__}: {exc})") from None
        except ConfigError as exc:
            raise DataError(f"{path} line {number}: {exc}") from None
        if len(requests) > MAX_REQUESTS:
            raise DataError(f"{path} holds more than {MAX_REQUESTS} requests: split it")
    if not requests:
        raise DataError(f"{path} holds no request")
    return requests
