"""FlowPerFusionPipeline: text-to-image with a merchant's adapter on a flow transformer (FLUX.1, SD 3.5).

``PerFusionPipeline``'s call, for the flow families: the same arguments (prompts, the merchant as a profile,
features or embedding, steps, guidance, seeds per image, ``on_step``, ``branch_every`` / ``branch_until``), the same
images from the same seeds when no merchant is given, so ``generate``, ``eval gen``, ``bench`` and ``serve`` read
a FLUX or SD 3.5 run as they read a U-Net's (``load_pipeline``). The sampler is diffusers' flow-matching Euler
(``FlowMatchEulerDiscreteScheduler`` with the base's shift; FLUX's resolution-dependent shift ``mu`` as
``FluxPipeline`` computes it); each step is the family's ``velocity`` (FLUX: packed latents and the embedded
guidance; SD 3.5: the prompt and the empty prompt as one guided batch). The merchant tokens reach the transformer
as ``joint_attention_kwargs``. diffusers' own ``FluxPipeline`` / ``StableDiffusion3Pipeline`` draw the same way
with the adapter attached (tests/unit/test_frozen_flux.py, test_sd3_adapter.py); this class exists for the call
the toolkit's commands make.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from perfusion_cli.models.frozen_sd import DTYPES
from perfusion_cli.models.frozen_transformer import FrozenTransformer
from perfusion_cli.noise.flow_sde import flow_sde_step
from perfusion_cli.pipeline import (OFF, REUSE, branch_schedule, merchant_condition, merchant_features,
                                    pipeline_output, seeded_noise)


class FlowPerFusionPipeline:
    def __init__(self, frozen: FrozenTransformer, branch):
        self.frozen, self.branch = frozen, branch
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(frozen.sd.noise_scheduler.config)
        branch.attach(frozen.sd.transformer)

    @classmethod
    def for_sampling(cls, frozen: FrozenTransformer, branch) -> "FlowPerFusionPipeline":
        """A run's frozen parts and its adapter: what ``train-gen --online`` draws its groups with (Euler steps from
        each candidate's noise, or the stochastic flow step where the call's ``eta`` > 0)."""
        return cls(frozen, branch)

    @property
    def device(self) -> torch.device:
        return self.frozen.device

    @property
    def tokenizer(self):
        return self.frozen.sd.tokenizer

    @property
    def base_model(self) -> str:
        return self.branch.config.base_model

    @property
    def default_resolution(self) -> int:
        """The resolution the adapter was trained at (else the transformer's native size)."""
        return self.branch.config.resolution or self.frozen.sd.transformer.config.sample_size * self.frozen.latent_scale

    def frozen_parts(self, share_encoder: bool = True, cache: bool = False) -> FrozenTransformer:
        """The frozen base as training code sees it: eval's denoising errors, bench's train steps (a transformer
        has no encoder half to share)."""
        self.frozen.cache = cache
        return self.frozen

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.frozen.sd.transformer

    @property
    def latent_channels(self) -> int:
        return self.frozen.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.frozen.latent_scale

    def attention_backends(self, available: dict) -> dict:
        """The flow transformers run diffusers' SDPA attention only (their processors, the adapter's around them)."""
        return {"sdpa": available["sdpa"]}

    def set_attention(self, processor_class) -> None:
        """Nothing to switch: SDPA is the one backend (``attention_backends``)."""

    def merchant_features(self, merchant: dict | list[dict], batch: int) -> torch.Tensor:
        """[B, F] feature ids of one merchant profile (for every prompt) or one per prompt."""
        return merchant_features(self.branch.vocab, merchant, batch)

    def _timesteps(self, steps: int, tokens: int) -> torch.Tensor:
        config = self.scheduler.config
        shift = {}
        if config.get("use_dynamic_shifting"):
            shift["mu"] = calculate_shift(tokens, config.get("base_image_seq_len", 256),
                                          config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                          config.get("max_shift", 1.15))
        self.scheduler.set_timesteps(steps, device=self.device, **shift)
        return self.scheduler.timesteps

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], merchant: dict | list[dict] | None = None,
                 features: torch.Tensor | None = None, merchant_embedding: torch.Tensor | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, height: int | None = None,
                 width: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, personalization_scale: float = 1.0, output_type: str = "pil",
                 on_step: Callable[[int], None] | None = None, branch_every: int = 1, branch_until: float = 1.0,
                 eta: float = 0.0) -> ImagePipelineOutput:
        """``PerFusionPipeline.__call__``'s arguments and outputs. ``guidance_scale``: FLUX.1-dev's embedded
        guidance, or SD 3.5's classifier-free scale. ``eta`` > 0 draws with the stochastic flow step
        (``noise.flow_sde``; its noise from ``generator``, else torch's global RNG) instead of Euler's."""
        frozen = self.frozen
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if merchant is not None:
            features = self.merchant_features(merchant, batch)
        height, width = height or self.default_resolution, width or self.default_resolution
        frozen.check_resolution(height)
        frozen.check_resolution(width)
        guided = frozen.guided_by_batch and guidance_scale > 1.0
        text = frozen.text(prompts)
        if guided:
            text = type(text).cat([frozen.text([""] * batch), text])
        shape = (batch, frozen.latent_channels, height // frozen.latent_scale, width // frozen.latent_scale)
        latents = (seeded_noise(shape, generator) if latents is None else latents).to(self.device, frozen.dtype)
        cond = merchant_condition(self.branch, features, merchant_embedding, shape[-2:], self.device, guided)
        schedule = branch_schedule(num_inference_steps, branch_every, branch_until) if cond is not None else None
        extra: dict = {}
        timesteps = self._timesteps(num_inference_steps, shape[-2] * shape[-1] // 4)
        for index, t in enumerate(timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            times = t.expand(len(model_input)).to(self.device)
            if schedule is None or schedule[index] == OFF:
                extra = {}
            elif schedule[index] != REUSE:
                extra = self.branch(model_input, times, text, cond=cond, scale=personalization_scale)
            velocity = frozen.velocity(model_input, times, text, extra or None, guidance_scale)
            if guided:
                unconditional, conditional = velocity.chunk(2)
                velocity = unconditional + guidance_scale * (conditional - unconditional)
            if eta:
                sigmas = self.scheduler.sigmas
                latents = flow_sde_step(latents, velocity, float(sigmas[index]), float(sigmas[index + 1]), eta,
                                        generator if isinstance(generator, torch.Generator) else None)
            else:
                latents = self.scheduler.step(velocity, t, latents).prev_sample
            if on_step is not None:
                on_step(1)
        return pipeline_output(latents, output_type, self.decode)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The transformer's latents [N, C, h, w] → images [N, 3, H, W] in [0, 1] (fp32): z / scale + shift."""
        vae = self.frozen.sd.vae
        z = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return (vae.decode(z.to(vae.dtype)).sample / 2 + 0.5).clamp(0, 1).float()

    def to(self, device) -> "FlowPerFusionPipeline":
        for module in (*self.frozen.sd.frozen_modules, self.branch):
            module.to(device)
        self.frozen.device = torch.device(device)
        return self

    def set_progress_bar_config(self, **_) -> None:
        """The diffusers pipelines' call (this one draws no progress bar)."""


def flow_pipeline(branch, folder: Path, device, dtype: torch.dtype) -> FlowPerFusionPipeline:
    """A flow transformer's run: its base's frozen parts loaded (``families.load_frozen``) under its adapter."""
    from perfusion_cli.models.families import load_frozen

    precision = next((name for name, value in DTYPES.items() if value == dtype), "no")
    frozen = load_frozen(branch.config.base_model, torch.device(device), precision)
    return FlowPerFusionPipeline(frozen, branch.to(device))
