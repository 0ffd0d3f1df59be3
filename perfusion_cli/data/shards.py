"""Writing WebDataset tar shards, one sample per group (``manifest.py`` lists and reads them).

A sample is ``<key>.json`` (session, merchant, prompt, time, labels, feature ids) plus one image per
candidate, ``<key>.<k>.<ext>``. Shards are written under a temporary name and renamed when complete;
the manifest is written last, so a reader that starts from the manifest never sees a torn shard.
Tar headers carry fixed times and owners, which makes ``prepare`` byte-for-byte reproducible.

The tar members are written with the standard library's ``tarfile``, exactly as webdataset's
``TarWriter`` writes them (members in sorted order, one ustar header each; a test holds the bytes to
``TarWriter``'s): importing webdataset imports torch, a second or more of start-up that ``prepare``
and each of its worker processes would otherwise pay for nothing. Shards are read with webdataset.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from perfusion_cli.io import sha256_file


def sample_meta(record, features: list[int]) -> dict:
    """A group's ``<key>.json``: what a shard stores of a validated record besides its images."""
    return {"row": record.row, "session_id": record.session_id, "merchant_id": record.merchant_id,
            "prompt": record.prompt, "timestamp": record.timestamp, "selected": list(record.selected),
            "features": features}


def sample_key(record) -> str:
    return f"r{record.row:09d}"


def candidate_images(sample: dict) -> dict[int, tuple[str, bytes]]:
    """A read sample's candidates by index, (extension, bytes), from the members ``write`` names ``<k>.<ext>``."""
    images = {}
    for name, value in sample.items():
        head, _, extension = name.partition(".")
        if head.isdigit():
            images[int(head)] = (extension, value)
    return images


@dataclass
class ShardInfo:
    name: str
    sha256: str
    bytes: int
    groups: int


@dataclass
class SplitWriter:
    """Writes one split's samples into numbered shards of at most ``shard_size`` groups."""

    directory: Path
    split: str
    shard_size: int
    suffix: str = ""  # between the shard number and .tar (stored latents write new shards beside the old)
    start: int = 0  # the number of its first shard (``--engine ray`` writes each shard in its own task)
    shards: list[ShardInfo] = field(default_factory=list)
    groups: int = 0
    candidates: int = 0

    def __post_init__(self) -> None:
        self._writer: tarfile.TarFile | None = None
        self._handle = None
        self._in_shard = 0

    def _open(self) -> None:
        name = f"{self.split}-{self.start + len(self.shards):06d}{self.suffix}.tar"
        self._final = self.directory / name
        self._tmp = self.directory / f"{name}.{os.getpid()}.tmp"
        self._handle = open(self._tmp, "wb")
        self._writer = tarfile.open(fileobj=self._handle, mode="w|")
        self._in_shard = 0

    def write(self, key: str, meta: dict, images: list[tuple[str, bytes]], extra: dict[str, bytes] | None = None) -> None:
        if self._writer is None:
            self._open()
        members = {"json": json.dumps(meta, sort_keys=True).encode("utf-8"), **(extra or {})}
        for index, (extension, data) in enumerate(images):
            members[f"{index}.{extension}"] = data
        for name in sorted(members):
            self._writer.addfile(_member(f"{key}.{name}", len(members[name])), io.BytesIO(members[name]))
        self._in_shard += 1
        self.groups += 1
        self.candidates += len(images)
        if self._in_shard >= self.shard_size:
            self._finish()

    def _finish(self) -> None:
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self._final)
        self.shards.append(ShardInfo(self._final.name, sha256_file(self._final), self._final.stat().st_size,
                                     self._in_shard))
        self._writer = None

    def close(self) -> list[ShardInfo]:
        if self._writer is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (used when ``prepare`` fails half way)."""
        if self._writer is not None:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)
            self._writer = None

    def adopt(self, shard: ShardInfo, candidates: int) -> None:
        """Count a shard of this split that another writer (another process) wrote."""
        self.shards.append(shard)
        self.groups += shard.groups
        self.candidates += candidates

    def summary(self) -> dict:
        return {"groups": self.groups, "candidates": self.candidates,
                "shards": [asdict(shard) for shard in self.shards]}


@dataclass
class ShardJob:
    """One shard's samples, (key, meta, record) in input order: the same cut whichever process writes it."""

    split: str
    index: int
    samples: list[tuple[str, dict, object]]


def cut_shards(records: Iterable, assignment: dict[int, str], features: Callable[[object], list[int]],
               splits: Iterable[str], shard_size: int) -> list[ShardJob]:
    """Each split's records, in input order, cut into shards of ``shard_size`` groups (split by split)."""
    cut: dict[str, list[ShardJob]] = {split: [] for split in splits}
    for record in records:
        split = assignment.get(record.row)
        if split is None:
            continue
        jobs = cut[split]
        if not jobs or len(jobs[-1].samples) == shard_size:
            jobs.append(ShardJob(split, len(jobs), []))
        jobs[-1].samples.append((sample_key(record), sample_meta(record, features(record)), record))
    return [job for jobs in cut.values() for job in jobs]


def write_shard(directory: Path, shard_size: int, job: ShardJob,
                read_images: Callable[[object], list[tuple[str, bytes]]]) -> tuple[ShardInfo, int]:
    """Write one job's shard (its images from ``read_images(record)``); (its info, its candidates)."""
    writer = SplitWriter(Path(directory), job.split, shard_size, start=job.index)
    try:
        for key, meta, record in job.samples:
            writer.write(key, meta, read_images(record))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.shards[0], writer.candidates


def write_in_order(directory: Path, shard_size: int, jobs: list[ShardJob],
                   read_images: Callable[[object], list[tuple[str, bytes]]]) -> Iterator[tuple[ShardInfo, int]]:
    """``write_shard`` for each job, here, one after the other."""
    for job in jobs:
        yield write_shard(directory, shard_size, job, read_images)


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A member's header: fixed time, mode and owner (an integer time: a float one adds a pax header)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uname = info.gname = "perfusion"
    return info
