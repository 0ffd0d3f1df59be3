"""Pick-a-Pic style parquet (DESIGN §3): each row is a group of two, the user is the merchant.

Columns: ``caption``, ``jpg_0``, ``jpg_1`` (image bytes), ``label_0`` in {0, 0.5, 1} and ``user_id``;
``created_at`` is used as the time when present, else the row order. Ties (``label_0`` = 0.5) are
counted and held out of the shards. Files are read one row group at a time, so a large parquet file
streams rather than loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from perfusion_cli.data import records as R
from perfusion_cli.data.images import ImageLimits, ImageProblem, check_image_bytes
from perfusion_cli.data.records import GroupRecord, HeldOut, Rejection
from perfusion_cli.errors import DataError
from perfusion_cli.io import sha256_file

REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "user_id")
META_COLUMNS = ["caption", "label_0", "user_id"]
IMAGE_COLUMNS = ["jpg_0", "jpg_1"]


@dataclass
class _Stats:
    rows: int = 0
    blank_lines: int = 0


@dataclass
class PickAPicSource:
    path: Path
    limits: ImageLimits
    session_stats: _Stats = field(default_factory=_Stats)
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
        for file in self.files:
            try:
                names = set(pq.ParquetFile(file).schema_arrow.names)
            except Exception as exc:
                raise DataError(f"{file} is not a readable parquet file: {exc}") from None
            missing = [column for column in REQUIRED if column not in names]
            if missing:
                raise DataError(f"{file} lacks the Pick-a-Pic column(s) {', '.join(missing)}")

    @property
    def sessions_file(self) -> str:
        return self.files[0].name if len(self.files) == 1 else self.path.name

    def merchants(self) -> tuple[dict[str, dict], list[Rejection]]:
        """Users are the merchants; they have no profile beyond their id."""
        users: dict[str, dict] = {}
        for file in self.files:
            table = pq.read_table(file, columns=["user_id"])
            for value in table.column("user_id").to_pylist():
                if value is not None and str(value).strip():
                    users.setdefault(str(value).strip(), {})
        return users, []

    def scan(self, known_merchants: set[str]) -> Iterator[GroupRecord | Rejection | HeldOut]:
        row = 0
        for file_index, file in enumerate(self.files):
            parquet = pq.ParquetFile(file)
            has_time = "created_at" in parquet.schema_arrow.names
            columns = META_COLUMNS + IMAGE_COLUMNS + (["created_at"] if has_time else [])
            for group_index in range(parquet.num_row_groups):
                table = parquet.read_row_group(group_index, columns=columns).to_pylist()
                for offset, values in enumerate(table):
                    row += 1
                    self.session_stats.rows += 1
                    ref = f"{file_index}:{group_index}:{offset}"
                    yield self._validate(file.name, row, ref, values, has_time)

    def _validate(self, name: str, row: int, ref: str, values: dict, has_time: bool):
        raw = str({key: values.get(key) for key in META_COLUMNS})[:300]
        user = values.get("user_id")
        if user is None or not str(user).strip():
            return Rejection(name, row, f"{R.MISSING_FIELD}:user_id", "user_id is empty", raw)
        caption = values.get("caption")
        if not isinstance(caption, str):
            return Rejection(name, row, f"{R.BAD_TYPE}:caption", "caption must be a string", raw)
        if not caption.strip():
            return Rejection(name, row, R.EMPTY_PROMPT, "caption is empty", raw)
        label = values.get("label_0")
        if not isinstance(label, (int, float)) or isinstance(label, bool) or label not in (0, 0.5, 1):
            return Rejection(name, row, f"{R.BAD_VALUE}:label_0", f"label_0 must be 0, 0.5 or 1, got {label!r}", raw)
        session_id = f"{Path(name).stem}-{row}"
        merchant_id = str(user).strip()
        if label == 0.5:
            return HeldOut(name, row, R.TIE, session_id, merchant_id)
        for column in IMAGE_COLUMNS:
            data = values.get(column)
            if not isinstance(data, (bytes, bytearray)):
                return Rejection(name, row, R.IMAGE_MISSING, f"{column} holds no image bytes", raw)
            try:
                check_image_bytes(bytes(data), self.limits, column)
            except ImageProblem as exc:
                return Rejection(name, row, exc.reason, exc.detail, raw)
        timestamp = float(row)
        if has_time and values.get("created_at") is not None:
            created = values["created_at"]
            timestamp = created.timestamp() if hasattr(created, "timestamp") else float(created)
            if not math.isfinite(timestamp):
                return Rejection(name, row, f"{R.BAD_VALUE}:created_at", "created_at is not finite", raw)
        selected = (label == 1, label == 0)
        return GroupRecord(row, session_id, merchant_id, caption.strip(), timestamp,
                           (f"{ref}:0", f"{ref}:1"), selected)

    def read_images(self, record: GroupRecord) -> list[tuple[str, bytes]]:
        file_index, group_index, offset, _ = record.images[0].split(":")
        key = (int(file_index), int(group_index))
        if self._cache is None or self._cache[0] != key:
            parquet = pq.ParquetFile(self.files[key[0]])
            self._cache = (key, parquet.read_row_group(key[1], columns=IMAGE_COLUMNS).to_pylist())
        values = self._cache[1][int(offset)]
        return [(check_image_bytes(bytes(values[column]), self.limits, column), bytes(values[column]))
                for column in IMAGE_COLUMNS]

    def describe(self) -> dict:
        return {"kind": self.kind, "files": {file.name: sha256_file(file) for file in self.files},
                "session_rows": self.session_stats.rows, "merchant_rows": 0, "blank_lines": 0}
