"""``manifest.json``: what ``prepare`` wrote and how to read it back (DESIGN §3, §9).

The manifest is written last, atomically, so a folder with a manifest is a complete prepared data
folder. ``load_manifest`` returns a typed ``Manifest``: its ``vocab`` (a ``FeatureVocab``) is the one
object that travels into every model and every compatibility check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perfusion_cli.config import MAX_GROUP
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.errors import DataError
from perfusion_cli.io import atomic_write_json, read_json

FORMAT = "perfusion-shards/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


@dataclass(frozen=True)
class Manifest:
    data_dir: Path
    raw: dict  # the JSON as written; counts, accounting and reasons live here

    @property
    def vocab(self) -> FeatureVocab:
        return FeatureVocab.from_json(self.raw["features"])

    @property
    def splits(self) -> dict[str, dict]:
        return self.raw["splits"]

    @property
    def max_candidates(self) -> int:
        return int(self.raw["max_candidates"])

    @property
    def synthetic(self) -> bool:
        """Prepared from the synthetic marketplace (its ``truth.json`` copied beside the shards)."""
        return bool(self.raw.get("synthetic"))

    @property
    def source(self) -> dict:
        return self.raw["source"]

    @property
    def fingerprint(self) -> str:
        """What a run records about its data: the source files' checksums (``--resume`` compares it)."""
        files = self.source.get("files", {})
        return ",".join(f"{name}:{digest}" for name, digest in sorted(files.items()))

    def groups(self, split: str) -> int:
        return int(self.split(split)["groups"])

    def require_groups(self, split: str) -> None:
        """DataError unless ``split`` holds groups (naming the splits that do): evaluating nothing is no result."""
        if self.groups(split) == 0:
            held = ", ".join(f"{name} {info['groups']}" for name, info in self.splits.items() if info["groups"])
            raise DataError(f"split {split!r} of {self.data_dir} holds no groups (groups per split: {held}) — pass "
                            f"--split with one that does")

    def split(self, split: str) -> dict:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; this data has {', '.join(self.splits)}")
        return self.splits[split]

    def shard_paths(self, split: str, skip_bad: bool = False) -> tuple[list[str], list[str]]:
        """(readable shard paths, problems skipped). Without ``skip_bad`` the first problem is an error."""
        paths, skipped = [], []
        for shard in self.split(split)["shards"]:
            problem = shard_problem(self.data_dir, shard)
            if problem and not skip_bad:
                raise DataError(f"{problem} — re-run `perfusion prepare`, or pass --skip-bad-shards")
            if problem:
                skipped.append(problem)
            else:
                paths.append(str(self.data_dir / SHARD_DIR / shard["name"]))
        return paths, skipped


def load_manifest(data_dir: str | Path) -> Manifest:
    """The manifest of a prepared data folder, checked for format."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"no prepared data in {data_dir} — run `perfusion prepare LOGS_DIR` "
                        f"(or `perfusion prepare --synthetic`) first")
    try:
        raw = read_json(path)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} manifest — re-run `perfusion prepare`")
    problem = manifest_problem(raw)
    if problem:
        raise DataError(f"{path} is damaged: {problem} — re-run `perfusion prepare`")
    return Manifest(data_dir, raw)


def manifest_problem(raw: dict) -> str | None:
    """What in a manifest the readers could not use, or None: splits with whole, non-negative counts and
    shards named inside ``shards/``, a feature vocabulary, a bounded largest group."""
    splits = raw.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "no \"splits\" table"
    for split, info in splits.items():
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            return f"split {split!r} has no shard list"
        for key in ("groups", "candidates"):
            if not _count(info.get(key)):
                return f"split {split!r}: {key} is {info.get(key)!r}, not a whole number ≥ 0"
        for shard in info["shards"]:
            name = shard.get("name") if isinstance(shard, dict) else shard
            if not _plain_name(name):
                return f"split {split!r} lists a shard named {name!r}, not a .tar file of {SHARD_DIR}/"
            if not _count(shard.get("bytes")) or not _count(shard.get("groups")):
                return f"shard {shard['name']!r} has no whole byte and group counts"
    if not _count(raw.get("max_candidates")) or not 1 <= raw["max_candidates"] <= MAX_GROUP:
        return f"max_candidates is {raw.get('max_candidates')!r}, not a whole number in 1..{MAX_GROUP}"
    try:
        FeatureVocab.from_json(raw["features"])
    except Exception as exc:  # noqa: BLE001 - any shape error in the vocabulary is the same damage
        return f"its feature vocabulary cannot be read ({type(exc).__name__}: {exc})"
    return None


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_name(name) -> bool:
    """A shard's name must stay inside the data folder's ``shards/``: a plain ``*.tar`` file name."""
    return (isinstance(name, str) and name.endswith(".tar") and name not in (".tar", "..tar")
            and not any(c in name for c in "/\\\x00") and not name.startswith("."))


def write_manifest(data_dir: Path, raw: dict) -> Manifest:
    atomic_write_json(Path(data_dir) / MANIFEST, {"format": FORMAT, **raw})
    return load_manifest(data_dir)


def shard_problem(data_dir: str | Path, shard: dict) -> str | None:
    """Why a listed shard cannot be read as the manifest describes it, or None."""
    path = Path(data_dir) / SHARD_DIR / shard["name"]
    if not path.is_file():
        return f"shard {path} is listed in the manifest but missing"
    if path.stat().st_size != shard["bytes"]:
        return (f"shard {path} has {path.stat().st_size} bytes, the manifest says {shard['bytes']}: "
                f"it is truncated or was changed")
    return None
