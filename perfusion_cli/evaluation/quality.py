"""Quality kept beside taste gained (DESIGN §6): a taste gain is reported only with these.

- product integrity per image (``data.oracle.integrity``): a clean, plain, light background, and one
  intact product that does not run off the frame — what makes a candidate a product photo;
- the denoising error of PerFusion over the frozen reference's on held-out groups (same noise,
  same timesteps): near 1 the model still draws what the base draws; well above 1 it has left it;
- ``kept_quality``: the headline, "taste gain at kept quality", from the evaluation summary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from perfusion_cli.config import EvalGenConfig, GenTrainConfig
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.marketplace.oracle import integrity
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.pipeline import PerFusionPipeline

INTEGRITY = ("clean_background", "intact")


def integrity_scores(metric: str, images: torch.Tensor) -> torch.Tensor:
    """images [N, 3, H, W] in [0, 1] → 1.0 where the check holds, else 0.0."""
    return torch.tensor([float(getattr(integrity(image.numpy()), metric)) for image in images.cpu()])


@torch.no_grad()
def denoising_errors(pipeline: PerFusionPipeline, data_dir: Path, config: EvalGenConfig) -> dict:
    """PerFusion's and the reference's denoising errors on ``max_pairs`` groups of the split (all of them when it
    is unset or larger), read in batches of at most 8 that add up to it where they can."""
    frozen = pipeline.frozen_parts()
    objective = GroupDPOObjective(frozen, GenTrainConfig(base_model=pipeline.base_model))
    manifest = load_manifest(data_dir)
    batches = -(-config.max_pairs // 8) if config.max_pairs else 1  # a batch of 8 for max_pairs 1 encoded 7 in vain
    size = -(-config.max_pairs // batches) if config.max_pairs else 8
    spec = StreamSpec(Path(data_dir), config.split, size, manifest.max_candidates, pipeline.default_resolution)
    generator_state = torch.get_rng_state()
    torch.manual_seed(config.seed)
    totals, groups = {"model_err": 0.0, "ref_err": 0.0}, 0
    try:
        for batch in eval_batches(spec):
            _, logs = objective(pipeline.branch, batch.to(pipeline.device))
            for key in totals:
                totals[key] += logs[key] * len(batch)
            groups += len(batch)
            if config.max_pairs and groups >= config.max_pairs:
                break
    finally:
        torch.set_rng_state(generator_state)
    if not groups:
        return {"unavailable": f"split {config.split!r} has no groups"}
    model_err, ref_err = totals["model_err"] / groups, totals["ref_err"] / groups
    return {"groups": groups, "model_err": model_err, "ref_err": ref_err, "ratio": model_err / ref_err}


def kept_quality(summary: dict) -> dict:
    """Taste gain beside the quality it kept, from ``eval gen``'s summary (None where not measured)."""
    base, ours = summary["models"]["base"], summary["models"]["perfusion"]

    def delta(metric):
        return None if base.get(metric) is None or ours.get(metric) is None else ours[metric] - base[metric]

    def ratio(a, b):
        return None if a is None or b in (None, 0) else a / b

    fid = summary.get("fid", {})
    return {
        "oracle_gain": delta("oracle"), "oracle_win_rate": summary["win_rate"].get("oracle"),
        "perfusionrm_win_rate": summary["win_rate"].get("perfusionrm"),
        "clean_background_kept": ratio(ours.get("clean_background"), base.get("clean_background")),
        "intact_kept": ratio(ours.get("intact"), base.get("intact")),
        "clip_score_delta": delta("clip"), "fid_ratio": ratio(fid.get("perfusion"), fid.get("base")),
        "denoising_error_ratio": summary.get("denoising", {}).get("ratio"),
    }
