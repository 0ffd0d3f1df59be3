"""A stock diffusers pipeline with `perfusion export`'s files, on a marketplace the tiny recipe was not tuned on
(docs/benchmarks.md, "Your diffusers stack").

    .venv/bin/python scripts/export_check.py [--workdir /tmp/export-check] [--base-model tiny|tiny-sdxl]
        [--style studio] [--seed 5] [--fresh]

Prepares the draw, trains the tiny recipe's generator (`train-gen --group-size 5`), exports it, then draws the
held-out (merchant, prompt) pairs `eval gen` draws with diffusers' AutoPipelineForText2Image, without and with the
exported adapter, from the seeds `eval gen` uses (the eval-gen section's pairs, images, steps and guidance), and
prints the oracle's verdict as a markdown row beside `eval gen`'s for PerFusion's own pipeline.
"""

from __future__ import annotations

import argparse
import json
import time

from tables import draw_arguments, read, run, trained_by_this_code, workspace

from perfusion_cli.config import TINY_RECIPE, load_recipe
from perfusion_cli.evaluation.stock_pipeline import stock_pipeline_gain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    draw_arguments(parser, "/tmp/export-check")
    parser.add_argument("--base-model", default="tiny")
    args = parser.parse_args()
    workdir = workspace(args.workdir, args.fresh, tiny_recipe=True)
    if not (workdir / "data" / "manifest.json").is_file():
        run(workdir, "prepare", "--synthetic", "--style", args.style, "--seed", args.seed)
    gen = workdir / "runs" / f"gen-{args.base_model}"
    if not trained_by_this_code(gen):
        run(workdir, "train-gen", "--group-size", "5", "--base-model", args.base_model, "--out", str(gen), "--overwrite")
    evaluation = f"eval-gen-{args.base_model}.json"
    run(workdir, "eval", "gen", "--model", str(gen), "--json", evaluation)
    export = workdir / "outputs" / f"export-{args.base_model}"
    run(workdir, "export", "--model", str(gen), "--out", str(export))
    settings = load_recipe(TINY_RECIPE)["eval-gen"]
    resolution = json.loads((gen / "run.json").read_text())["config"]["resolution"]
    started = time.perf_counter()
    stock = stock_pipeline_gain(export, workdir / "data", args.base_model, resolution, pairs=settings["max_pairs"],
                                steps=settings["steps"], guidance=settings["guidance"],
                                images_per_pair=settings["n_per_prompt"])
    seconds = time.perf_counter() - started
    ours = read(workdir, evaluation)
    print(f"\nmarketplace: style {args.style}, seed {args.seed}; base {args.base_model}; {stock['pairs']} pairs, "
          f"{settings['steps']} steps, guidance {settings['guidance']}\n")
    print("| pipeline | oracle, base → personalized | wins |")
    print("|---|---|---|")
    print(f"| perfusion (`eval gen`, {ours['images_per_pair']} image(s) per pair) | {ours['models']['base']['oracle']:.3f} → "
          f"{ours['models']['perfusion']['oracle']:.3f} | {ours['win_rate']['oracle']:.2f} |")
    print(f"| stock AutoPipelineForText2Image + export ({settings['n_per_prompt']} image(s) per pair, {seconds:.0f} s) | "
          f"{stock['base']:.3f} → {stock['personalized']:.3f} | {stock['win_rate']:.2f} |")


if __name__ == "__main__":
    main()
