"""Identifiers (merchant, session, user ids) in one canonical form, whatever source they come from.

Raw logs give ids as JSON strings or numbers, Pick-a-Pic as int64 or float64 columns, ``serve`` as JSON
bodies, the command line as text. The same id must be one id everywhere, and no id may carry what would
break a file name, a terminal or a page:

- an integer, or a float with an integral value, is its decimal digits (``10000`` and ``10000.0`` are
  one user, ``"10000"``); a non-finite number (NaN, ±inf) is refused, never pooled into a merchant "nan";
- text is stripped and put in Unicode NFC (a composed and a decomposed "é" are one id);
- control characters (C0, DEL, C1), lone surrogates, booleans and ids over ``MAX_ID_CHARS`` are refused.

An id may still hold quotes, slashes or markup: it is data. Writers escape it (HTML writers with
``html.escape``, the terminal with ``cli/console.printable``) and file names come from ``file_stem``,
never from the id itself.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Any

from perfusion_cli.data import records as R
from perfusion_cli.data.records import RowError

MAX_ID_CHARS = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def canonical_id(value: Any, field: str) -> str:
    """``value`` as its canonical id string; ``RowError`` (reason ``missing_field``, ``bad_type`` or
    ``bad_value`` with ``:field``) when it cannot be one."""
    if value is None:
        raise RowError(f"{R.MISSING_FIELD}:{field}", f"field '{field}' is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{R.BAD_TYPE}:{field}", f"field '{field}' must be a string or an integer")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RowError(f"{R.BAD_VALUE}:{field}", f"field '{field}' is {value!r}, not an id")
        if not value.is_integer():
            raise RowError(f"{R.BAD_VALUE}:{field}", f"field '{field}' is {value!r}: a number id must be whole")
        value = int(value)
    text = unicodedata.normalize("NFC", str(value).strip())
    if not text:
        raise RowError(f"{R.BAD_VALUE}:{field}", f"field '{field}' is empty")
    if len(text) > MAX_ID_CHARS:
        raise RowError(f"{R.BAD_VALUE}:{field}", f"field '{field}' is longer than {MAX_ID_CHARS} characters")
    if _CONTROL.search(text):
        raise RowError(f"{R.BAD_VALUE}:{field}", f"field '{field}' holds a control character")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise RowError(R.INVALID_UNICODE, f"field '{field}' holds a lone surrogate")
    return text


def slug(text: str, limit: int = 60) -> str:
    """Lower-case letters, digits and dashes from ``text`` (``x`` when none is left): safe in any file name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "x"


def file_stem(identifier: str, limit: int = 40) -> str:
    """A file-name part for an id that no id can steer: its ``slug``, then a short digest of the whole id, so
    two ids never share a name (``M1``/``m1``, ``a/b``/``a-b``)."""
    return f"{slug(identifier, limit)}-{hashlib.sha256(identifier.encode('utf-8')).hexdigest()[:8]}"
