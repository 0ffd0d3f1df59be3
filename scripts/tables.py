"""What the table scripts share: running the CLI in a workspace, and the quality columns every
generator table in docs/benchmarks.md shows (read from `eval gen --json`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERFUSION = [sys.executable, "-m", "perfusion_cli"]


def run(workdir: Path, *args: str, quiet: bool = True) -> float:
    """`perfusion ARGS` inside the workspace (relative --out/--json paths land there); its wall time."""
    started = time.perf_counter()
    subprocess.run([*PERFUSION, *args], check=True, cwd=workdir, stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - started


def read(workdir: Path, name: str) -> dict:
    return json.loads((workdir / name).read_text())


CODE = ("perfusion_cli", "recipes")  # what a run's numbers depend on; docs and scripts do not


def trained_by_this_code(run_dir: Path) -> bool:
    """Was the run in ``run_dir`` trained by the code here: from a clean commit (its run.json) whose package and
    recipes are this working tree's, committed or not? A table that reuses a run trained by other code would print
    numbers today's code does not give; a commit that changes only docs or scripts leaves the runs current."""
    summary = run_dir / "run.json"
    if not summary.is_file():
        return False
    revision = json.loads(summary.read_text()).get("machine", {}).get("perfusion code", "")
    if re.fullmatch("[0-9a-f]{40}|[0-9a-f]{64}", revision) is None:  # +dirty, no checkout, or no record
        return False
    changed = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", revision, "--", *CODE], capture_output=True)
    added = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard", "--", *CODE],
                           capture_output=True, text=True)
    return changed.returncode == 0 and added.returncode == 0 and not added.stdout.strip()


def measured_by_this_code(result: Path, *run_dirs: Path) -> bool:
    """May a table reuse the result JSON ``result`` of the runs in ``run_dirs``: every run trained by the code
    running now, and the result written after each of them? Anything else is measured again."""
    return result.is_file() and all(trained_by_this_code(run_dir)
                                    and result.stat().st_mtime >= (run_dir / "run.json").stat().st_mtime
                                    for run_dir in run_dirs)


def draw_arguments(parser, workdir: str) -> None:
    """The flags of a script that prepares its own synthetic draw (by default the studio renderer, seed 5: a
    marketplace the tiny recipe was not tuned on): --workdir, --style, --seed, --fresh."""
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--style", default="studio")
    parser.add_argument("--seed", default="5")
    parser.add_argument("--fresh", action="store_true", help="Start from an empty workspace.")


def workspace(workdir: Path, fresh: bool, tiny_recipe: bool = False) -> Path:
    """The resolved workspace, emptied first when ``fresh``; with ``tiny_recipe``, the shipped tiny recipe
    as its defaults (perfusion.toml)."""
    workdir = workdir.resolve()
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if tiny_recipe:
        shutil.copy(ROOT / "recipes" / "tiny-cpu.toml", workdir / "perfusion.toml")
    return workdir


def prepared_draw(args) -> Path:
    """The workspace of a script that prepares its own draw (``draw_arguments`` plus ``--taste``), with the tiny
    recipe, the draw prepared and its reward model trained by the code running now (runs/rm)."""
    workdir = workspace(args.workdir, args.fresh, tiny_recipe=True)
    if not (workdir / "data" / "manifest.json").is_file():
        run(workdir, "prepare", "--synthetic", "--style", args.style, "--taste", args.taste, "--seed", args.seed)
    if not trained_by_this_code(workdir / "runs" / "rm"):
        run(workdir, "train-rm", "--overwrite")
    return workdir


HEADER = ("oracle base → PerFusion | oracle wins | RM wins | clean background | intact product | CLIP score | "
          "CLIP-feature FID | error ratio (held-out)")


def quality_cells(summary: dict) -> str:
    """Base → PerFusion from the same seeds: taste (oracle, win rates) beside the picture's quality."""
    base, ours, kept, fid = summary["models"]["base"], summary["models"]["perfusion"], summary["kept_quality"], \
        summary["fid"]
    return (f"{base['oracle']:.3f} → {ours['oracle']:.3f} | {kept['oracle_win_rate']:.2f} | "
            f"{kept['perfusionrm_win_rate']:.2f} | {base['clean_background']:.2f} → {ours['clean_background']:.2f} | "
            f"{base['intact']:.2f} → {ours['intact']:.2f} | {base['clip']:.1f} → {ours['clip']:.1f} | "
            f"{fid['base']:.3f} → {fid['perfusion']:.3f} | {kept['denoising_error_ratio']:.2f}")
