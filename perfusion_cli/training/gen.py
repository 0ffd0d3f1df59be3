"""``perfusion train-gen``: PerFusion's branch trained with the group-level Diffusion-DPO objective.

The objective (``objective.py``) is the loss of one batch; this module builds the frozen model, the
branch and the optional reward model for positives, and hands them to the shared training loop. The
run's ``model/`` is the branch's ``save_pretrained`` (its config names the base model and resolution),
which ``PerFusionPipeline.from_run`` reads.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.io import atomic_dir
from perfusion_cli.latents import check_tag
from perfusion_cli.models.backbones import base_reference
from perfusion_cli.models.families import load_frozen
from perfusion_cli.models.reward import load_reward_for
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.progress import Progress
from perfusion_cli.training.loop import TrainTask, run_training, start_run


def error_ratio_warning(limit: float):
    """train-gen's diagnosis of a row: the branch's denoising error climbing above the reference's."""

    def diagnose(row: dict) -> list[str]:
        ratio = row.get("err_ratio")
        if ratio is not None and ratio > limit:
            return [f"error_ratio: the personalized model's denoising error is {ratio:.2f}× the frozen reference's "
                    f"(limit {limit:g}): it is leaving the base model (reward hacking); lower --lr or raise --beta"]
        return []

    return diagnose


def train_generator(config: GenTrainConfig, data_dir: Path, run_dir: Path, resume: str | None = None,
                    progress: Progress | None = None, command: str = "", overwrite: bool = False,
                    reward=None, online: Callable | None = None) -> dict:
    """``reward``: the reward of ``--positives reward`` or ``--online`` as an object instead of the run
    ``config.reward`` names: anything with ``score(prompts, images [B, K, 3, H, W], features [B, F], valid)
    → [B, K]`` (a ``RewardModel``, or a reward of your own). ``online``: how an online config changes the task
    (``online.task.make_online``; the layers above pass it, since drawing needs the pipeline and judging the
    evaluation: ``perfusion_cli.online.task.train_generator`` is this function with it)."""
    if config.online and online is None:
        raise ConfigError("an online config needs perfusion_cli.online.task.train_generator (or online=make_online)")
    manifest = load_manifest(data_dir)
    needs_reward = config.positives == "reward" or config.online
    if needs_reward and not config.reward and reward is None:
        what = "--online" if config.online else "--positives reward"
        raise ConfigError(f"{what} needs --reward RM_RUN (a trained reward model: perfusion train-rm)")
    folder, accelerator = start_run(config, run_dir, resume, overwrite)
    device = accelerator.device
    if needs_reward and reward is None:
        reward = load_reward_for(config.reward, manifest.vocab, data_dir, device, "reward model")
    stored = manifest.raw.get("latents") if config.stored_latents else None
    frozen = load_frozen(config.base_model, device, config.mixed_precision, attention=config.attention,
                         share_encoder=config.share_encoder, cache=config.cache_latents, resolution=config.resolution,
                         fingerprints=stored is not None)
    if stored is not None:
        check_tag(stored, config.base_model, frozen, config.resolution)
        if not config.online:  # every prompt's text is in the shards; on-policy draws encode their prompts
            frozen.release_text_encoders()
    branch = frozen.create_branch(config, manifest.vocab, base_reference(config.base_model)).to(device)
    objective = GroupDPOObjective(frozen, config, reward if config.positives == "reward" else None,
                                  accelerator.autocast)

    def load_trainable_state(state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = branch.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError("the checkpoint's weights do not match this branch: resume with the settings the "
                                  "run started with")

    def save_final(path: Path) -> None:
        with atomic_dir(path) as tmp:
            branch.save_pretrained(tmp, safe_serialization=True)

    spec = StreamSpec(Path(data_dir), "train", config.batch_size, config.group_size, config.resolution,
                      num_workers=config.num_workers, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                      skip_bad_shards=config.skip_bad_shards, stored_latents=stored is not None)
    task = TrainTask(model=branch, param_groups=[{"params": [p for p in branch.parameters() if p.requires_grad],
                                                  "lr": config.lr}],
                     loss=objective, trainable_state=lambda: dict(branch.state_dict()),
                     load_trainable_state=load_trainable_state, save_final=save_final,
                     diagnose=error_ratio_warning(config.warn_error_ratio))
    if config.online:
        online(task, config, frozen, branch, reward, manifest, accelerator)
    meta = {"kind": "generator", "command": command, "base_model": config.base_model, "config": asdict(config),
            "stored_latents": stored is not None,
            "shared_encoder": frozen.share_encoder and branch.residual_only, "branch": config.branch,
            "data": {"path": str(Path(data_dir).resolve()), "source": manifest.source}}
    return run_training(task, config, spec, folder, resume, meta, accelerator, manifest, progress)
