"""Writing WebDataset tar shards, one sample per group (``manifest.py`` lists and reads them).

A sample is ``<key>.json`` (session, merchant, prompt, time, labels, feature ids) plus one image per
candidate, ``<key>.<k>.<ext>``. Shards are written under a temporary name and renamed when complete;
the manifest is written last, so a reader that starts from the manifest never sees a torn shard.
Tar headers carry fixed times and owners, which makes ``prepare`` byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import webdataset as wds

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
        self._writer: wds.TarWriter | None = None
        self._handle = None
        self._in_shard = 0

    def _open(self) -> None:
        name = f"{self.split}-{self.start + len(self.shards):06d}{self.suffix}.tar"
        self._final = self.directory / name
        self._tmp = self.directory / f"{name}.{os.getpid()}.tmp"
        self._handle = open(self._tmp, "wb")
        self._writer = wds.TarWriter(self._handle, user="perfusion", group="perfusion", mode=0o644,
                                     encoder=False, mtime=0.0)
        self._in_shard = 0

    def write(self, key: str, meta: dict, images: list[tuple[str, bytes]], extra: dict[str, bytes] | None = None) -> None:
        if self._writer is None:
            self._open()
        sample = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode("utf-8"), **(extra or {})}
        for index, (extension, data) in enumerate(images):
            sample[f"{index}.{extension}"] = data
        self._writer.write(sample)
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

    def summary(self) -> dict:
        return {"groups": self.groups, "candidates": self.candidates,
                "shards": [asdict(shard) for shard in self.shards]}
