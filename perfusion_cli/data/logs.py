"""Raw marketplace logs (DESIGN §3): ``merchants.jsonl``, ``sessions.jsonl`` and image files.

Every line is validated; a bad line becomes a ``Rejection`` with its line number and reason, never an
exception and never a silent skip. Blank lines are not rows and are only counted.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from perfusion_cli.data import records as R
from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.image_checks import BLOCK, ImageChecks, pool_map
from perfusion_cli.data.images import ImageLimits, ImageProblem
from perfusion_cli.data.merchants import is_prepared_table
from perfusion_cli.data.records import (GroupRecord, HeldOut, Rejection, RowError, check_text, checked,
                                        same_image_twice)
from perfusion_cli.data.shards import ShardInfo, ShardJob, write_in_order, write_shard
from perfusion_cli.errors import DataError
from perfusion_cli.data.storage import is_url, open_folder, sha256_of

MERCHANTS_FILE = "merchants.jsonl"
SESSIONS_FILE = "sessions.jsonl"
TRUTH_FILE = "truth.json"
IMAGES_DIR = "images"  # where serve and the synthetic marketplace put images (any path inside the folder reads)
_RAW_SNIPPET = 300
BOM = b"\xef\xbb\xbf"


@dataclass
class JsonlStats:
    rows: int = 0
    blank_lines: int = 0


def iter_jsonl(path: Path | tuple[Any, str], stats: JsonlStats) -> Iterator[tuple[int, dict | None, Rejection | None]]:
    """Yield (line number, object, None) or (line number, None, rejection) for every non-blank line of a file,
    given as a path or as (folder, name) for a folder of ``storage`` (local or a URL)."""
    if isinstance(path, tuple):
        folder, name = path
        handle = folder.open(name)
    else:
        name = path.name
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(BOM):  # Excel and many Windows tools begin a UTF-8 file with one
                raw = raw[len(BOM):]
            if not raw.strip():
                stats.blank_lines += 1
                continue
            stats.rows += 1
            snippet = raw[:_RAW_SNIPPET].decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, Rejection(name, number, R.INVALID_UTF8, str(exc), snippet)
                continue
            parsed = checked(name, number, snippet, lambda: _parse(text))
            if isinstance(parsed, Rejection):
                yield number, None, parsed
            else:
                yield number, parsed, None


def _parse(text: str) -> dict:
    """One JSON object with only encodable strings, not nested deeper than we read."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(R.INVALID_JSON, str(exc)) from None
    except RecursionError:
        raise RowError(R.INVALID_JSON, "nested too deeply") from None
    if not isinstance(obj, dict):
        raise RowError(R.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    check_text(obj)
    return obj


def parse_timestamp(value: Any) -> float:
    """Seconds since the epoch from a number or an ISO-8601 string (naive times are UTC)."""
    if isinstance(value, bool):
        raise RowError(f"{R.BAD_TYPE}:timestamp", "timestamp must be a number or an ISO-8601 string")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise RowError(f"{R.BAD_VALUE}:timestamp", "timestamp is too large") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RowError(f"{R.BAD_TYPE}:timestamp", f"timestamp {value!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
    else:
        raise RowError(f"{R.BAD_TYPE}:timestamp", "timestamp must be a number or an ISO-8601 string")
    if not math.isfinite(seconds):
        raise RowError(f"{R.BAD_VALUE}:timestamp", f"timestamp {value!r} is not finite")
    return seconds


def _candidates(obj: dict) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    if "candidates" not in obj or obj["candidates"] is None:
        raise RowError(f"{R.MISSING_FIELD}:candidates", "field 'candidates' is missing")
    candidates = obj["candidates"]
    if not isinstance(candidates, list):
        raise RowError(f"{R.BAD_TYPE}:candidates", "field 'candidates' must be a list")
    images, selected = [], []
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            raise RowError(f"{R.BAD_TYPE}:candidates", f"candidate {index} must be an object")
        if not isinstance(candidate.get("image"), str):
            raise RowError(f"{R.BAD_TYPE}:candidates", f"candidate {index} needs an 'image' path string")
        if not isinstance(candidate.get("selected"), bool):
            raise RowError(f"{R.BAD_TYPE}:candidates", f"candidate {index} needs 'selected': true or false")
        images.append(candidate["image"])
        selected.append(candidate["selected"])
    if len(images) < 2:
        raise RowError(R.TOO_FEW_CANDIDATES, f"a group needs at least 2 candidates, got {len(images)}")
    if not any(selected):
        raise RowError(R.NO_POSITIVE, "no candidate is selected")
    if all(selected):
        raise RowError(R.NO_NEGATIVE, "every candidate is selected")
    return tuple(images), tuple(selected)


def _feature_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise RowError(f"{R.BAD_VALUE}:{key}", f"feature '{key}' is not a finite number a float can hold")
        return value
    raise RowError(f"{R.BAD_TYPE}:{key}", f"feature '{key}' must be a string, number, boolean or null")


@dataclass
class LogsSource:
    """Reads and validates a logs folder, local or at an fsspec URL (``storage``). ``scan`` is pass one;
    ``read_images`` serves pass two."""

    root: Path | str
    limits: ImageLimits
    merchant_stats: JsonlStats = field(default_factory=JsonlStats)
    session_stats: JsonlStats = field(default_factory=JsonlStats)
    kind: str = "logs"
    workers: int = 1  # processes that decode pass one's images (``image_checks``); the output is the same
    max_candidates: int = 64  # a larger session is quarantined (too_many_candidates) before its images are read
    excluded_tokens: frozenset = frozenset()  # sessions ``recorded_by`` these serve tokens are held out

    def __post_init__(self) -> None:
        self.folder = open_folder(self.root)
        self.root = self.folder.url if is_url(self.root) else self.folder.path
        self._images = ImageChecks(self.folder, self.limits, self.workers)
        if not self.folder.exists():
            raise DataError(f"logs folder not found: {self.root}")
        for name in (SESSIONS_FILE, MERCHANTS_FILE):
            if not self.folder.is_file(name):
                where = "at" if is_url(self.root) else "in"
                raise DataError(f"no {name} {where} {self.root} — a logs folder holds {MERCHANTS_FILE}, "
                                f"{SESSIONS_FILE} and the images they reference (docs/data-format.md)")

    @property
    def location(self) -> Path | str:
        return self.root

    @property
    def sessions_file(self) -> str:
        return SESSIONS_FILE

    def merchants(self) -> tuple[dict[str, dict], list[Rejection]]:
        """Valid merchant profiles by id, and the rejected merchant rows."""
        profiles: dict[str, dict] = {}
        rejections: list[Rejection] = []
        first_line: dict[str, int] = {}
        for number, obj, rejection in iter_jsonl((self.folder, MERCHANTS_FILE), self.merchant_stats):
            if rejection:
                rejections.append(rejection)
                continue

            def validate(obj=obj) -> tuple[str, dict]:
                merchant_id = canonical_id(obj.get("merchant_id"), "merchant_id")
                if merchant_id in profiles:
                    raise RowError(R.DUPLICATE_MERCHANT,
                                   f"merchant_id {merchant_id!r} first seen on line {first_line[merchant_id]}")
                return merchant_id, {key: _feature_value(key, value) for key, value in obj.items()
                                     if key != "merchant_id"}

            result = checked(MERCHANTS_FILE, number, _snippet(obj), validate)
            if isinstance(result, Rejection):
                rejections.append(result)
                continue
            merchant_id, features = result
            profiles[merchant_id] = features
            first_line[merchant_id] = number
        return profiles, rejections

    def scan(self, known_merchants: set[str]) -> Iterator[GroupRecord | Rejection]:
        """Validate every session line, images included, in file order (a block of lines at a time, whose
        images are decoded ahead, in parallel with ``workers`` > 1)."""
        first_line: dict[str, int] = {}
        blocks = _blocks(iter_jsonl((self.folder, SESSIONS_FILE), self.session_stats), BLOCK)
        try:
            upcoming = next(blocks, None)
            while upcoming is not None:
                block, upcoming = upcoming, next(blocks, None)
                for ahead in (block, upcoming or []):  # this block's images, and the next one's meanwhile
                    self._images.prefetch(image for _, obj, _ in ahead
                                          for image in _image_paths(obj, self.max_candidates))
                for number, obj, rejection in block:
                    if rejection:
                        yield rejection
                        continue
                    yield self.in_order(self.validate_row(number, obj, known_merchants), obj, first_line)
        except BaseException:
            self._images.stop_workers()
            raise
        self._images.end_scan()

    def write_shards(self, jobs: list[ShardJob], directory: Path, shard_size: int) -> Iterator[tuple[ShardInfo, int]]:
        """Pass two: each job's shard, in job order; in pass one's worker processes when it started them (a
        shard a task, its images checked against pass one's digests there), else here."""
        pool = self._images.pool
        if pool is None or len(jobs) < 2:
            yield from write_in_order(directory, shard_size, jobs, self.read_images)
            return
        tasks = ((self.root, self.limits, directory, shard_size, job, self.job_verdicts(job)) for job in jobs)
        yield from pool_map(pool, _write_shard_task, tasks, "writing shards")

    def job_verdicts(self, job: ShardJob) -> dict[str, tuple]:
        """Pass one's verdicts on a shard job's images: what the process writing the shard checks them against."""
        return {image: self.image_verdict(image) for _, _, record in job.samples for image in record.images}

    def close(self) -> None:
        """End the worker processes, if any (``prepare`` calls it when done, or failing)."""
        self._images.stop_workers()

    def validate_row(self, number: int, obj: dict, known_merchants: set[str]) -> GroupRecord | Rejection:
        """One parsed session line, images included, as a record or a rejection (a duplicate session id is
        the caller's to find: it depends on the lines before, ``in_order``)."""
        return checked(SESSIONS_FILE, number, _snippet(obj), lambda: self._validate(number, obj, known_merchants))

    def in_order(self, item: GroupRecord | Rejection, obj: dict,
                 first_line: dict[str, int]) -> GroupRecord | Rejection | HeldOut:
        """What a validated row (``item``, of line ``obj``) becomes in input order — both engines ask here: a
        session id an earlier line had is a rejection (``first_of_session``); a valid session that a token of
        ``excluded_tokens`` recorded (its ``recorded_by``, written by ``serve``) is held out with reason
        ``excluded_token``: a poisoned batch dropped, and counted."""
        item = first_of_session(item, obj, first_line)
        if isinstance(item, GroupRecord) and self.excluded_tokens and obj.get("recorded_by") in self.excluded_tokens:
            return HeldOut(SESSIONS_FILE, item.row, R.EXCLUDED_TOKEN, item.session_id, item.merchant_id)
        return item

    def image_verdict(self, relative: str) -> tuple:
        """Pass one's verdict on an image this source checked (what pass two compares against)."""
        return self._images.verdict(relative)

    def remember_verdict(self, relative: str, verdict: tuple) -> None:
        """Take a verdict another process reached (``--engine ray``), for ``read_images``."""
        self._images.remember(relative, verdict)

    def _validate(self, number: int, obj: dict, known_merchants: set[str]) -> GroupRecord:
        session_id = canonical_id(obj.get("session_id"), "session_id")
        merchant_id = canonical_id(obj.get("merchant_id"), "merchant_id")
        if merchant_id not in known_merchants:
            raise RowError(R.UNKNOWN_MERCHANT, f"merchant_id {merchant_id!r} is not in {MERCHANTS_FILE}")
        prompt = obj.get("prompt")
        if prompt is None:
            raise RowError(f"{R.MISSING_FIELD}:prompt", "field 'prompt' is missing")
        if not isinstance(prompt, str):
            raise RowError(f"{R.BAD_TYPE}:prompt", "field 'prompt' must be a string")
        if not prompt.strip():
            raise RowError(R.EMPTY_PROMPT, "field 'prompt' is empty")
        if obj.get("timestamp") is None:
            raise RowError(f"{R.MISSING_FIELD}:timestamp", "field 'timestamp' is missing")
        timestamp = parse_timestamp(obj["timestamp"])
        images, selected = _candidates(obj)
        if len(images) > self.max_candidates:
            raise RowError(R.TOO_MANY_CANDIDATES, f"{len(images)} candidates: a group holds at most "
                                                  f"{self.max_candidates} ([prepare] max_candidates)")
        for index, image in enumerate(images):
            try:
                self._images.check(image)
            except ImageProblem as exc:
                raise RowError(exc.reason, f"candidate {index}: {exc.detail}") from None
            except OSError as exc:
                raise RowError(R.UNREADABLE_FILE, f"candidate {index}: image {image!r}: {exc.strerror or exc}") from None
        same_image_twice([self._images.verdict(image)[2] for image in images], selected)
        return GroupRecord(number, session_id, merchant_id, prompt.strip(), timestamp, images, selected)

    def input_files(self) -> list[Path]:
        """The input files on this machine (none for a URL): prepare refuses to write over them."""
        return self.folder.local_files([MERCHANTS_FILE, SESSIONS_FILE, TRUTH_FILE])

    @functools.cached_property
    def synthetic(self) -> bool:
        """Whether these logs are the synthetic marketplace's: they carry its ``truth.json`` (each merchant's hidden
        taste). A ``truth.json`` of another shape is a file of the user's, not ours: the logs are real."""
        if not self.folder.is_file(TRUTH_FILE):
            return False
        from perfusion_cli.marketplace.synthetic import truth_problem  # only for logs that carry a truth.json

        with self.folder.open(TRUTH_FILE) as handle:
            return truth_problem(handle.read()) is None

    def copy_truth(self, target: Path) -> None:
        with self.folder.open(TRUTH_FILE) as handle, open(target, "wb") as out:
            shutil.copyfileobj(handle, out)

    def read_images(self, record: GroupRecord) -> list[tuple[str, bytes]]:
        """Pass two: each image's bytes, when they are still the bytes pass one decoded (same SHA-256)."""
        try:
            return [self._images.read(image) for image in record.images]
        except (ImageProblem, OSError) as exc:
            raise DataError(f"{SESSIONS_FILE} line {record.row}: an image changed while preparing: "
                            f"{getattr(exc, 'detail', exc)}") from None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "files": {name: sha256_of(self.folder, name) for name in (MERCHANTS_FILE, SESSIONS_FILE)},
            "merchant_rows": self.merchant_stats.rows,
            "session_rows": self.session_stats.rows,
            "blank_lines": self.merchant_stats.blank_lines + self.session_stats.blank_lines,
        }


def raw_logs_in(location: Path | str) -> str | None:
    """The raw-log file a folder (local or a URL) holds — ``sessions.jsonl``, or a ``merchants.jsonl`` of
    profiles — or None. ``prepare`` never writes into such a folder, whoever's logs they are (``serve``'s,
    another marketplace's): its outputs would sit beside them, and a prepared folder of version 0.1 wrote
    its own ``merchants.jsonl`` over theirs."""
    folder = open_folder(location)
    if folder.is_file(SESSIONS_FILE):
        return SESSIONS_FILE
    if folder.is_file(MERCHANTS_FILE):
        with folder.open(MERCHANTS_FILE) as handle:
            first = next((line for line in handle if line.strip()), b"")
        if not is_prepared_table(first):
            return MERCHANTS_FILE
    return None


_IN_THIS_PROCESS: dict[tuple, LogsSource] = {}


def worker_source(root: Path | str, limits: ImageLimits, max_candidates: int = 64) -> LogsSource:
    """The one ``LogsSource`` of ``root`` in this process: pass two's workers (a pool's or Ray's) read through it."""
    key = (str(root), limits, max_candidates)
    if key not in _IN_THIS_PROCESS:
        _IN_THIS_PROCESS[key] = LogsSource(root, limits, max_candidates=max_candidates)
    return _IN_THIS_PROCESS[key]


def write_checked_shard(root: Path | str, limits: ImageLimits, directory: Path, shard_size: int, job: ShardJob,
                        verdicts: dict[str, tuple]) -> tuple[ShardInfo, int]:
    """In a worker (a pool's or Ray's): one shard, its images checked against pass one's ``verdicts``."""
    source = worker_source(root, limits)
    for image, verdict in verdicts.items():
        source.remember_verdict(image, verdict)
    return write_shard(directory, shard_size, job, source.read_images)


def _write_shard_task(task: tuple) -> tuple[ShardInfo, int]:
    """A pool worker's part of ``LogsSource.write_shards``."""
    return write_checked_shard(*task)


def first_of_session(item: GroupRecord | Rejection, obj: dict, first_line: dict[str, int]) -> GroupRecord | Rejection:
    """A record whose session id an earlier line already had becomes a rejection (of line ``obj``);
    ``first_line`` remembers."""
    if not isinstance(item, GroupRecord):
        return item
    if item.session_id in first_line:
        return Rejection(SESSIONS_FILE, item.row, R.DUPLICATE_SESSION,
                         f"session_id {item.session_id!r} first seen on line {first_line[item.session_id]}",
                         _snippet(obj))
    first_line[item.session_id] = item.row
    return item


def _blocks(rows: Iterator, size: int) -> Iterator[list]:
    block = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _image_paths(obj: dict | None, limit: int) -> list:
    """The image paths a session line names, whatever else is wrong with it (checked ahead, used only if
    the line validates); none for a line with more than ``limit`` candidates (it is quarantined unread)."""
    candidates = obj.get("candidates") if isinstance(obj, dict) else None
    if not isinstance(candidates, list) or len(candidates) > limit:
        return []
    return [c.get("image") for c in candidates if isinstance(c, dict)]


def _snippet(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)[:_RAW_SNIPPET]
