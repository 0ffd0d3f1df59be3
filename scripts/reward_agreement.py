"""How well a workspace's reward model ranks the base model's own draws, against the synthetic oracle: the
signal an on-policy step (`train-gen --online`) trains on (docs/notes/benchmarks-history.md, "Online training").

    .venv/bin/python scripts/reward_agreement.py WORKSPACE [--run runs/gen] [--pairs 48] [--group 5]

Draws ``--group`` candidates for each of ``--pairs`` training (merchant, prompt) pairs from the base model of
the generator run (no merchant: the branch off), as an online step draws them (DDIM, 8 steps, guidance 3,
64²), scores them with <workspace>/runs/rm and with the oracle, and prints the within-group Spearman
correlation, how far the reward's top 2 lie above the group's mean oracle (and the oracle's own top 2), and
how often the oracle's best candidate is among the reward's top 2; then the share of clean backgrounds among the
draws and among the reward's top 2 (does the reward pay for a dirty frame?).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from scipy.stats import spearmanr

from perfusion_cli.evaluation.gen import held_out_pairs, score_metric
from perfusion_cli.evaluation.quality import integrity_scores
from perfusion_cli.marketplace.synthetic import load_truth
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.pipeline import PerFusionPipeline

TOP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--run", default="runs/gen", help="A generator run of the workspace (for its base model).")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--group", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = PerFusionPipeline.from_run(args.workspace / args.run)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    pairs = held_out_pairs(args.workspace / "data", "train", args.pairs, 64)
    images = torch.stack([pipeline([pair.prompt] * args.group, num_inference_steps=8, guidance_scale=3.0, height=64,
                                   width=64, output_type="pt").images for pair in pairs])
    reward = score_metric("perfusionrm", load_reward_model(args.workspace / "runs" / "rm"), pairs, images)
    oracle = score_metric("oracle", load_truth(args.workspace / "data"), pairs, images)
    rho = np.nanmean([spearmanr(r, o)[0] for r, o in zip(reward, oracle)])
    top = np.argsort(-reward, axis=1)[:, :TOP]
    lift = np.take_along_axis(oracle, top, axis=1).mean(1) - oracle.mean(1)
    ideal = np.sort(oracle, axis=1)[:, -TOP:].mean(1) - oracle.mean(1)
    found = np.mean([oracle[i].argmax() in top[i] for i in range(len(pairs))])
    print(f"{args.workspace}: within-group Spearman(reward, oracle) {rho:.3f}; the reward's top {TOP} lie "
          f"{lift.mean():+.3f} above the group's mean oracle (the oracle's own top {TOP}: {ideal.mean():+.3f}); "
          f"the oracle's best is in the reward's top {TOP} for {found:.0%} of groups; base oracle {oracle.mean():.3f}")
    clean = integrity_scores("clean_background", images.flatten(0, 1)).view(len(pairs), args.group).numpy()
    print(f"clean backgrounds: {clean.mean():.3f} of the draws, {np.take_along_axis(clean, top, axis=1).mean():.3f} "
          f"of the reward's top {TOP}")


if __name__ == "__main__":
    main()
