"""``perfusion train-gen``: PerFusion's branch trained with the group-level Diffusion-DPO objective.

The objective (``objective.py``) is the loss of one batch; this module builds the frozen model, the
branch and the optional reward model for positives, and hands them to the shared training loop. The
run's ``model/`` is the branch's ``save_pretrained`` (its config names the base model and resolution),
which ``PerFusionPipeline.from_run`` reads.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.io import atomic_dir
from perfusion_cli.latents import check_tag
from perfusion_cli.models.backbones import base_reference
from perfusion_cli.models.branch_kinds import create_branch
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.progress import Progress
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.hacking_guard import build_guard
from perfusion_cli.training.loop import TrainTask, run_training, start_run
from perfusion_cli.training.online import OnlineGroups, OnlineObjective


def error_ratio_warning(limit: float):
    """train-gen's diagnosis of a row: the branch's denoising error climbing above the reference's."""

    def diagnose(row: dict) -> list[str]:
        ratio = row.get("err_ratio")
        if ratio is not None and ratio > limit:
            return [f"error_ratio: the personalized model's denoising error is {ratio:.2f}× the frozen reference's "
                    f"(limit {limit:g}): it is leaving the base model (reward hacking); lower --lr or raise --beta"]
        return []

    return diagnose


def sampling_pipeline(frozen: FrozenSD, branch) -> PerFusionPipeline:
    """The frozen model and the branch as a pipeline with a DDIM scheduler (η > 0 makes its steps stochastic)."""
    sd = frozen.sd
    scheduler = DDIMScheduler.from_config(sd.noise_scheduler.config)
    pipeline = PerFusionPipeline(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet, scheduler, branch, sd.text_encoder_2,
                                 sd.tokenizer_2, sd.zero_empty_prompt)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def restore_online(online: OnlineObjective, guard):
    def load(state: dict) -> None:
        if "online" not in state or (guard is not None and "guard" not in state):
            raise CheckpointError("the checkpoint is not from an online run with this guard: resume with the "
                                  "settings the run started with")
        online.load_state(state["online"])
        if guard is not None:
            guard.load_state(state["guard"])

    return load


def train_generator(config: GenTrainConfig, data_dir: Path, run_dir: Path, resume: str | None = None,
                    progress: Progress | None = None, command: str = "", overwrite: bool = False,
                    reward=None) -> dict:
    """``reward``: the reward of ``--positives reward`` or ``--online`` as an object instead of the run
    ``config.reward`` names: anything with ``score(prompts, images [B, K, 3, H, W], features [B, F], valid)
    → [B, K]`` (a ``RewardModel``, or a reward of your own)."""
    manifest = load_manifest(data_dir)
    needs_reward = config.positives == "reward" or config.online
    if needs_reward and not config.reward and reward is None:
        what = "--online" if config.online else "--positives reward"
        raise ConfigError(f"{what} needs --reward RM_RUN (a trained reward model: perfusion train-rm)")
    folder, accelerator = start_run(config, run_dir, resume, overwrite)
    device = accelerator.device
    if needs_reward and reward is None:
        reward = load_reward_model(config.reward, device)
        reward.vocab.require_same(manifest.vocab, "reward model", data_dir)
    stored = manifest.raw.get("latents") if config.stored_latents else None
    frozen = FrozenSD.load(config.base_model, device, config.mixed_precision, config.attention, config.share_encoder,
                           config.cache_latents, config.resolution, fingerprints=stored is not None)
    if stored is not None:
        check_tag(stored, config.base_model, frozen, config.resolution)
    branch = create_branch(config, frozen.sd.unet, manifest.vocab, base_reference(config.base_model)).to(device)
    objective = GroupDPOObjective(frozen, config, reward if config.positives == "reward" else None,
                                  accelerator.autocast)
    online = guard = None
    if config.online:
        pipeline = sampling_pipeline(frozen, branch)
        groups = OnlineGroups(pipeline, reward, config, frozen.text)
        online = OnlineObjective(groups, GroupDPOObjective(frozen, config, None, accelerator.autocast),
                                 config.online_mix, accelerator.unwrap_model)
        guard = build_guard(config, pipeline, branch, reward, manifest, device)

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
    if online is not None:
        task.loss, task.guard, task.stop_on_hacking = online, guard, config.stop_on_hacking
        task.extra_state = lambda: {"online": online.state(), **({"guard": guard.state()} if guard else {})}
        task.load_extra_state = restore_online(online, guard)
    meta = {"kind": "generator", "command": command, "base_model": config.base_model, "config": asdict(config),
            "stored_latents": stored is not None,
            "shared_encoder": frozen.share_encoder and branch.residual_only, "branch": config.branch,
            "data": {"path": str(Path(data_dir).resolve()), "source": manifest.source}}
    return run_training(task, config, spec, folder, resume, meta, accelerator, manifest, progress)
