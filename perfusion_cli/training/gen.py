"""``perfusion train-gen``: PerFusion with the group-level Diffusion-DPO loss (DESIGN §4, §5).

One step, for B groups of up to K candidates (only valid candidates are encoded):

1. VAE latents x_0 of every candidate and the prompt's text embedding (frozen; optionally cached);
2. one noise ε and one timestep t per group, shared by its candidates; x_t = add_noise(x_0, ε, t);
3. the frozen U-Net's encoder half once (no gradients), then its decoder twice: ε_ref without the
   branch, ε_θ with the branch's residuals (gradients reach only the branch and merchant encoder);
4. per-candidate errors ‖ε − ε̂‖² (mean over the latent), the implicit rewards
   r = −(β/2)(err_θ − err_ref), and the Plackett-Luce loss over each group's positives.

Positives are the logged selections (``--positives labels``) or the frozen PerFusionRM's top-k
(``--positives reward --reward RM_RUN``). ``--loss pairwise`` is Diffusion-DPO on every
(positive, negative) pair instead.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import GroupBatch, StreamSpec
from perfusion_cli.data.shards import load_manifest
from perfusion_cli.data.vocab import check_same_vocabulary
from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.io import atomic_dir
from perfusion_cli.losses import group_dpo_loss, implicit_rewards, pairwise_dpo_loss
from perfusion_cli.models.backbones import SDComponents, load_sd, tokenize
from perfusion_cli.models.branch import PersonalizedBranch
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.models.unet_halves import decode, encode, supports_split
from perfusion_cli.progress import Progress
from perfusion_cli.training.loop import TrainTask, create_accelerator, run_training

GEN_FILE = "perfusion.json"
LOSSES = {"group": group_dpo_loss, "pairwise": pairwise_dpo_loss}


def set_attention(sd: SDComponents, attention: str) -> None:
    """SDPA is diffusers' default on torch 2; xFormers when asked for and installed."""
    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise ConfigError("attention 'xformers' needs xformers: pip install 'perfusion[gpu]'") from None
        sd.unet.enable_xformers_memory_efficient_attention()
        sd.vae.enable_xformers_memory_efficient_attention()


class FrozenSD:
    """The frozen parts: latents, text embeddings, and ε_ref / ε_θ predictions from the U-Net."""

    def __init__(self, sd: SDComponents, device: torch.device, dtype: torch.dtype, share_encoder: bool,
                 cache: bool):
        self.sd = sd
        for module in (sd.vae, sd.text_encoder, sd.unet):
            module.requires_grad_(False).eval().to(device)
            if module.dtype != dtype:
                module.to(dtype=dtype)
        self.device, self.dtype = device, dtype
        self.share_encoder = share_encoder and supports_split(sd.unet)
        self.cache = cache
        self._latents: dict[tuple[str, int], torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}
        self.truncated_prompts = 0

    @torch.no_grad()
    def latents(self, images: torch.Tensor, keys: list[tuple[str, int]]) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] → scaled latent means [N, 4, h, w]."""
        missing = [i for i, key in enumerate(keys) if key not in self._latents] if self.cache else range(len(keys))
        fresh = {}
        if len(missing):
            pixels = images[list(missing)].to(self.device, self.dtype) * 2 - 1
            encoded = self.sd.vae.encode(pixels).latent_dist.mean * self.sd.vae.config.scaling_factor
            fresh = dict(zip(missing, encoded))
            if self.cache:
                self._latents.update({keys[i]: fresh[i] for i in missing})
        return torch.stack([fresh[i] if i in fresh else self._latents[key] for i, key in enumerate(keys)])

    @torch.no_grad()
    def text(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self._texts}) if self.cache else sorted(set(prompts))
        encoded = {}
        if missing:
            ids, _, truncated = tokenize(self.sd.tokenizer, missing)
            self.truncated_prompts += truncated
            encoded = dict(zip(missing, self.sd.text_encoder(ids.to(self.device))[0]))
            if self.cache:
                self._texts.update(encoded)
        return torch.stack([encoded.get(p, self._texts.get(p)) for p in prompts])

    def predictions(self, branch, noisy, timesteps, text, features) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε_θ with gradients into ``branch``, ε_ref without)."""
        unet = self.sd.unet
        down, mid = branch(noisy, timesteps, text, features=features)
        if self.share_encoder:
            with torch.no_grad():
                encoding = encode(unet, noisy, timesteps, text)
                reference = decode(unet, encoding)
            return decode(unet, encoding, down, mid), reference
        with torch.no_grad():
            reference = unet(noisy, timesteps, text).sample
        personalized = unet(noisy, timesteps, text, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
        return personalized, reference


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the U-Net predicts: ε, or the velocity for v-prediction models (SD 2.x)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError(f"prediction_type {kind!r} is not supported")


def _reward_positives(reward, batch: GroupBatch, top_k: int) -> torch.Tensor:
    """The frozen reward model's top-k candidates of each group (at least one left as a negative)."""
    with torch.no_grad():
        scores = reward.score(batch.prompts, batch.images, batch.features, batch.valid).float()
    scores = scores.masked_fill(~batch.valid, float("-inf"))
    k = torch.clamp(batch.valid.sum(1) - 1, max=top_k)  # [B]
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return (ranks < k[:, None]) & batch.valid


class GroupDPOObjective:
    """The loss of one batch of groups (steps 1-4 in the module docstring)."""

    def __init__(self, frozen: FrozenSD, config: GenTrainConfig, reward=None, autocast=None):
        self.frozen = frozen
        self.config = config
        self.reward = reward
        self.scheduler = frozen.sd.noise_scheduler
        self.loss_fn = LOSSES[config.loss]
        self.autocast = autocast or contextlib.nullcontext

    def __call__(self, branch, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device, valid = self.frozen.device, batch.valid
        rows = torch.arange(len(batch), device=device).repeat_interleave(valid.shape[1])[valid.flatten()]
        groups, slots = torch.nonzero(valid, as_tuple=True)
        keys = [(batch.session_ids[g], k) for g, k in zip(groups.tolist(), slots.tolist())]
        latents = self.frozen.latents(batch.images[valid], keys)
        text = self.frozen.text(batch.prompts)
        # one noise and one timestep per group, shared by its candidates
        noise = torch.randn((len(batch), *latents.shape[1:]), device=device, dtype=latents.dtype)[rows]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(batch),), device=device)[rows]
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(self.scheduler, latents, noise, timesteps).float()
        with self.autocast():
            personalized, reference = self.frozen.predictions(branch, noisy, timesteps, text[rows],
                                                              batch.features[rows])
        model_err = torch.zeros(valid.shape, device=device).masked_scatter(
            valid, (personalized.float() - target).pow(2).mean(dim=(1, 2, 3)))
        ref_err = torch.zeros(valid.shape, device=device).masked_scatter(
            valid, (reference.float() - target).pow(2).mean(dim=(1, 2, 3)))
        positive = _reward_positives(self.reward, batch, self.config.top_k) if self.reward else batch.selected
        loss = self.loss_fn(model_err, ref_err, positive, self.config.beta, valid)
        rewards = implicit_rewards(model_err, ref_err, self.config.beta).detach()
        pairs = (positive & valid).unsqueeze(2) & (valid & ~positive).unsqueeze(1)
        accuracy = ((rewards.unsqueeze(2) > rewards.unsqueeze(1)) & pairs).sum() / pairs.sum().clamp(min=1)
        return loss, {"model_err": model_err[valid].mean().item(), "ref_err": ref_err[valid].mean().item(),
                      "pair_accuracy": accuracy.item(), "truncated_prompts": self.frozen.truncated_prompts}


def create_frozen(config: GenTrainConfig, device: torch.device) -> FrozenSD:
    sd = load_sd(config.base_model)
    set_attention(sd, config.attention)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
    latent_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    if config.resolution % latent_scale:
        raise ConfigError(f"resolution {config.resolution} must be a multiple of {latent_scale} for this VAE")
    return FrozenSD(sd, device, weight_dtype, config.share_encoder, config.cache_latents)


def train_generator(config: GenTrainConfig, data_dir: Path, run_dir: Path, resume: str | None = None,
                    progress: Progress | None = None, command: str = "") -> dict:
    accelerator = create_accelerator(config)
    device = accelerator.device
    manifest = load_manifest(data_dir)
    frozen = create_frozen(config, device)
    branch = PersonalizedBranch.from_unet(frozen.sd.unet, manifest["features"], config.merchant, config.grid_size,
                                          config.grid_channels).to(device)
    if config.gradient_checkpointing:
        branch.controlnet.enable_gradient_checkpointing()
        frozen.sd.unet.enable_gradient_checkpointing()
    reward = None
    if config.positives == "reward":
        if not config.reward:
            raise ConfigError("--positives reward needs --reward RM_RUN (a trained reward model)")
        reward = load_reward_model(config.reward, device)
        check_same_vocabulary(reward.module.settings.features, manifest["features"], "reward model", data_dir)
    objective = GroupDPOObjective(frozen, config, reward, accelerator.autocast)

    def load_trainable_state(state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = branch.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError("the checkpoint's weights do not match this branch: resume with the settings the "
                                  "run started with")

    def save_final(path: Path) -> None:
        with atomic_dir(path) as tmp:
            branch.save_pretrained(tmp / "branch", safe_serialization=True)
            (tmp / GEN_FILE).write_text(json.dumps({
                "base_model": base_reference(config.base_model), "resolution": config.resolution,
                "attention": config.attention, "features": manifest["features"]}, indent=2))

    spec = StreamSpec(Path(data_dir), "train", config.batch_size, config.group_size, config.resolution,
                      num_workers=config.num_workers, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                      skip_bad_shards=config.skip_bad_shards)
    task = TrainTask(model=branch, param_groups=[{"params": [p for p in branch.parameters() if p.requires_grad],
                                                  "lr": config.lr}],
                     loss=objective, trainable_state=lambda: dict(branch.state_dict()),
                     load_trainable_state=load_trainable_state, save_final=save_final)
    meta = {"kind": "generator", "command": command, "base_model": config.base_model, "config": asdict(config),
            "shared_encoder": frozen.share_encoder,
            "data": {"path": str(Path(data_dir).resolve()), "source": manifest["source"]}}
    return run_training(task, config, spec, Path(run_dir), resume, meta, accelerator, progress)


def base_reference(base_model: str) -> str:
    """How a run records its base: hub ids and ``tiny`` as given, local folders as absolute paths."""
    path = Path(base_model)
    return str(path.resolve()) if base_model != "tiny" and path.exists() else base_model
