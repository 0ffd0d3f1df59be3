"""Personalization at the price of the base model: every branch kind and the reuse settings that matter,
on one marketplace with one training budget and the same seeds (docs/benchmarks.md).

    .venv/bin/python scripts/branch_table.py [--workdir /tmp/branches] [--fresh] [--recipe tiny-cpu]

In one workspace (the recipe's synthetic marketplace; the draw the recipes are tuned on): prepare, train-rm
(for the PerFusionRM column), then for every branch kind `train-gen --branch KIND` with the recipe's budget,
`eval gen` (oracle, PerFusionRM, CLIP score, FID, integrity against the base from the same seeds), `bench`
(CPU seconds per image, base and personalized in one run, and every reuse setting) and `bench --plan --recipe
sd15-industrial --branch KIND` (GFLOPs per image and peak memory at SD 1.5 512²). Reuse settings are evaluated
on the residual kinds (controlnet, xs): the adapter's tokens act inside every U-Net call, so reusing them
saves nothing. Prints one markdown table; every raw result stays as JSON in the workspace. A run trained by
the code running now (its run.json's clean commit holds this working tree's perfusion_cli/ and recipes/) is
not trained again, nor a result measured on it re-measured, so an interrupted table resumes; anything from
other code is measured again (`--fresh` re-measures everything). The plans are counted every time (17 s each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tables import HEADER, measured_by_this_code, quality_cells, read, run, trained_by_this_code, workspace

KINDS = ("controlnet", "xs", "adapter")
# bench's names for the reuse settings (perfusion_cli.benchmark.CHEAP) → (--branch-every, --branch-until)
REUSE = {"every 2nd step": (2, 1.0), "first half only": (1, 0.5), "every 2nd step, first 60 %": (2, 0.6)}
REUSED_KINDS = ("controlnet", "xs")


def plan(workdir: Path, kind: str, every: int, until: float) -> dict:
    name = f"plan-{kind}-{every}-{until}.json"
    run(workdir, "bench", "--plan", "--recipe", "sd15-industrial", "--branch", kind, "--branch-every", str(every),
        "--branch-until", str(until), "--json", name)
    jobs = {job["job"]: job for job in read(workdir, name)["jobs"]}
    return {"base": jobs["generate (base)"], "perfusion": jobs["generate (PerFusion)"], "train": jobs["train-gen"]}


def row(name: str, summary: dict, seconds: float, seconds_ratio: float, counted: dict) -> str:
    flops = counted["perfusion"]["gflops"] / counted["base"]["gflops"]
    return (f"| {name} | {quality_cells(summary)} | {seconds:.3f} (×{seconds_ratio:.2f}) | "
            f"{counted['train']['trainable_parameters'] / 1e6:,.1f} M | {counted['perfusion']['gflops'] / 1e3:,.1f} "
            f"(×{flops:.2f}) | {counted['perfusion']['peak_gib']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/branches"))
    parser.add_argument("--recipe", default="tiny-cpu")
    parser.add_argument("--fresh", action="store_true", help="Start from an empty workspace.")
    args = parser.parse_args()
    workdir = workspace(args.workdir, args.fresh)
    recipe = ["--recipe", args.recipe]
    if not (workdir / "data" / "manifest.json").is_file():
        run(workdir, "prepare", "--synthetic", *recipe)
    reward = workdir / "runs" / "rm"
    if not trained_by_this_code(reward):
        run(workdir, "train-rm", *recipe, "--overwrite")
    print(f"\n| branch (reuse) | {HEADER} | CPU s/image, tiny (× base) | trainable at SD 1.5 | "
          "SD 1.5 TFLOPs/image (× base) | SD 1.5 peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        out = f"runs/gen-{kind}"
        if not trained_by_this_code(workdir / out):
            run(workdir, "train-gen", *recipe, "--group-size", "5", "--branch", kind, "--out", out, "--overwrite")
        if not measured_by_this_code(workdir / f"eval-{kind}.json", workdir / out, reward):
            run(workdir, "eval", "gen", *recipe, "--model", out, "--json", f"eval-{kind}.json")
        if not measured_by_this_code(workdir / f"bench-{kind}.json", workdir / out):
            run(workdir, "bench", *recipe, "--model", out, "--json", f"bench-{kind}.json")
        seconds = read(workdir / out, "run.json")["seconds"]
        bench = read(workdir, f"bench-{kind}.json")
        sdpa = bench["generation"]["backends"]["sdpa"]
        print(row(f"**{kind}** (train {seconds:.0f} s)", read(workdir, f"eval-{kind}.json"),
                  sdpa["personalized"]["median"], sdpa["latency_ratio"], plan(workdir, kind, 1, 1.0)), flush=True)
        if kind not in REUSED_KINDS:
            continue
        for name, (every, until) in REUSE.items():
            report = f"eval-{kind}-{every}-{until}.json"
            if not measured_by_this_code(workdir / report, workdir / out, reward):
                run(workdir, "eval", "gen", *recipe, "--model", out, "--branch-every", str(every), "--branch-until",
                    str(until), "--json", report)
            cheap = bench["branch_reuse"]
            print(row(f"{kind}, {name}", read(workdir, report), cheap["seconds_per_image"][name],
                      cheap["ratio_to_base"][name], plan(workdir, kind, every, until)), flush=True)


if __name__ == "__main__":
    main()
