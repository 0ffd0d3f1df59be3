"""What reading raw input produces: validated groups, rejected rows, held-out rows.

Every input row becomes exactly one of these, which is what makes the accounting identity
(input rows = rows in shards + quarantined + held out) hold by construction (DESIGN §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class GroupRecord:
    """A valid group of candidates. Images are references the source can read back (no bytes here)."""

    row: int
    session_id: str
    merchant_id: str
    prompt: str
    timestamp: float
    images: tuple[str, ...]
    selected: tuple[bool, ...]


@dataclass(frozen=True)
class Rejection:
    """A bad row, bound for ``quarantine.jsonl``. ``reason`` is one of the codes below."""

    file: str
    row: int
    reason: str
    detail: str = ""
    raw: str = ""

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.row, "reason": self.reason, "detail": self.detail,
                "raw": self.raw}


@dataclass(frozen=True)
class HeldOut:
    """A valid row kept out of the shards on purpose (a tie, a merchant with too few records)."""

    file: str
    row: int
    reason: str
    session_id: str
    merchant_id: str

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.row, "reason": self.reason, "session_id": self.session_id,
                "merchant_id": self.merchant_id}


class RowError(Exception):
    """Why one input row is unusable; ``reason`` is a quarantine code below."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def checked(file: str, row: int, raw: str, validate: Callable[[], T]) -> T | Rejection:
    """The one place where a per-row failure becomes a quarantine entry, whatever raised it.

    Our own checks raise ``RowError``; anything else a hostile row can provoke in the libraries we call
    (an unreadable file, a number too large for a float, a path component too long) is quarantined with
    a generic reason and the exception's message, never a traceback.
    """
    try:
        return validate()
    except RowError as exc:
        return Rejection(file, row, exc.reason, exc.detail, raw)
    except OSError as exc:
        return Rejection(file, row, UNREADABLE_FILE, f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "), raw)
    except (ValueError, OverflowError, TypeError, RecursionError, UnicodeError) as exc:
        return Rejection(file, row, BAD_VALUE, f"{type(exc).__name__}: {exc}"[:300], raw)


def check_text(value: Any, depth: int = 0) -> None:
    """Every string (keys included) must be encodable as UTF-8: JSON allows lone surrogates ("\ud800"),
    which tokenizers and file systems do not."""
    if depth > MAX_DEPTH:
        raise RowError(INVALID_JSON, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RowError(INVALID_UNICODE, f"string {value[:40]!r} holds a lone surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, depth + 1)
            check_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_text(item, depth + 1)


def same_image_twice(digests: list[str], selected: tuple[bool, ...]) -> None:
    """A group that shows one image twice (the same bytes, whatever the paths: ``./images/../images/x.png`` is
    ``images/x.png``) says nothing consistent about it: ``contradictory_labels`` when it is picked once and left
    once, ``duplicate_candidate`` otherwise (the loss would count it twice)."""
    first: dict[str, int] = {}
    for index, digest in enumerate(digests):
        if digest in first:
            earlier = first[digest]
            if selected[earlier] != selected[index]:
                raise RowError(CONTRADICTORY_LABELS, f"candidates {earlier} and {index} are the same image, selected "
                                                     f"once and left once")
            raise RowError(DUPLICATE_CANDIDATE, f"candidates {earlier} and {index} are the same image")
        first[digest] = index


MAX_DEPTH = 32

# Quarantine reasons. Field-specific reasons are written "missing_field:prompt", "bad_type:timestamp".
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
INVALID_UNICODE = "invalid_unicode"
UNREADABLE_FILE = "unreadable_file"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
EMPTY_PROMPT = "empty_prompt"
UNKNOWN_MERCHANT = "unknown_merchant"
DUPLICATE_SESSION = "duplicate_session_id"
DUPLICATE_MERCHANT = "duplicate_merchant_id"
TOO_FEW_CANDIDATES = "too_few_candidates"
NO_POSITIVE = "no_positive"
NO_NEGATIVE = "no_negative"
IMAGE_PATH_ESCAPES = "image_path_escapes"
IMAGE_MISSING = "image_missing"
IMAGE_EMPTY = "image_empty"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_CORRUPT = "image_corrupt"
IMAGE_ASPECT = "image_aspect_ratio"
CONTRADICTORY_LABELS = "contradictory_labels"
DUPLICATE_CANDIDATE = "duplicate_candidate"
TOO_MANY_CANDIDATES = "too_many_candidates"

# Held-out reasons.
FEW_RECORDS = "few_records"
TIE = "tie"
UNLABELED = "unlabeled"
IDENTICAL_PAIR = "identical_pair"
EXCLUDED_TOKEN = "excluded_token"  # recorded by a token prepare was told to leave out (--exclude-token)
