"""``perfusion train-rm``: PerFusionRM on groups with the Plackett-Luce loss (DESIGN §4-§6).

The CLIP backbone and the plug-ins train together (``--freeze-backbone`` trains only the plug-ins),
with their own learning rates: new, zero-initialized plug-ins want a much larger step than a
pre-trained backbone. ``--no-plugin`` trains the same CLIP on the same groups and loss without
personalization, the PickScore-style baseline; ``--loss bt`` swaps in pairwise Bradley-Terry.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import gather_object

from perfusion_cli.config import RMTrainConfig
from perfusion_cli.data.loader import StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.losses import bradley_terry_loss, plackett_luce_loss
from perfusion_cli.models.reward import RewardModel, create_reward_model, load_reward_model
from perfusion_cli.progress import Progress
from perfusion_cli.reward_scoring import ranking_metrics, score_split
from perfusion_cli.training.loop import TrainTask, run_training, start_run

LOSSES = {"pl": plackett_luce_loss, "bt": bradley_terry_loss}


def train_reward_model(config: RMTrainConfig, data_dir: Path, run_dir: Path, resume: str | None = None,
                       progress: Progress | None = None, command: str = "", overwrite: bool = False) -> dict:
    manifest = load_manifest(data_dir)
    if config.plugin is False and config.freeze_backbone:
        raise ConfigError("--no-plugin with --freeze-backbone leaves nothing to train")
    folder, accelerator = start_run(config, run_dir, resume, overwrite)
    model = create_reward_model(config.base_model, manifest.vocab, config.plugin, config.shared_plugin,
                                config.plugin_hidden, config.merchant, config.taste_head,
                                config.prompt_scale)
    if config.init_from:
        _start_from(model, config.init_from, manifest, data_dir)
    module = model.module.to(accelerator.device)
    if config.gradient_checkpointing:
        module.enable_gradient_checkpointing()
    if config.freeze_backbone:
        module.clip.requires_grad_(False)
    if module.own_temperature:
        module.clip.logit_scale.requires_grad_(False)  # the prompt's own temperature replaces it (DDP: unused)
    plugin = [p for name, p in module.named_parameters() if not name.startswith("clip.")]
    backbone = [p for p in module.clip.parameters() if p.requires_grad]
    groups = [g for g in ({"params": plugin, "lr": config.lr},
                          {"params": backbone, "lr": config.backbone_lr or config.lr}) if g["params"]]
    # a checkpoint holds the trained parameters and what training changes besides weights: the taste
    # head's running statistics
    persistent = module.state_dict().keys()
    checkpointed = {name for name, p in module.named_parameters() if p.requires_grad}
    checkpointed |= {name for name, _ in module.named_buffers() if name in persistent and not name.startswith("clip.")}
    loss_fn = LOSSES[config.loss]
    truncated = {"prompts": 0}

    def loss(wrapped, batch):
        ids, mask, cut = model.tokens(batch.prompts, accelerator.device)
        truncated["prompts"] += cut
        images = batch.images
        if config.augment_flip:
            flip = torch.rand(images.shape[:2], device=images.device) < 0.5
            images = torch.where(flip[..., None, None, None], images.flip(-1), images)
        scores = wrapped(ids, mask, images, batch.features, batch.valid)
        return loss_fn(scores, batch.selected, batch.valid), {"truncated_prompts": truncated["prompts"]}

    def trainable_state() -> dict[str, torch.Tensor]:
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        return {name: tensors[name] for name in sorted(checkpointed)}

    def load_trainable_state(state: dict[str, torch.Tensor]) -> None:
        if set(state) != checkpointed:
            raise CheckpointError("the checkpoint's weights do not match this model: resume with the settings "
                                  "the run started with")
        module.load_state_dict(state, strict=False)

    def evaluate() -> dict[str, float]:
        module.eval()
        scores = score_split(model, data_dir, "val", batch_size=config.batch_size, device=accelerator.device,
                             max_groups=config.eval_max_groups, skip_bad_shards=config.skip_bad_shards)
        gathered = gather_object([scores])
        merged = gathered[0]
        for part in gathered[1:]:
            merged = merged.extend(part)
        metrics = ranking_metrics(merged)
        return {"map": metrics["map"], "gauc": metrics["gauc"]}

    spec = StreamSpec(Path(data_dir), "train", config.batch_size, config.group_size, module.image_size,
                      num_workers=config.num_workers, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                      skip_bad_shards=config.skip_bad_shards)
    task = TrainTask(model=module, param_groups=groups, loss=loss, trainable_state=trainable_state,
                     load_trainable_state=load_trainable_state, save_final=model.save, evaluate=evaluate)
    meta = {"kind": "reward", "command": command, "base_model": config.base_model, "config": asdict(config),
            "data": {"path": str(Path(data_dir).resolve()), "source": manifest.source}}
    return run_training(task, config, spec, folder, resume, meta, accelerator, manifest, progress)


def _start_from(model: RewardModel, source: str, manifest, data_dir: Path) -> None:
    """``init_from``: the weights (and taste-head statistics) of a trained run, which must read this data's
    vocabulary and share this run's architecture."""
    trained = load_reward_model(source)
    trained.vocab.require_same(manifest.vocab, f"reward model given to --init-from ({source})", data_dir)
    try:
        model.module.load_state_dict(trained.module.state_dict())
    except RuntimeError:
        raise CheckpointError(f"--init-from {source}: that model was built with other settings (base model, "
                              f"plug-in, taste head or widths) than this run: use the recipe it was trained "
                              f"with") from None
