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

from perfusion_cli.data.logs import SESSIONS_FILE, LogsSource, first_of_session, iter_jsonl
from perfusion_cli.data.records import GroupRecord, Rejection
from perfusion_cli.data.shards import ShardInfo, SplitWriter, sample_key, sample_meta
from perfusion_cli.errors import DataError
from perfusion_cli.progress import Progress

ROWS_PER_BLOCK = 256
_SOURCES: dict[tuple, LogsSource] = {}  # one per worker process and logs folder


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


def _source(root, limits) -> LogsSource:
    key = (str(root), limits)
    if key not in _SOURCES:
        _SOURCES[key] = LogsSource(root, limits)
    return _SOURCES[key]


def _validate_rows(batch: dict, root, limits, known: list[str]) -> dict:
    """A block of (line number, JSON) rows → each row's record or rejection, with its images' verdicts."""
    source, merchants = _source(root, limits), set(known)
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
            _validate_rows, fn_kwargs={"root": source.root, "limits": source.limits, "known": sorted(merchants)},
            batch_size=ROWS_PER_BLOCK, batch_format="numpy")
        for row in dataset.iter_rows():
            results[int(row["row"])] = json.loads(row["result"])
            progress.advance(1)
    records, rejections, first_line = [], [], {}
    for number, obj, rejection in lines:
        if rejection is not None:
            rejections.append(rejection)
            continue
        result = results[number]
        if "rejection" in result:
            rejections.append(Rejection(**result["rejection"]))
            continue
        record = _record(result["record"])
        item = first_of_session(record, obj, first_line)
        if isinstance(item, GroupRecord):
            for image, verdict in zip(record.images, result["verdicts"]):
                source.remember_verdict(image, tuple(verdict))
            records.append(item)
        else:
            rejections.append(item)
    progress.stop()
    return records, rejections, []


def _record(fields: dict) -> GroupRecord:
    """A record back from JSON (lists to tuples)."""
    return GroupRecord(**{**fields, "images": tuple(fields["images"]), "selected": tuple(fields["selected"])})


def _write_shard(batch: dict, root, limits, directory: str, shard_size: int) -> dict:
    """One shard per row: its samples' images read back, checked against pass one's digests, written."""
    source = _source(root, limits)
    infos = []
    for text in batch["job"]:
        job = json.loads(text)
        writer = SplitWriter(Path(directory), job["split"], shard_size, start=job["index"])
        try:
            for sample in job["samples"]:
                record = _record(sample["record"])
                for image, verdict in zip(record.images, sample["verdicts"]):
                    source.remember_verdict(image, tuple(verdict))
                writer.write(sample["key"], sample["meta"], source.read_images(record))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        infos.append(json.dumps({**asdict(writer.shards[0]), "candidates": writer.candidates}))
    return {"info": infos}


def write_shards(source: LogsSource, records, assignment, vocab, profiles, staging: Path, config,
                 progress: Progress, splits: tuple[str, ...]) -> dict[str, SplitWriter]:
    """Pass two on Ray: the local writer's shards (same cut, names and bytes), one Ray task each."""
    import ray.data
    from ray.exceptions import RayTaskError

    chunks: dict[str, list[list[dict]]] = {split: [] for split in splits}
    for record in records:
        split = assignment.get(record.row)
        if split is None:
            continue
        if not chunks[split] or len(chunks[split][-1]) == config.shard_size:
            chunks[split].append([])
        meta = sample_meta(record, vocab.encode(record.merchant_id, profiles[record.merchant_id]))
        chunks[split][-1].append({"key": sample_key(record), "meta": meta, "record": asdict(record),
                                  "verdicts": [list(source.image_verdict(i)) for i in record.images]})
    jobs = [json.dumps({"split": split, "index": index, "samples": samples})
            for split in splits for index, samples in enumerate(chunks[split])]
    writers = {split: SplitWriter(staging / "shards", split, config.shard_size) for split in splits}
    progress.start("writing shards (ray)", len(jobs))
    if jobs:
        dataset = ray.data.from_items([{"job": job} for job in jobs], override_num_blocks=len(jobs)).map_batches(
            _write_shard, fn_kwargs={"root": source.root, "limits": source.limits,
                                     "directory": str(staging / "shards"), "shard_size": config.shard_size},
            batch_size=1, batch_format="numpy")
        try:
            for job, row in zip(jobs, dataset.iter_rows()):
                info = json.loads(row["info"])
                writer = writers[json.loads(job)["split"]]
                writer.candidates += info.pop("candidates")
                writer.shards.append(ShardInfo(**info))
                writer.groups += info["groups"]
                progress.advance(1)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, DataError) else DataError(f"a Ray task failed: {exc}")) from None
    progress.stop()
    return writers
