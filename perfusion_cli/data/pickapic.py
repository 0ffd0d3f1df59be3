"""Pick-a-Pic parquet (DESIGN §3): each row is a group of two, the user is the merchant.

The v2 layout is a folder of ``train-000NN-of-00645.parquet`` files with 19 columns; we need
``caption``, ``jpg_0``, ``jpg_1`` (image bytes), ``label_0`` and ``user_id`` and read ``label_1``,
``has_label``, ``are_different`` and ``created_at`` when present (other columns are ignored). A row is
a preference only when ``has_label`` (if present) is true and the labels name one winner
(``label_0 + label_1 = 1``, one of them 1):

- unlabeled rows (``has_label`` false), ties (0.5 / 0.5) and identical pairs (``are_different`` false, or the
  same bytes twice) are held out with their reason; contradictory labels (both 1, or both 0 on a labeled
  row) and any other values are quarantined.

``created_at`` orders a user's rows in time when present, else the row order does. Files are read one
row group at a time, so a folder of many large files streams with bounded memory.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from perfusion_cli.data import records as R
from perfusion_cli.data.decode import shard_image
from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.image_checks import bytes_verdict, pool_map, spawn_pool, stop_pool, unpack
from perfusion_cli.data.images import ImageLimits
from perfusion_cli.data.records import GroupRecord, HeldOut, Rejection, RowError, check_text, checked
from perfusion_cli.data.shards import ShardInfo, ShardJob, write_in_order
from perfusion_cli.errors import DataError
from perfusion_cli.io import sha256_file

REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "user_id")
OPTIONAL = ("label_1", "has_label", "are_different", "created_at")
META_COLUMNS = ["caption", "label_0", "user_id"]
IMAGE_COLUMNS = ["jpg_0", "jpg_1"]


POOL_MIN_IMAGES = 16  # a row group with fewer images to decode is decoded inline


@dataclass
class _Stats:
    rows: int = 0
    blank_lines: int = 0


@dataclass
class PickAPicSource:
    path: Path
    limits: ImageLimits
    session_stats: _Stats = field(default_factory=_Stats)
    workers: int = 1  # processes that decode a row group's images (``--workers``); the output is the same
    kind: str = "pickapic"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.is_dir():
            self.files = sorted(self.path.glob("*.parquet"))
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise DataError(f"Pick-a-Pic input not found: {self.path}")
        if not self.files:
            raise DataError(f"no .parquet files in {self.path}")
        self._cache: tuple[tuple[int, int], list] | None = None
        self._digests: dict[str, tuple[str, str]] = {}  # image ref → (extension, SHA-256) found in pass one
        self._pool = None
        for file in self.files:
            try:
                names = set(pq.ParquetFile(file).schema_arrow.names)
            except Exception as exc:
                raise DataError(f"{file} is not a readable parquet file: {exc}") from None
            missing = [column for column in REQUIRED if column not in names]
            if missing:
                raise DataError(f"{file} lacks the Pick-a-Pic column(s) {', '.join(missing)}")

    @property
    def location(self) -> Path:
        return self.path

    @property
    def sessions_file(self) -> str:
        return self.files[0].name if len(self.files) == 1 else self.path.name

    def merchants(self) -> tuple[dict[str, dict], list[Rejection]]:
        """Users are the merchants; they have no profile beyond their id."""
        users: dict[str, dict] = {}
        for file in self.files:
            table = pq.read_table(file, columns=["user_id"])
            for value in table.column("user_id").to_pylist():
                try:
                    users.setdefault(canonical_id(value, "user_id"), {})
                except RowError:
                    continue  # the row itself is quarantined with this reason by scan
        return users, []

    def scan(self, known_merchants: set[str]) -> Iterator[GroupRecord | Rejection | HeldOut]:
        """Every row in file order; with ``workers`` > 1 a row group's images decode in the pool while the
        rows of the group before it are validated."""
        try:
            previous = None
            for group in self._row_groups():
                current = (*group, self._decode_ahead(*group))
                if previous is not None:
                    yield from self._rows(*previous)
                previous = current
            if previous is not None:
                yield from self._rows(*previous)
        finally:
            self.close()

    def _row_groups(self) -> Iterator[tuple[str, str, int, list[dict]]]:
        """(file name, ref prefix, number of the row before the group, rows) for every row group."""
        row = 0
        for file_index, file in enumerate(self.files):
            parquet = pq.ParquetFile(file)
            names = set(parquet.schema_arrow.names)
            columns = META_COLUMNS + IMAGE_COLUMNS + [column for column in OPTIONAL if column in names]
            for group_index in range(parquet.num_row_groups):
                table = parquet.read_row_group(group_index, columns=columns).to_pylist()
                yield file.name, f"{file_index}:{group_index}", row, table
                row += len(table)

    def _rows(self, name: str, prefix: str, before: int, table: list[dict], ahead) -> Iterator:
        verdicts = ahead() if callable(ahead) else ahead
        for offset, values in enumerate(table):
            row = before + offset + 1
            self.session_stats.rows += 1
            raw = str({key: values.get(key) for key in META_COLUMNS + list(OPTIONAL)})[:300]
            yield checked(name, row, raw,
                          lambda: self._validate(name, row, f"{prefix}:{offset}", values, verdicts.get(offset)))

    def _decode_ahead(self, name: str, prefix: str, before: int, table: list[dict]):
        """With ``workers`` > 1: the verdicts on a row group's images, decoding in the pool (a callable that waits
        for them), for the rows whose validation reaches their images (held-out and bad rows are not decoded,
        as inline); else an empty dict (decoded inline)."""
        todo = [(offset, values) for offset, values in enumerate(table)
                if self.workers > 1 and self._reaches_images(name, before + offset + 1, values)]
        if len(todo) * len(IMAGE_COLUMNS) < POOL_MIN_IMAGES:
            return {}
        if self._pool is None:
            self._pool = spawn_pool(self.workers)
        jobs = [(bytes(values[column]), self.limits, column) for _, values in todo for column in IMAGE_COLUMNS]
        pending = pool_map(self._pool, bytes_verdict, jobs, "checking images",
                           max(1, len(jobs) // (4 * self.workers)))
        width = len(IMAGE_COLUMNS)

        def wait() -> dict[int, list[tuple]]:
            verdicts = list(pending)
            return {offset: verdicts[i * width:(i + 1) * width] for i, (offset, _) in enumerate(todo)}

        return wait

    def _reaches_images(self, name: str, row: int, values: dict) -> bool:
        try:
            head = self._head(name, row, values)
        except Exception:  # the row is rejected before its images, inline as well
            return False
        return not isinstance(head, HeldOut) and all(isinstance(values.get(c), (bytes, bytearray))
                                                     for c in IMAGE_COLUMNS)

    def _head(self, name: str, row: int, values: dict) -> tuple[str, str, str, int] | HeldOut:
        """Everything but the images: (session id, merchant id, caption, winner), or why it is held out."""
        merchant_id = canonical_id(values.get("user_id"), "user_id")  # int64 10000 and float64 10000.0: one user
        caption = values.get("caption")
        if not isinstance(caption, str):
            raise RowError(f"{R.BAD_TYPE}:caption", "caption must be a string")
        check_text(caption)
        if not caption.strip():
            raise RowError(R.EMPTY_PROMPT, "caption is empty")
        session_id = f"{Path(name).stem}-{row}"
        held = _held_out_reason(values)
        if held:
            return HeldOut(name, row, held, session_id, merchant_id)
        return session_id, merchant_id, caption, _winner(values)

    def _validate(self, name: str, row: int, ref: str, values: dict,
                  verdicts: list[tuple] | None = None) -> GroupRecord | HeldOut:
        head = self._head(name, row, values)
        if isinstance(head, HeldOut):
            return head
        session_id, merchant_id, caption, winner = head
        digests = []
        for index, column in enumerate(IMAGE_COLUMNS):
            data = values.get(column)
            if not isinstance(data, (bytes, bytearray)):
                raise RowError(R.IMAGE_MISSING, f"{column} holds no image bytes")
            verdict = verdicts[index] if verdicts else bytes_verdict((bytes(data), self.limits, column))
            digests.append(unpack(verdict))
        if digests[0][1] == digests[1][1]:  # the same bytes twice, whatever are_different says: no preference
            return HeldOut(name, row, R.IDENTICAL_PAIR, session_id, merchant_id)
        timestamp = float(row)
        if values.get("created_at") is not None:
            created = values["created_at"]
            timestamp = created.timestamp() if hasattr(created, "timestamp") else float(created)
            if not math.isfinite(timestamp):
                raise RowError(f"{R.BAD_VALUE}:created_at", "created_at is not finite")
        images = (f"{ref}:0", f"{ref}:1")
        self._digests.update(zip(images, digests))
        return GroupRecord(row, session_id, merchant_id, caption.strip(), timestamp, images,
                           (winner == 0, winner == 1))

    def input_files(self) -> list[Path]:
        return list(self.files)

    synthetic = False  # Pick-a-Pic has no hidden taste to measure

    def copy_truth(self, target: Path) -> None:
        raise TypeError("Pick-a-Pic data has no truth.json (synthetic is False)")

    def read_images(self, record: GroupRecord) -> list[tuple[str, bytes]]:
        file_index, group_index, offset, _ = record.images[0].split(":")
        key = (int(file_index), int(group_index))
        if self._cache is None or self._cache[0] != key:
            parquet = pq.ParquetFile(self.files[key[0]])
            self._cache = (key, parquet.read_row_group(key[1], columns=IMAGE_COLUMNS).to_pylist())
        values = self._cache[1][int(offset)]
        out = []
        for image, column in zip(record.images, IMAGE_COLUMNS):  # pass one decoded them: compare digests
            data = bytes(values[column])
            _, digest = self._digests[image]
            if hashlib.sha256(data).hexdigest() != digest:
                raise DataError(f"{record.images[0].rsplit(':', 1)[0]}: {column} changed while preparing")
            out.append(shard_image(data, self.limits.background))
        return out

    def write_shards(self, jobs: list[ShardJob], directory: Path, shard_size: int) -> Iterator[tuple[ShardInfo, int]]:
        """Pass two, in this process: the images are read back from the parquet row group by row group."""
        return write_in_order(directory, shard_size, jobs, self.read_images)

    def close(self) -> None:
        stop_pool(self._pool)
        self._pool = None

    def describe(self) -> dict:
        return {"kind": self.kind, "files": {file.name: sha256_file(file) for file in self.files},
                "session_rows": self.session_stats.rows, "merchant_rows": 0, "blank_lines": 0}


def _number(values: dict, column: str) -> float | None:
    value = values.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError(f"{R.BAD_VALUE}:{column}", f"{column} must be a number, got {value!r}")
    return float(value)


def _held_out_reason(values: dict) -> str | None:
    """Rows that are valid but carry no preference: unlabeled, ties, identical pairs."""
    if values.get("has_label") is False:
        return R.UNLABELED
    if values.get("are_different") is False:
        return R.IDENTICAL_PAIR
    label_0 = _number(values, "label_0")
    label_1 = _number(values, "label_1")
    if label_0 == 0.5 and label_1 in (None, 0.5):
        return R.TIE
    return None


def _winner(values: dict) -> int:
    """0 or 1: the image the user preferred; anything else is quarantined."""
    label_0 = _number(values, "label_0")
    label_1 = _number(values, "label_1")
    if label_0 is None:
        raise RowError(f"{R.MISSING_FIELD}:label_0", "label_0 is missing")
    if label_1 is None:
        label_1 = 1 - label_0 if label_0 in (0, 1) else None
    if (label_0, label_1) == (1, 0):
        return 0
    if (label_0, label_1) == (0, 1):
        return 1
    if label_0 in (0, 1) and label_1 in (0, 1):
        raise RowError(R.CONTRADICTORY_LABELS, f"label_0 {label_0:g} and label_1 {label_1:g} name no single winner")
    raise RowError(f"{R.BAD_VALUE}:label_0", f"labels must be 0, 0.5 or 1 and sum to 1, got {label_0!r} and "
                                             f"{label_1!r}")
