"""``prepare --engine ray``: pass one's validation and pass two's shard writing as Ray Data pipelines.

The driver streams ``sessions.jsonl`` (line numbers, blank lines and JSON errors are part of the
accounting, so it reads the lines itself); the rows go to ``map_batches`` workers, which validate each
row and read and decode its images — the expensive part — wherever Ray runs them. Back in input order
(``preserve_order``), the driver finds duplicate sessions, plans splits and the vocabulary exactly as
``--engine local`` does. Pass two cuts each split into shards of ``shard_size`` groups in input order,
the same cut as the local writer, and a Ray task writes each shard, checking every image against the
digest pass one recorded. The driver writes the quarantine and the manifest: the output is the local
engine's, byte for byte (a test holds it).

On a cluster: ``pip install 'perfusion[distributed]'`` on every node, ``ray start`` them, run with
``RAY_ADDRESS`` set (``auto`` on a node of the cluster), logs at a URL every node reads (``s3://…``)
and ``--out`` on a file system every node mounts. Without ``RAY_ADDRESS`` a local runtime starts with
``--workers`` CPUs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from perfusion_cli.data.logs import SESSIONS_FILE, LogsSource, iter_jsonl, worker_source, write_checked_shard
from perfusion_cli.data.records import GroupRecord, HeldOut, Rejection
from perfusion_cli.data.shards import ShardInfo, ShardJob
from perfusion_cli.errors import DataError
from perfusion_cli.progress import Progress

ROWS_PER_BLOCK = 256


def start(workers: int) -> None:
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        import ray
    except ImportError:
        raise DataError("--engine ray needs Ray: pip install 'perfusion[distributed]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or None, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our Rich bars report progress
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.print_on_execution_start = False


def _validate_rows(batch: dict, root, limits, known: list[str], max_candidates: int) -> dict:
    """A block of (line number, JSON) rows → each row's record or rejection, with its images' verdicts."""
    source, merchants = worker_source(root, limits, max_candidates), set(known)
    out = []
    for number, text in zip(batch["row"], batch["obj"]):
        item = source.validate_row(int(number), json.loads(text), merchants)
        if isinstance(item, GroupRecord):
            verdicts = [list(source.image_verdict(image)) for image in item.images]
            out.append(json.dumps({"record": asdict(item), "verdicts": verdicts}))
        else:
            out.append(json.dumps({"rejection": asdict(item)}))
    return {"row": batch["row"], "result": out}


def scan(source: LogsSource, merchants: set[str], progress: Progress):
    """Pass one on Ray: (records, rejections, held) as ``LogsSource.scan`` gives them, verdicts kept for pass two."""
    import ray.data

    lines = list(iter_jsonl((source.folder, SESSIONS_FILE), source.session_stats))
    parsed = {number: obj for number, obj, rejection in lines if rejection is None}
    progress.start("validating rows (ray)", len(lines))
    results = {}
    if parsed:
        rows = [{"row": number, "obj": json.dumps(obj)} for number, obj in parsed.items()]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // ROWS_PER_BLOCK)).map_batches(
            _validate_rows, fn_kwargs={"root": source.root, "limits": source.limits, "known": sorted(merchants),
                                       "max_candidates": source.max_candidates},
            batch_size=ROWS_PER_BLOCK, batch_format="numpy")
        for row in dataset.iter_rows():
            results[int(row["row"])] = json.loads(row["result"])
            progress.advance(1)
    records, rejections, held, first_line = [], [], [], {}
    for number, obj, rejection in lines:
        if rejection is not None:
            rejections.append(rejection)
            continue
        result = results[number]
        if "rejection" in result:
            rejections.append(Rejection(**result["rejection"]))
            continue
        record = _record(result["record"])
        item = source.in_order(record, obj, first_line)
        if isinstance(item, HeldOut):
            held.append(item)
        elif isinstance(item, GroupRecord):
            for image, verdict in zip(record.images, result["verdicts"]):
                source.remember_verdict(image, tuple(verdict))
            records.append(item)
        else:
            rejections.append(item)
    progress.stop()
    return records, rejections, held


def _record(fields: dict) -> GroupRecord:
    """A record back from JSON (lists to tuples)."""
    return GroupRecord(**{**fields, "images": tuple(fields["images"]), "selected": tuple(fields["selected"])})


def _write_shard(batch: dict, root, limits, directory: str, shard_size: int) -> dict:
    """One shard per row: its samples' images read back, checked against pass one's digests, written."""
    infos = []
    for text in batch["job"]:
        job = json.loads(text)
        samples = [(key, meta, _record(fields)) for key, meta, fields in job["samples"]]
        verdicts = {image: tuple(verdict) for image, verdict in job["verdicts"].items()}
        shard, candidates = write_checked_shard(root, limits, Path(directory), shard_size,
                                                ShardJob(job["split"], job["index"], samples), verdicts)
        infos.append(json.dumps({"shard": asdict(shard), "candidates": candidates}))
    return {"info": infos}


def write_shards(source: LogsSource, jobs: list[ShardJob], directory: Path,
                 shard_size: int) -> Iterator[tuple[ShardInfo, int]]:
    """Pass two on Ray: each job's shard (the local engine's cut, names and bytes) in a Ray task, in job order."""
    import ray.data
    from ray.exceptions import RayTaskError

    if not jobs:
        return
    rows = [{"job": json.dumps({"split": job.split, "index": job.index, "verdicts": source.job_verdicts(job),
                                "samples": [(key, meta, asdict(record)) for key, meta, record in job.samples]})}
            for job in jobs]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _write_shard, fn_kwargs={"root": source.root, "limits": source.limits, "directory": str(directory),
                                 "shard_size": shard_size},
        batch_size=1, batch_format="numpy")
    try:
        for row in dataset.iter_rows():
            info = json.loads(row["info"])
            yield ShardInfo(**info["shard"]), info["candidates"]
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, DataError) else DataError(f"a Ray task failed: {exc}")) from None
