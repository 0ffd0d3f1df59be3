"""Taste gain at kept quality: the tiny generator recipe and the options that keep it near the base,
on a marketplace drawn differently from the one the tiny recipe was tuned on (docs/benchmarks.md).

    .venv/bin/python scripts/kept_quality.py [--workdir /tmp/kept] [--style studio] [--seed 5] [--fresh]
        [--variant NAME ...]

The tiny recipe was tuned on the catalogue draw (`--style catalogue --seed 0`, the recipe's own marketplace).
By default this prepares another draw (the studio renderer, seed 5: other silhouettes, textures and canvas,
candidates the tiny base does not draw), trains a reward model for the PerFusionRM column, then for every
variant runs `train-gen` with the tiny recipe plus the variant's flags and `eval gen` on 48 held-out pairs
(with a montage report), and prints one markdown row per variant. Every raw result stays as JSON in the
workspace. A run trained by the code running now (its run.json's clean commit holds this working tree's
perfusion_cli/ and recipes/) is not trained again, nor its `eval-<name>.json` re-measured, so an interrupted
table resumes; anything from other code is measured again (`--fresh` re-measures everything).
"""

from __future__ import annotations

import argparse
import re

from tables import (HEADER, ROOT, draw_arguments, measured_by_this_code, prepared_draw, quality_cells, read, run,
                    trained_by_this_code)

# the previous tiny recipe: the ControlNet branch at batch 4 with no anchor
CONTROLNET_4 = ["--branch", "controlnet", "--batch-size", "4", "--kl-weight", "0"]
CONTROLNET_16 = ["--branch", "controlnet", "--batch-size", "16"]
VARIANTS = {  # flags on top of recipes/tiny-cpu.toml (adapter, batch 8, lr 1e-3, β 500, KL κ 100, 400 steps)
    "tiny recipe: adapter, batch 8, KL κ 100": [],
    "adapter, batch 8, no KL anchor": ["--kl-weight", "0"],
    "adapter, batch 16, KL κ 100": ["--batch-size", "16"],
    "adapter, batch 16, KL κ 30": ["--batch-size", "16", "--kl-weight", "30"],
    "ControlNet, batch 4, no anchor (the previous recipe)": CONTROLNET_4,
    "ControlNet, batch 4, β 1000": [*CONTROLNET_4, "--beta", "1000"],
    "ControlNet, batch 4, β 2000": [*CONTROLNET_4, "--beta", "2000"],
    "ControlNet, batch 4, lr 5e-4": [*CONTROLNET_4, "--lr", "5e-4"],
    "ControlNet, batch 4, cosine lr": [*CONTROLNET_4, "--lr-schedule", "cosine"],
    "ControlNet, batch 4, SFT anchor λ 200": [*CONTROLNET_4, "--sft-weight", "200"],
    "ControlNet, batch 4, SFT λ 200, cosine lr": [*CONTROLNET_4, "--sft-weight", "200", "--lr-schedule", "cosine"],
    "ControlNet, batch 16, no anchor": [*CONTROLNET_16, "--kl-weight", "0"],
    "ControlNet, batch 16, SDPO safeguard μ 0": [*CONTROLNET_16, "--kl-weight", "0", "--safeguard", "0"],
    "ControlNet, batch 16, KL κ 10": [*CONTROLNET_16, "--kl-weight", "10"],
    "ControlNet, batch 16, KL κ 20": [*CONTROLNET_16, "--kl-weight", "20"],
    "ControlNet, batch 16, KL κ 30": [*CONTROLNET_16, "--kl-weight", "30"],
    "ControlNet, batch 16, KL κ 50": [*CONTROLNET_16, "--kl-weight", "50"],
    # on the tiny SDXL base: the SD recipe as it is, and stronger KL anchors (recipes/tiny-sdxl-cpu.toml: κ 175)
    "tiny SDXL: adapter, batch 8, KL κ 100": ["--base-model", "tiny-sdxl", "--kl-weight", "100"],
    "tiny SDXL: adapter, batch 8, KL κ 150": ["--base-model", "tiny-sdxl", "--kl-weight", "150"],
    "tiny SDXL recipe: adapter, batch 8, KL κ 175": ["--base-model", "tiny-sdxl", "--kl-weight", "175"],
    "tiny SDXL: adapter, batch 8, KL κ 200": ["--base-model", "tiny-sdxl", "--kl-weight", "200"],
    "tiny SDXL: adapter, batch 8, KL κ 300": ["--base-model", "tiny-sdxl", "--kl-weight", "300"],
    "tiny SDXL: adapter, batch 8, KL κ 1000": ["--base-model", "tiny-sdxl", "--kl-weight", "1000"],
    # on the tiny FLUX base: the SD recipe as it is (σ's logit-normal mean 0), and recipes/tiny-flux-cpu.toml (mean 2)
    "tiny FLUX: the SD recipe (σ logit mean 0)": ["--base-model", "tiny-flux"],
    "tiny FLUX recipe: σ logit mean 2": ["--recipe", str(ROOT / "recipes" / "tiny-flux-cpu.toml")],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def row(name: str, seconds: float, summary: dict) -> str:
    return f"| {name} | {quality_cells(summary)} | {seconds:.0f} s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    draw_arguments(parser, "/tmp/kept")
    parser.add_argument("--taste", default="colour")
    parser.add_argument("--variant", action="append", help="Only these variants (names as in VARIANTS, or their run-folder slugs).")
    args = parser.parse_args()
    workdir = prepared_draw(args)
    reward = workdir / "runs" / "rm"
    print(f"\nmarketplace: style {args.style}, taste {args.taste}, seed {args.seed}\n")
    print(f"| variant | {HEADER} | train |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, flags in VARIANTS.items():
        if args.variant and name not in args.variant and slug(name) not in args.variant:
            continue
        out, report = f"runs/gen-{slug(name)}", f"eval-{slug(name)}.json"
        if not trained_by_this_code(workdir / out):
            run(workdir, "train-gen", "--group-size", "5", "--out", out, "--overwrite", *flags)
        if not measured_by_this_code(workdir / report, workdir / out, reward):
            run(workdir, "eval", "gen", "--model", out, "--json", report, "--report", f"outputs/report-{slug(name)}")
        print(row(name, read(workdir / out, "run.json")["seconds"], read(workdir, report)), flush=True)


if __name__ == "__main__":
    main()
