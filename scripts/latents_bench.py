"""Stored latents against encoding on the fly (docs/benchmarks.md,
"Data, serving and step cost").

    .venv/bin/python scripts/latents_bench.py [--workdir /tmp/latents] [--steps 60]

Prepares the default synthetic marketplace (tiny recipe) twice, without and with `--latents`, and
trains the tiny recipe's generator STEPS steps three ways in one run: the VAE and text encoder on
every step (`--no-cache-latents --no-stored-latents`), the tiny recipe's in-memory cache (each image
encoded the first time it is drawn), and the stored latents. Prints shard bytes, seconds per step
(steps 11..STEPS, past the start-up) and the first step's loss of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

PERFUSION = str(Path(sys.executable).with_name("perfusion"))


def run(workdir: Path, *args: str) -> None:
    subprocess.run([PERFUSION, "--workdir", str(workdir), *args], check=True, stdout=subprocess.DEVNULL)


def seconds_per_step(run_dir: Path, skip: int = 10) -> tuple[float, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "seconds" in r]
    first = next(r for r in steps if r["step"] == 1)["loss"]
    start, end = next(r for r in steps if r["step"] == skip), steps[-1]
    return (end["seconds"] - start["seconds"]) / (end["step"] - start["step"]), first


def shard_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "shards").glob("*.tar"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/latents"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    plain, stored = args.workdir / "plain", args.workdir / "stored"
    run(plain, "prepare", "--synthetic", "--workers", "1")
    run(stored, "prepare", "--synthetic", "--workers", "1", "--latents")
    print(f"shards: {shard_bytes(plain / 'data') / 2**20:.1f} MiB without latents, "
          f"{shard_bytes(stored / 'data') / 2**20:.1f} MiB with", flush=True)
    steps = ["--max-steps", str(args.steps), "--checkpoint-every", str(args.steps)]
    ways = {"VAE + text encoder every step": (plain, "--no-cache-latents"),
            "in-memory cache (tiny recipe)": (plain, "--cache-latents"),
            "stored latents": (stored, "--no-cache-latents")}
    results = {}
    for name, (workdir, flag) in ways.items():
        out = workdir / "runs" / name.split()[0].lower()
        run(workdir, "train-gen", *steps, flag, "--out", str(out))
        results[name] = seconds_per_step(out)
        print(f"{name}: {results[name][0]:.3f} s/step, step-1 loss {results[name][1]:.6f}", flush=True)
    base = results["VAE + text encoder every step"][0]
    print(f"stored latents: x{base / results['stored latents'][0]:.2f} steps/s over encoding every step")


if __name__ == "__main__":
    sys.exit(main())
