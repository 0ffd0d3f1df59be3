"""`prepare` throughput at 1 and N workers on 512 px JPEGs (docs/benchmarks.md,
"Data, serving and step cost").

    .venv/bin/python scripts/prepare_throughput.py [--workdir /tmp/prep] [--sessions 400] [--workers 2]

Writes a logs folder of SESSIONS sessions × 5 candidates (512×512 JPEGs, quality 90: the synthetic
products scaled up, with grain), prepares it with `--workers 1` and `--workers N` in one run, checks
that the two outputs are byte-identical, and prints images/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PERFUSION = str(Path(sys.executable).with_name("perfusion"))


def write_logs(root: Path, sessions: int) -> int:
    """A logs folder of 512 px JPEGs; returns the number of images."""
    if (root / "sessions.jsonl").is_file():
        return sum(len(json.loads(line)["candidates"]) for line in (root / "sessions.jsonl").open())
    from perfusion_cli.config import SyntheticConfig
    from perfusion_cli.marketplace.synthetic import write_marketplace

    drawn = SyntheticConfig(merchants=max(2, sessions // 20), sessions_per_merchant=20)
    small = write_marketplace(root / "small", drawn)
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (small / "sessions.jsonl").open()][:sessions]
    for row in rows:
        for candidate in row["candidates"]:
            image = Image.open(small / candidate["image"]).convert("RGB").resize((512, 512), Image.BICUBIC)
            grain = rng.normal(0, 6, (512, 512, 3))
            pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
            name = Path(candidate["image"]).with_suffix(".jpg").name
            Image.fromarray(pixels).save(root / "images" / name, quality=90)
            candidate["image"] = f"images/{name}"
    (root / "sessions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "merchants.jsonl").write_bytes((small / "merchants.jsonl").read_bytes())
    return sum(len(row["candidates"]) for row in rows)


def write_pickapic(logs: Path, folder: Path) -> int:
    """The same JPEGs as Pick-a-Pic v2 rows (two a row, row groups of 100); returns the number of images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if folder.is_dir():
        return 2 * pq.ParquetFile(next(folder.glob("*.parquet"))).metadata.num_rows
    folder.mkdir(parents=True)
    rows = [json.loads(line) for line in (logs / "sessions.jsonl").open()]
    table = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": [], "user_id": []}
    for row in rows:
        first, second = (logs / c["image"] for c in row["candidates"][:2])
        for key, value in (("caption", row["prompt"]), ("jpg_0", first.read_bytes()), ("jpg_1", second.read_bytes()),
                           ("label_0", 1.0), ("label_1", 0.0), ("user_id", int(row["merchant_id"][1:]))):
            table[key].append(value)
    pq.write_table(pa.table(table), folder / "train-00000-of-00001.parquet", row_group_size=100)
    return 2 * len(rows)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != "manifest.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/prep"))
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also --engine ray with --workers CPUs (a local runtime)")
    parser.add_argument("--pickapic", action="store_true", help="also the same JPEGs as Pick-a-Pic parquet rows")
    args = parser.parse_args()
    logs = args.workdir / "logs"
    images = write_logs(logs, args.sessions)
    size = sum(p.stat().st_size for p in (logs / "images").iterdir()) / images
    rates = {}
    runs = [(1, "local"), (args.workers, "local")] + ([(args.workers, "ray")] if args.ray else [])
    for workers, engine in runs:
        out = args.workdir / (f"data-{workers}" if engine == "local" else "data-ray")
        started = time.perf_counter()
        subprocess.run([PERFUSION, "prepare", str(logs), "--out", str(out), "--workers", str(workers),
                        "--min-records", "1", "--engine", engine], check=True, capture_output=True)
        rates[workers if engine == "local" else "ray"] = images / (time.perf_counter() - started)
    same = files(args.workdir / "data-1") == files(args.workdir / f"data-{args.workers}")
    manifests = [json.loads((args.workdir / f"data-{w}" / "manifest.json").read_text()) for w in (1, args.workers)]
    for manifest in manifests:
        manifest["created_by"]["command"] = ""  # the command line names --workers; nothing else may differ
    print(f"{images} images of 512x512 JPEG ({size / 1024:.0f} KiB each): {rates[1]:.1f} images/s at 1 worker, "
          f"{rates[args.workers]:.1f} at {args.workers} (x{rates[args.workers] / rates[1]:.2f}); "
          f"outputs identical: {same and manifests[0] == manifests[1]}")
    if args.pickapic:
        pairs = write_pickapic(logs, args.workdir / "pickapic")
        timing = {}
        for workers in (1, args.workers):
            started = time.perf_counter()
            subprocess.run([PERFUSION, "prepare", str(args.workdir / "pickapic"), "--format", "pickapic", "--out",
                            str(args.workdir / f"pickapic-data-{workers}"), "--workers", str(workers),
                            "--min-records", "1"], check=True, capture_output=True)
            timing[workers] = pairs / (time.perf_counter() - started)
        same = files(args.workdir / "pickapic-data-1") == files(args.workdir / f"pickapic-data-{args.workers}")
        print(f"Pick-a-Pic parquet, {pairs} images: {timing[1]:.1f} images/s at 1 worker, {timing[args.workers]:.1f} "
              f"at {args.workers} (x{timing[args.workers] / timing[1]:.2f}); outputs identical: {same}")
    if args.ray:
        print(f"--engine ray, local runtime of {args.workers} CPUs (start-up included): {rates['ray']:.1f} images/s "
              f"(x{rates['ray'] / rates[1]:.2f}); output identical to --workers 1: "
              f"{files(args.workdir / 'data-ray') == files(args.workdir / 'data-1')}")


if __name__ == "__main__":
    main()
