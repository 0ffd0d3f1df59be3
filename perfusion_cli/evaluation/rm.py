"""``perfusion eval rm``: MAP and GAUC of a reward model (or ``zero-shot:BASE``) on one split."""

from __future__ import annotations

from pathlib import Path

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.environment import pick_device
from perfusion_cli.errors import DataError
from perfusion_cli.model_card import record_evaluation
from perfusion_cli.models.reward import load_reward_for
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.reward_scoring import ranking_metrics, score_split


def evaluate_reward_model(source: str, data_dir: Path, config: EvalRMConfig, progress: Progress | None = None) -> dict:
    progress = progress or NullProgress()
    manifest = load_manifest(data_dir)
    device = pick_device(config.device)
    model = load_reward_for(source, manifest.vocab, data_dir, device, "reward model")
    progress.start(f"scoring {config.split} with {source}", manifest.groups(config.split))
    scores = score_split(model, data_dir, config.split, batch_size=config.batch_size, device=device,
                         skip_bad_shards=config.skip_bad_shards, progress=progress)
    progress.stop()
    metrics = ranking_metrics(scores, per_merchant=True)
    if not metrics["n_groups"]:
        skipped = f" ({len(scores.skipped_shards)} unreadable shard(s) skipped)" if scores.skipped_shards else ""
        raise DataError(f"no group of split {config.split!r} in {data_dir} could be scored{skipped} — re-run "
                        f"`perfusion prepare`")
    recorded = {key: metrics[key] for key in ("map", "gauc", "n_groups", "n_merchants")}
    record_evaluation(source, "eval rm", config.split, data_dir, {"split": config.split, **recorded})
    return {"model": str(source), "split": config.split, **metrics}
