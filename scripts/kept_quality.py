"""Taste gain at kept quality: the tiny generator recipe and the options that keep it near the base,
on a marketplace drawn differently from the one the tiny recipe was tuned on (docs/benchmarks.md).

    .venv/bin/python scripts/kept_quality.py [--workdir /tmp/kept] [--style studio] [--seed 5] [--fresh]
        [--variant NAME ...]

The tiny recipe was tuned on the catalogue draw (seed 0). This prepares another draw (by default the
studio renderer, seed 5: other silhouettes, textures and canvas, candidates the tiny base does not
draw), trains a reward model for the PerFusionRM column, then for every variant runs `train-gen` with
the tiny recipe plus the variant's flags and `eval gen` on 48 held-out pairs, and prints one markdown
row per variant. Every raw result stays as JSON in the workspace.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

PERFUSION = [sys.executable, "-m", "perfusion_cli"]
VARIANTS = {
    "tiny recipe as shipped": [],
    "β 2000": ["--beta", "2000"],
    "SFT anchor λ 200": ["--sft-weight", "200"],
    "safeguard 500": ["--safeguard-weight", "500"],
    "SFT 200 + cosine lr": ["--sft-weight", "200", "--lr-schedule", "cosine"],
}


def run(workdir: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([*PERFUSION, *args], check=True, cwd=workdir, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def row(name: str, seconds: float, summary: dict) -> str:
    base, ours, kept = summary["models"]["base"], summary["models"]["perfusion"], summary["kept_quality"]
    fid = summary["fid"]
    return (f"| {name} | {base['oracle']:.3f} → {ours['oracle']:.3f} | {kept['oracle_win_rate']:.2f} | "
            f"{kept['perfusionrm_win_rate']:.2f} | {base['clean_background']:.2f} → {ours['clean_background']:.2f} | "
            f"{base['intact']:.2f} → {ours['intact']:.2f} | {base['clip']:.1f} → {ours['clip']:.1f} | "
            f"{fid['base']:.3f} → {fid['perfusion']:.3f} | {kept['denoising_error_ratio']:.2f} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kept"))
    parser.add_argument("--style", default="studio")
    parser.add_argument("--taste", default="colour")
    parser.add_argument("--seed", default="5")
    parser.add_argument("--fresh", action="store_true", help="Start from an empty workspace.")
    parser.add_argument("--variant", action="append", help="Only these variants (names as in VARIANTS).")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "data" / "manifest.json").is_file():
        run(workdir, "prepare", "--synthetic", "--style", args.style, "--taste", args.taste, "--seed", args.seed)
    if not (workdir / "runs" / "rm" / "run.json").is_file():
        run(workdir, "train-rm", "--overwrite")
    print(f"\nmarketplace: style {args.style}, taste {args.taste}, seed {args.seed}\n")
    print("| variant | oracle base → PerFusion | oracle wins | RM wins | clean background | intact product | "
          "CLIP score | CLIP-feature FID | error ratio (held-out) | train |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, flags in VARIANTS.items():
        if args.variant and name not in args.variant:
            continue
        out = f"runs/gen-{slug(name)}"
        seconds = run(workdir, "train-gen", "--group-size", "5", "--out", out, "--overwrite", *flags)
        report = f"eval-{slug(name)}.json"
        run(workdir, "eval", "gen", "--model", out, "--json", report, "--report", f"outputs/report-{slug(name)}")
        print(row(name, seconds, json.loads((workdir / report).read_text())), flush=True)


if __name__ == "__main__":
    main()
