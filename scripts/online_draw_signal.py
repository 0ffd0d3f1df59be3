"""Is the reward a signal on the groups `train-gen --online` draws? (docs/notes/benchmarks-history.md, "Online
training: the draws carry the taste, the loss does not take it".)

    .venv/bin/python scripts/online_draw_signal.py --workdir /tmp/rep13 --run off400 [--pairs 48] [--steps 8]

For up to PAIRS (merchant, prompt) pairs of the training split, draws a group of 5 from the run's model as an online
step draws it (DDIM, STEPS steps, guidance 3, η 0; one seed per candidate), and scores every candidate with the
workspace's reward model (runs/rm), the marketplace's oracle, the guard's judges (the tiny CLIP's prompt score, the
clean-background share) and the zero-shot tiny SigLIP. Prints the reward's rank correlation with the oracle within a
group, and what the top 2 of each ranking (the online run's positives) hold over their group's mean: the reward's,
the oracle's own (the ceiling), and the reward with the SigLIP prompt score added (both standardized per group).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from perfusion_cli.evaluation.gen import held_out_pairs, score_metric
from perfusion_cli.evaluation.scores import ClipScorer
from perfusion_cli.marketplace.synthetic import load_truth
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.pipeline import PerFusionPipeline

GROUP = 5


def draw(pipeline: PerFusionPipeline, pairs, steps: int, resolution: int) -> torch.Tensor:
    """[P, GROUP, 3, H, W] candidates, eight pairs a call."""
    out = []
    for start in range(0, len(pairs), 8):
        chunk = pairs[start:start + 8]
        features = torch.tensor([pair.features for pair in chunk]).repeat_interleave(GROUP, 0)
        images = pipeline([pair.prompt for pair in chunk for _ in range(GROUP)], features=features,
                          num_inference_steps=steps, guidance_scale=3.0, height=resolution, width=resolution,
                          output_type="pt", generator=[torch.Generator().manual_seed(1000 + start * GROUP + i)
                                                       for i in range(len(chunk) * GROUP)]).images
        out.append(images.view(len(chunk), GROUP, *images.shape[1:]))
    return torch.cat(out)


def standardized(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(1, keepdims=True)) / np.maximum(values.std(1, ddof=1, keepdims=True), 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--run", required=True, help="A train-gen run under WORKDIR/runs.")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    data, runs = args.workdir / "data", args.workdir / "runs"
    pipeline = PerFusionPipeline.from_run(runs / args.run)
    resolution = pipeline.default_resolution
    pairs = held_out_pairs(data, "train", args.pairs, resolution, by_process=False)
    images = draw(pipeline, pairs, args.steps, resolution)
    scores = {"reward": score_metric("perfusionrm", load_reward_model(runs / "rm"), pairs, images),
              "oracle": score_metric("oracle", load_truth(data), pairs, images),
              "clip": score_metric("clip", ClipScorer("tiny", "cpu"), pairs, images),
              "clean background": score_metric("clean_background", "clean_background", pairs, images),
              "siglip": score_metric("perfusionrm", load_reward_model("zero-shot:tiny-siglip"), pairs, images)}
    rho = np.mean([spearmanr(scores["reward"][p], scores["oracle"][p]).correlation for p in range(len(pairs))])
    print(f"{args.run}: {len(pairs)} pairs × {GROUP} draws, {args.steps} steps; oracle {scores['oracle'].mean():.3f}, "
          f"its spread within a group {scores['oracle'].std(1).mean():.3f}; Spearman(reward, oracle) within a group "
          f"{rho:.2f}")
    print("| top 2 by | oracle | CLIP score | clean background |\n|---|---|---|---|")
    rankings = {"the reward": scores["reward"], "the oracle (ceiling)": scores["oracle"],
                **{f"reward + {w:g} × SigLIP prompt score": standardized(scores["reward"])
                   + w * standardized(scores["siglip"]) for w in (1, 3)}}
    for name, ranking in rankings.items():
        top = np.argsort(-ranking, axis=1)[:, :2]
        held = [np.take_along_axis(scores[m], top, 1).mean(1) - scores[m].mean(1)
                for m in ("oracle", "clip", "clean background")]
        print(f"| {name} | {held[0].mean():+.3f} | {held[1].mean():+.2f} | {held[2].mean():+.3f} |")


if __name__ == "__main__":
    main()
