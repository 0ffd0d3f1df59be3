"""``perfusion prepare``: raw logs (or Pick-a-Pic parquet) → validated, split, sharded data.

Pass one validates every row (images decoded) and keeps only light references; splits and the
vocabulary are planned from those; pass two cuts each split's accepted rows, in input order, into
shards and writes them, each image's bytes checked against pass one's digest (with ``--workers N``
both passes run in the N worker processes; the bytes are the same). Output files:

    DATA_DIR/shards/<split>-NNNNNN.tar   one sample per group
    DATA_DIR/quarantine.jsonl            every rejected row with its line and reason
    DATA_DIR/held_out.jsonl              valid rows kept out on purpose (ties, too few records, …)
    DATA_DIR/merchant_table.jsonl        every valid merchant: role, profile, feature ids
    DATA_DIR/truth.json                  synthetic data only: the hidden tastes the oracle reads
    DATA_DIR/manifest.json               counts, splits, vocabulary, checksums; written last

Safety (DESIGN §9): ``prepare`` refuses an output folder that holds raw logs (its own input or anyone
else's, ``logs.raw_logs_in``) or would overwrite its input, holds a lock on the output folder, and builds everything in ``DATA_DIR/.staging`` first: the previous data
stays readable and untouched until the new data is complete, then is swapped out in one short step.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from perfusion_cli import __version__
from perfusion_cli.config import PrepareConfig, SyntheticConfig
from perfusion_cli.data.decode import parse_background
from perfusion_cli.data.images import ImageLimits
from perfusion_cli.data.logs import TRUTH_FILE as TRUTH, LogsSource, raw_logs_in
from perfusion_cli.data.manifest import MANIFEST, SHARD_DIR, Manifest, write_manifest
from perfusion_cli.data.merchants import LEGACY, MERCHANTS, merchant_table
from perfusion_cli.data.pickapic import PickAPicSource
from perfusion_cli.data import records as R
from perfusion_cli.data.records import GroupRecord, HeldOut
from perfusion_cli.data.shards import ShardJob, SplitWriter, cut_shards
from perfusion_cli.data.source import InputSource
from perfusion_cli.data.splits import SPLITS, plan_splits
from perfusion_cli.data.storage import is_url, upload
from perfusion_cli.data.vocab import FeatureVocab, build_vocab
from perfusion_cli.errors import ConfigError, DataError
from perfusion_cli.io import atomic_write_bytes, check_output_dir
from perfusion_cli.progress import NullProgress, Progress

ENGINES = ("local", "ray")

QUARANTINE = "quarantine.jsonl"
HELD_OUT = "held_out.jsonl"
STAGING = ".staging"
LOCK = ".prepare.lock"
FAILED = "prepare-failed"
OUTPUTS = (SHARD_DIR, QUARANTINE, HELD_OUT, MERCHANTS, TRUTH, MANIFEST)


def open_source(path: str | Path, config: PrepareConfig, workers: int = 1,
                exclude_tokens: tuple[str, ...] = ()) -> InputSource:
    """``workers`` decode a logs folder's images in parallel (Pick-a-Pic is read in one process). A logs
    folder may be an fsspec URL; Pick-a-Pic is read from this machine's disk. ``exclude_tokens``: sessions
    that ``serve`` recorded under these token ids are held out (``excluded_token``)."""
    excluded = frozenset(exclude_tokens)
    limits = ImageLimits(config.max_image_pixels, config.max_image_bytes, config.max_aspect_ratio,
                         parse_background(config.background))
    if is_url(path):
        if config.format == "pickapic" or str(path).endswith(".parquet"):
            raise DataError(f"Pick-a-Pic parquet is read from a local path, not a URL ({path}): copy it first")
        return LogsSource(path, limits, workers=workers, max_candidates=config.max_candidates,
                          excluded_tokens=excluded)
    path = Path(path)
    if config.format == "pickapic" or path.suffix == ".parquet":
        if excluded:
            raise ConfigError("--exclude-token applies to logs that `perfusion serve` recorded, not to Pick-a-Pic")
        return PickAPicSource(path, limits, workers=workers)
    return LogsSource(path, limits, workers=workers, max_candidates=config.max_candidates, excluded_tokens=excluded)


def prepare(source_path: str | Path, out: str | Path, config: PrepareConfig,
            progress: Progress | None = None, command: str = "", workers: int = 1,
            vocab: FeatureVocab | None = None, engine: str = "local", exclude_tokens: tuple[str, ...] = ()) -> Manifest:
    """Prepare ``source_path`` into ``out``; returns the manifest. ``workers`` changes the speed only:
    the output is byte-identical whatever it is. ``vocab``: keep this feature vocabulary (another prepared
    folder's) instead of building one from the training merchants, so models trained there read these shards.
    ``engine``: ``local`` (this machine, ``workers`` processes) or ``ray`` (``ray_engine``; the same output)."""
    progress = progress or NullProgress()
    if is_url(out):
        _refuse_raw_logs(out)  # a local --out is checked after its own input (the more precise message)
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray" and (config.format == "pickapic" or str(source_path).endswith(".parquet")):
        raise ConfigError("--engine ray reads logs folders; prepare Pick-a-Pic parquet with --engine local")
    source = open_source(source_path, config, workers, exclude_tokens)
    if engine == "ray":
        from perfusion_cli.data import ray_engine

        ray_engine.start(workers)
    try:
        if is_url(out):
            with tempfile.TemporaryDirectory(prefix="perfusion-prepare-") as local:
                manifest = _prepare_locally(source, source_path, Path(local) / "data", config, progress, command,
                                            vocab, engine)
                upload(Path(local) / "data", str(out), progress)
            return Manifest(out, manifest.raw)
        return _prepare_locally(source, source_path, Path(str(out).removeprefix("file://")), config, progress,
                                command, vocab, engine)
    finally:
        source.close()  # the worker processes, kept from pass one for pass two


def _prepare_locally(source: InputSource, source_path, out: Path, config: PrepareConfig, progress: Progress,
                     command: str, vocab: FeatureVocab | None, engine: str) -> Manifest:
    _refuse_own_input(source, out)
    _refuse_raw_logs(out)
    check_output_dir(out, "the prepared data folder")
    with _locked(out):
        staging = out / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        (staging / SHARD_DIR).mkdir(parents=True)
        try:
            raw = _prepare_into(source, source_path, staging, out, config, progress, command, vocab, engine)
        except BaseException:
            source.close()  # no worker process writes into the staging folder after this
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _swap_in(staging, out, raw)


def prepare_synthetic(out: str | Path, synthetic: SyntheticConfig, config: PrepareConfig,
                      progress: Progress | None = None, command: str = "", workers: int = 1) -> Manifest:
    """Write the synthetic marketplace to ``out/raw`` and prepare it into ``out`` by the same path."""
    from perfusion_cli.marketplace.synthetic import write_marketplace  # only where synthetic data is asked for

    progress = progress or NullProgress()
    _refuse_raw_logs(out)
    check_output_dir(Path(out), "the prepared data folder")
    progress.start("drawing the synthetic marketplace (merchants)", synthetic.merchants)
    raw = write_marketplace(Path(out) / "raw", synthetic, progress)
    progress.stop()
    return prepare(raw, out, config, progress, command, workers)


def _refuse_raw_logs(out: str | Path) -> None:
    held = raw_logs_in(str(out) if is_url(out) else Path(str(out).removeprefix("file://")))
    if held:
        raise DataError(f"{out} holds raw logs ({held}): prepare never writes into a logs folder — pass --out DIR "
                        f"for the prepared data (the default is <workspace>/data)")


def _refuse_own_input(source: InputSource, out: Path) -> None:
    """Writing into the logs folder would replace its merchants.jsonl (and a re-run would find nothing)."""
    if is_url(source.location):
        return  # logs at a URL are not this machine's files
    root = Path(source.location).resolve()
    target = out.resolve()
    inputs = {path.resolve() for path in source.input_files() if path.exists()}
    written = {(target / name).resolve(): name for name in OUTPUTS}
    clashes = [name for path, name in written.items() if path in inputs or path == root or path in root.parents]
    if target == root or clashes:
        what = "folder" if target == root else ", ".join(clashes)
        raise DataError(f"prepare would write into its own input {root} (its {what}): pass --out DIR outside the "
                        f"logs folder (the default is <workspace>/data)")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    handle = open(out / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataError(f"another `perfusion prepare` is writing to {out}: wait for it, or use another --out") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _prepare_into(source: InputSource, source_path, staging: Path, out: Path, config: PrepareConfig,
                  progress: Progress, command: str, vocab: FeatureVocab | None, engine: str = "local") -> dict:
    profiles, merchant_rejections = source.merchants()
    if engine == "ray":
        from perfusion_cli.data import ray_engine

        scan, write = ray_engine.scan, ray_engine.write_shards
    else:
        scan, write = _scan, type(source).write_shards
    records, rejections, held = scan(source, set(profiles), progress)
    if not records:
        failed = out / FAILED
        _write_jsonl(failed / QUARANTINE, [r.to_json() for r in merchant_rejections + rejections])
        reasons = Counter(r.reason for r in rejections).most_common(3)
        top = ", ".join(f"{reason} ×{count}" for reason, count in reasons) or "the input has no rows"
        raise DataError(f"no valid groups in {source_path} ({top}); every rejected row is listed in "
                        f"{failed / QUARANTINE}")
    plan = plan_splits(records, config, source.sessions_file)
    if not any(split == "train" for split in plan.assignment.values()):
        raise DataError(f"no merchant has --min-records {config.min_records} valid groups or more: all "
                        f"{len(records)} valid groups would be held out — lower --min-records")
    held = sorted(held + plan.held_out, key=lambda h: h.row)
    training = [m for m, role in plan.roles.items() if role == "train"]
    if vocab is None:
        vocab = build_vocab(profiles, training, config.numeric_buckets)
    jobs = cut_shards(records, plan.assignment, lambda r: vocab.encode(r.merchant_id, profiles[r.merchant_id]),
                      SPLITS, config.shard_size)
    splits = _write_shards(functools.partial(write, source), jobs, staging, config, progress)

    _write_jsonl(staging / QUARANTINE, [r.to_json() for r in merchant_rejections + rejections])
    _write_jsonl(staging / HELD_OUT, [h.to_json() for h in held])
    _write_jsonl(staging / MERCHANTS, merchant_table(profiles, records, plan.roles, vocab))
    if source.synthetic:
        source.copy_truth(staging / TRUTH)
    return _manifest(source, config, command, vocab, splits, records, rejections, merchant_rejections, held, plan)


def _swap_in(staging: Path, out: Path, raw: dict) -> Manifest:
    """Replace the old prepared data by the staged one; the manifest goes last."""
    (out / MANIFEST).unlink(missing_ok=True)  # until the new manifest lands, the folder reads as unprepared
    for name in OUTPUTS[:-1]:
        old = out / name
        if old.is_dir():
            retired = out / f"{name}.old"
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(old, retired)
            shutil.rmtree(retired)
        elif old.exists():
            old.unlink()
        if (staging / name).exists():
            os.replace(staging / name, old)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(out / FAILED, ignore_errors=True)
    (out / LEGACY).unlink(missing_ok=True)  # a 0.1 prepared table (raw logs there were refused at the start)
    return write_manifest(out, raw)


def _scan(source: InputSource, merchants: set[str], progress: Progress):
    records: list[GroupRecord] = []
    rejections = []
    held: list[HeldOut] = []
    progress.start("validating rows", None)
    for item in source.scan(merchants):
        if isinstance(item, GroupRecord):
            records.append(item)
        elif isinstance(item, HeldOut):
            held.append(item)
        else:
            rejections.append(item)
        progress.advance(1)
    progress.stop()
    return records, rejections, held


def _write_shards(write, jobs: list[ShardJob], staging: Path, config: PrepareConfig,
                  progress: Progress) -> dict[str, SplitWriter]:
    """Pass two: ``write(jobs, directory, shard_size)`` writes the shards (here, in the worker processes or on
    Ray) and yields each one's info in job order; a writer per split counts them for the manifest."""
    splits = {split: SplitWriter(staging / SHARD_DIR, split, config.shard_size) for split in SPLITS}
    progress.start("writing shards", sum(len(job.samples) for job in jobs))  # groups, a shard at a time
    try:
        for job, (shard, candidates) in zip(jobs, write(jobs, staging / SHARD_DIR, config.shard_size), strict=True):
            splits[job.split].adopt(shard, candidates)
            progress.advance(shard.groups)
    finally:
        progress.stop()
    return splits


def _manifest(source: InputSource, config, command, vocab, splits, records, rejections, merchant_rejections, held,
              plan) -> dict:
    described = source.describe()
    in_shards = sum(writer.groups for writer in splits.values())
    accounting = {
        "session_rows": described["session_rows"],
        "in_shards": in_shards,
        "quarantined": len(rejections),
        "held_out": len(held),
        "excluded_by_token": sum(h.reason == R.EXCLUDED_TOKEN for h in held),  # part of held_out
        "identity": "session_rows == in_shards + quarantined + held_out",
        "balanced": described["session_rows"] == in_shards + len(rejections) + len(held),
        "merchant_rows": described["merchant_rows"],
        "merchants_quarantined": len(merchant_rejections),
        "blank_lines": described["blank_lines"],
    }
    if not accounting["balanced"]:  # pragma: no cover - would be a bug in this module
        raise DataError(f"internal accounting error, nothing written as final: {accounting}")
    merchants_in: dict[str, set[str]] = {split: set() for split in splits}
    for record in records:
        if record.row in plan.assignment:
            merchants_in[plan.assignment[record.row]].add(record.merchant_id)
    split_info = {split: {**writer.summary(), "merchants": len(merchants_in[split])}
                  for split, writer in splits.items()}
    return {
        "created_by": {"command": command, "version": __version__},
        "source": described,
        "settings": asdict(config),
        "features": vocab.to_json(),
        "max_candidates": max(len(record.images) for record in records),
        "splits": split_info,
        "merchants": dict(sorted(Counter(plan.roles.values()).items())),
        "accounting": accounting,
        "quarantine": {"rows": len(rejections) + len(merchant_rejections),
                       "reasons": dict(sorted(Counter(r.reason for r in rejections + merchant_rejections).items()))},
        "held_out": {"rows": len(held), "reasons": dict(sorted(Counter(h.reason for h in held).items()))},
        "synthetic": source.synthetic,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    # ASCII-escaped: raw U+0085 or U+2028 inside a quarantined snippet would split the line for readers
    # that treat them as line breaks (Python's str.splitlines does).
    atomic_write_bytes(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode("ascii"))
