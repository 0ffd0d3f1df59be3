"""What reading raw input produces: validated groups, rejected rows, held-out rows.

Every input row becomes exactly one of these, which is what makes the accounting identity
(input rows = rows in shards + quarantined + held out) hold by construction (DESIGN §9).
"""

from __future__ import annotations

from dataclasses import dataclass


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


# Quarantine reasons. Field-specific reasons are written "missing_field:prompt", "bad_type:timestamp".
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
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

# Held-out reasons.
FEW_RECORDS = "few_records"
TIE = "tie"
