"""Prepared data on disk: WebDataset tar shards, one sample per group, and ``manifest.json``.

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

from perfusion_cli.errors import DataError
from perfusion_cli.io import read_json, sha256_file

FORMAT = "perfusion-shards/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


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
    shards: list[ShardInfo] = field(default_factory=list)
    groups: int = 0
    candidates: int = 0

    def __post_init__(self) -> None:
        self._writer: wds.TarWriter | None = None
        self._handle = None
        self._in_shard = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._final = self.directory / name
        self._tmp = self.directory / f"{name}.{os.getpid()}.tmp"
        self._handle = open(self._tmp, "wb")
        self._writer = wds.TarWriter(self._handle, user="perfusion", group="perfusion", mode=0o644,
                                     encoder=False, mtime=0.0)
        self._in_shard = 0

    def write(self, key: str, meta: dict, images: list[tuple[str, bytes]]) -> None:
        if self._writer is None:
            self._open()
        sample = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
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


def load_manifest(data_dir: str | Path) -> dict:
    """The manifest of a prepared data folder, checked for format and for its shards' presence."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"no prepared data in {data_dir} — run `perfusion prepare LOGS_DIR` "
                        f"(or `perfusion prepare --synthetic`) first")
    try:
        manifest = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} manifest — re-run `perfusion prepare`")
    return manifest


def shard_problem(data_dir: str | Path, shard: dict) -> str | None:
    """Why a listed shard cannot be read as the manifest describes it, or None."""
    path = Path(data_dir) / SHARD_DIR / shard["name"]
    if not path.is_file():
        return f"shard {path} is listed in the manifest but missing"
    if path.stat().st_size != shard["bytes"]:
        return (f"shard {path} has {path.stat().st_size} bytes, the manifest says {shard['bytes']}: "
                f"it is truncated or was changed")
    return None


def shard_paths(data_dir: str | Path, manifest: dict, split: str,
                skip_bad: bool = False) -> tuple[list[str], list[str]]:
    """(readable shard paths, problems skipped). Without ``skip_bad`` the first problem is an error."""
    if split not in manifest["splits"]:
        raise DataError(f"unknown split {split!r}; this data has {', '.join(manifest['splits'])}")
    paths, skipped = [], []
    for shard in manifest["splits"][split]["shards"]:
        problem = shard_problem(data_dir, shard)
        if problem and not skip_bad:
            raise DataError(f"{problem} — re-run `perfusion prepare`, or pass --skip-bad-shards")
        if problem:
            skipped.append(problem)
        else:
            paths.append(str(Path(data_dir) / SHARD_DIR / shard["name"]))
    return paths, skipped


def verify_checksums(data_dir: str | Path, manifest: dict) -> list[str]:
    """Names of shards whose sha256 differs from the manifest (empty when all match)."""
    bad = []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = Path(data_dir) / SHARD_DIR / shard["name"]
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                bad.append(shard["name"])
    return bad
