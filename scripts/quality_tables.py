"""Reproduce the quality tables of docs/benchmarks.md on the synthetic marketplace (tiny recipe, CPU).

    .venv/bin/python scripts/quality_tables.py [--workdir bench] [--part rm|gen|all]

Runs the real CLI in a fresh workspace: prepare; train-rm as PerFusionRM, --no-plugin, --loss bt,
--shared-plugin, and PerFusionRM and --no-plugin on the tiny SigLIP; eval rm on test and cold_start (with
zero-shot CLIP and SigLIP); train-gen with the group
loss (K=5) and pairwise; eval gen for each. Prints markdown tables with wall times; every raw
result is left as JSON in the workspace.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from tables import HEADER, quality_cells, read, trained_by_this_code, workspace
from tables import run as run_quietly

run = partial(run_quietly, quiet=False)  # each command's tables are part of this script's output
RM_VARIANTS = {"PerFusionRM": [], "no plug-in (PickScore-style)": ["--no-plugin"], "PerFusionRM, BT loss": ["--loss", "bt"],
               "PerFusionRM, shared plug-in": ["--shared-plugin"],
               "PerFusionRM on tiny SigLIP": ["--base-model", "tiny-siglip"],
               "no plug-in on tiny SigLIP": ["--base-model", "tiny-siglip", "--no-plugin"]}
ZERO_SHOT = {"zero-shot tiny CLIP": "zero-shot:tiny", "zero-shot tiny SigLIP": "zero-shot:tiny-siglip"}
GEN_VARIANTS = {"group (K=5)": ["--loss", "group"], "pairwise": ["--loss", "pairwise"]}


def slug(name: str) -> str:
    """Run folder name; PerFusionRM itself goes to the workspace default runs/rm, which eval gen reads."""
    return "rm" if name == "PerFusionRM" else "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def reward_part(workdir: Path) -> None:
    seconds = {name: run(workdir, "train-rm", "--out", f"runs/{slug(name)}", "--overwrite", *flags)
               for name, flags in RM_VARIANTS.items()}
    checkpoints = [a for name in RM_VARIANTS for a in ("--checkpoint", f"runs/{slug(name)}")]
    for split in ("test", "cold_start"):
        zero_shot = [a for source in ZERO_SHOT.values() for a in ("--checkpoint", source)]
        run(workdir, "eval", "rm", "--split", split, *checkpoints, *zero_shot, "--json", f"eval-rm-{split}.json")
    tables = {split: read(workdir, f"eval-rm-{split}.json")["models"]
              for split in ("test", "cold_start")}
    print("\n| model | test MAP | test GAUC | cold-start MAP | cold-start GAUC | train wall time |")
    print("|---|---|---|---|---|---|")
    names = [*RM_VARIANTS, *ZERO_SHOT]
    for index, name in enumerate(names):
        test, cold = tables["test"][index], tables["cold_start"][index]
        wall = f"{seconds[name]:.0f} s" if name in seconds else "–"
        print(f"| {name} | {test['map']:.3f} | {test['gauc']:.3f} | {cold['map']:.3f} | {cold['gauc']:.3f} | {wall} |")
    print(f"\n({tables['test'][0]['n_groups']} test groups / {tables['test'][0]['n_merchants']} merchants; "
          f"{tables['cold_start'][0]['n_groups']} cold-start groups / {tables['cold_start'][0]['n_merchants']} merchants)")


def generator_part(workdir: Path) -> None:
    rows = []
    for name, flags in GEN_VARIANTS.items():
        wall = run(workdir, "train-gen", "--out", f"runs/gen-{slug(name)}", "--overwrite", "--group-size", "5", *flags)
        report = f"outputs/report-{slug(name)}"
        run(workdir, "eval", "gen", "--model", f"runs/gen-{slug(name)}", "--report", report,
            "--json", f"eval-gen-{slug(name)}.json")
        rows.append((name, wall, read(workdir, f"eval-gen-{slug(name)}.json")))
    print(f"\n| generator | {HEADER} | train wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, wall, summary in rows:
        print(f"| {name} | {quality_cells(summary)} | {wall:.0f} s |")
    summary = rows[0][2]
    print(f"\n({summary['pairs']} held-out pairs, {summary['merchants']} merchants, {summary['images_per_pair']} "
          f"images per pair and model; FID features: {summary['fid'].get('features')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench"))
    parser.add_argument("--part", choices=["rm", "gen", "all"], default="all")
    parser.add_argument("--fresh", action="store_true", help="delete the workspace first")
    args = parser.parse_args()
    workdir = workspace(args.workdir, args.fresh, tiny_recipe=True)
    if not (workdir / "data" / "manifest.json").is_file():
        print(f"prepare: {run(workdir, 'prepare', '--synthetic'):.0f} s")
    if args.part in ("rm", "all"):
        reward_part(workdir)
    if args.part in ("gen", "all"):
        if not trained_by_this_code(workdir / "runs" / "rm"):  # --part gen alone: the RM wins column's model
            run(workdir, "train-rm", "--overwrite")
        generator_part(workdir)


if __name__ == "__main__":
    main()
