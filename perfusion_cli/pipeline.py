"""PerFusionPipeline: text-to-image with a merchant's personalized branch (DESIGN §2, §4).

A diffusers ``DiffusionPipeline`` that registers the frozen Stable-Diffusion components and the
``PersonalizedBranch``; ``save_pretrained`` / ``from_pretrained`` write and read the whole thing.
``from_run`` assembles one from a ``train-gen`` run (its ``model/`` is the branch, whose config names
the base model and resolution it was trained on): the one reader of a generator run, which
``generate``, ``eval gen``, ``bench`` and ``serve`` go through.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from perfusion_cli.data.merchants import profile_features
from perfusion_cli.errors import ConfigError
from perfusion_cli.models.backbones import SDComponents, load_sd
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.frozen_sd import vae_dtype
from perfusion_cli.models.text import TextConditions, encode_prompts
from perfusion_cli.runs import loading, model_folder


COMPUTE, REUSE, OFF = "compute", "reuse", "off"


def to_pil(image: torch.Tensor) -> Image.Image:
    """A [3, H, W] image in [0, 1] as an 8-bit PIL image (rounded): every PNG the toolkit writes."""
    return Image.fromarray(np.round(image.permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8))


def pipeline_output(latents: torch.Tensor, output_type: str, decode: Callable) -> ImagePipelineOutput:
    """The final latents as the caller asked: ``latent`` (undecoded), ``pt`` ([N, 3, H, W] in [0, 1]), ``np``
    ([N, H, W, 3]) or ``pil``."""
    if output_type == "latent":
        return ImagePipelineOutput(images=latents)
    images = decode(latents)
    if output_type == "pt":
        return ImagePipelineOutput(images=images)
    if output_type == "np":
        return ImagePipelineOutput(images=images.permute(0, 2, 3, 1).cpu().numpy())
    return ImagePipelineOutput(images=[to_pil(image) for image in images])


def merchant_features(vocab, merchant: dict | list[dict], batch: int) -> torch.Tensor:
    """[B, F] feature ids of one merchant profile (for every prompt) or one per prompt."""
    profiles = [merchant] * batch if isinstance(merchant, dict) else list(merchant)
    if len(profiles) != batch:
        raise ConfigError(f"merchant: {len(profiles)} profiles for {batch} prompts (give one, or one per prompt)")
    return torch.tensor([profile_features(vocab, profile) for profile in profiles])


def seeded_noise(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """The starting noise [B, ...] in fp32, image i from ``generator[i]`` (or all from one generator): the same seeds
    give the same start, base or personalized."""
    generators = generator if isinstance(generator, list) else [generator] * shape[0]
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators])


def merchant_condition(branch, features: torch.Tensor | None, embedding: torch.Tensor | None, size: tuple[int, int],
                       device, guided: bool) -> torch.Tensor | None:
    """The branch's condition for the merchant (``features`` or its ``embedding``), computed once; both halves of a
    guided batch get it. None without a merchant (the base's image)."""
    if features is None and embedding is None:
        return None
    u = embedding if embedding is not None else branch.merchant(features.to(device))
    cond = branch.condition_from_embedding(u.to(device, branch.dtype), size)
    return torch.cat([cond, cond]) if guided else cond


def branch_schedule(steps: int, every: int = 1, until: float = 1.0) -> list[str]:
    """Per denoising step: compute the branch, reuse its last output, or run the base alone."""
    if every < 1 or not 0 < until <= 1:
        raise ValueError(f"branch_every must be ≥ 1 and branch_until in (0, 1], got {every} and {until}")
    active = math.ceil(until * steps)
    return [OFF if index >= active else COMPUTE if index % every == 0 else REUSE for index in range(steps)]


class PerFusionPipeline(DiffusionPipeline):
    """SD 1.x/2.x (one text encoder) or SDXL (``text_encoder_2``/``tokenizer_2``, ``text_time`` conditions)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->branch->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, branch, text_encoder_2=None, tokenizer_2=None,
                 force_zeros_for_empty_prompt: bool = False):
        """``force_zeros_for_empty_prompt``: guidance's unconditional input is zeros, not the empty prompt's
        embedding (SDXL base's setting)."""
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, branch=branch, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        branch.attach(unet)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> "PerFusionPipeline":
        folder = model_folder(run_dir, "generator")
        return cls.from_branch(load_branch(folder, dtype), folder, device, dtype)

    @classmethod
    def from_branch(cls, branch, folder: Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> "PerFusionPipeline":
        """The pipeline of a run's loaded branch (``folder``: its ``model/``, named in errors)."""
        sd = load_sd(branch.config.base_model, dtype)
        sd.vae.to(vae_dtype(sd, dtype))  # SDXL's VAE decodes in fp32 (it overflows in fp16)
        scheduler = DPMSolverMultistepScheduler.from_config(sd.noise_scheduler.config)
        with loading(folder, "generator"):  # a branch whose layout is not its base's fails to attach
            pipeline = cls(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet, scheduler, branch, sd.text_encoder_2,
                           sd.tokenizer_2, sd.zero_empty_prompt)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(device)

    @classmethod
    def for_sampling(cls, frozen, branch) -> "PerFusionPipeline":
        """A run's frozen parts (``FrozenSD``) and its branch with a DDIM scheduler (a call's ``eta`` > 0 makes its
        steps stochastic): what ``train-gen --online`` draws its groups with."""
        sd = frozen.sd
        scheduler = DDIMScheduler.from_config(sd.noise_scheduler.config)
        pipeline = cls(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet, scheduler, branch, sd.text_encoder_2,
                       sd.tokenizer_2, sd.zero_empty_prompt)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def sd_components(self) -> SDComponents:
        """The frozen base as training code sees it (``FrozenSD``): bench's and eval's denoising errors."""
        return SDComponents(self.vae, self.text_encoder, self.tokenizer, self.unet,
                            DDPMScheduler.from_config(self.scheduler.config), "", self.text_encoder_2,
                            self.tokenizer_2, self.config.force_zeros_for_empty_prompt)

    def frozen_parts(self, share_encoder: bool = True, cache: bool = False):
        """The frozen base as the objective sees it (``FrozenSD``): eval's denoising errors, bench's train steps."""
        from perfusion_cli.models.frozen_sd import FrozenSD

        return FrozenSD(self.sd_components(), self.device, self.unet.dtype, share_encoder=share_encoder, cache=cache)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def denoiser(self) -> torch.nn.Module:
        """The frozen network the branch personalizes (bench trains a copy of it whole, as Diffusion-DPO does)."""
        return self.unet

    def attention_backends(self, available: dict) -> dict:
        """The attention processors ``bench`` may time this pipeline with: all of them."""
        return available

    def set_attention(self, processor_class) -> None:
        """One attention processor class on the U-Net, the VAE and the branch's own layers."""
        for module in (self.unet, self.vae):
            if module.attn_processors:
                module.set_attn_processor(processor_class())
        self.branch.attach(self.unet, processor_class)  # the branch's own layers, or the adapter's processors

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.text_encoder_2 is not None else [])

    @property
    def text_encoders(self) -> list:
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    @property
    def default_resolution(self) -> int:
        """The resolution the branch was trained at (else the U-Net's native size)."""
        return self.branch.config.resolution or self.unet.config.sample_size * self.vae_scale_factor

    @property
    def base_model(self) -> str:
        return self.branch.config.base_model

    def merchant_features(self, merchant: dict | list[dict], batch: int) -> torch.Tensor:
        """[B, F] feature ids of one merchant profile (for every prompt) or one per prompt."""
        return merchant_features(self.branch.vocab, merchant, batch)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[TextConditions, int]:
        return encode_prompts(self.tokenizers, self.text_encoders, prompts)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], merchant: dict | list[dict] | None = None,
                 features: torch.Tensor | None = None, merchant_embedding: torch.Tensor | None = None,
                 num_inference_steps: int = 30,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 personalization_scale: float = 1.0, output_type: str = "pil",
                 on_step: Callable[[int], None] | None = None, branch_every: int = 1,
                 branch_until: float = 1.0, eta: float = 0.0) -> ImagePipelineOutput:
        """Images for prompts; personalized by ``merchant`` (a line of ``merchants.jsonl``: ``merchant_id`` plus
        profile, or one per prompt), ``features`` [B, F] or ``merchant_embedding`` [B, d_u].

        With neither, this samples the frozen base model: the same seeds then give the
        non-personalized counterpart of a personalized image. ``branch_every`` N computes the branch on
        every N-th step and reuses its output in between; ``branch_until`` F runs it on the first
        fraction F of the steps only (the base model draws the rest). 1 and 1.0: every step.
        ``eta`` > 0 makes a DDIM scheduler's steps stochastic (its noise from ``generator``, else torch's global
        RNG): the on-policy sampler of ``train-gen --online``. ``output_type="latent"`` returns the final latents
        undecoded (``decode`` turns them into images).
        """
        # 1. inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if merchant is not None:
            features = self.merchant_features(merchant, batch)
        height, width = height or self.default_resolution, width or self.default_resolution
        personalized = features is not None or merchant_embedding is not None
        guided = guidance_scale > 1.0
        # 2. text: [uncond; cond] for classifier-free guidance
        text, _ = self.encode_prompt(prompts)
        if guided:
            empty = text.zeros_like() if self.config.force_zeros_for_empty_prompt else self.encode_prompt([""] * batch)[0]
            text = TextConditions.cat([empty, text])
        text = text.sized(height, width)
        # 3. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = (batch, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = seeded_noise(shape, generator)
        latents = latents.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        # 4. the merchant condition, once; applied to both halves of the guidance batch
        cond = merchant_condition(self.branch, features, merchant_embedding, shape[-2:], self.device, guided)
        schedule = branch_schedule(num_inference_steps, branch_every, branch_until) if personalized else None
        # 5. denoising loop
        extra: dict = {}
        step_kwargs = self._step_kwargs(eta, generator)
        for index, t in enumerate(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            if schedule is None or schedule[index] == OFF:
                extra = {}
            elif schedule[index] == COMPUTE:
                extra = self.branch(model_input, t, text, cond=cond, scale=personalization_scale)
            noise = self.unet(model_input, t, **text.unet_kwargs(), **extra).sample
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if on_step is not None:
                on_step(1)
        # 6. decode
        return pipeline_output(latents, output_type, self.decode)

    def _step_kwargs(self, eta: float, generator) -> dict:
        """What this scheduler's ``step`` takes of η and the generator (DDIM takes both, DPM-Solver neither)."""
        accepted = inspect.signature(self.scheduler.step).parameters
        if eta and "eta" not in accepted:
            raise ConfigError(f"eta {eta} needs a DDIM scheduler, not {type(self.scheduler).__name__}")
        kwargs = {"eta": eta} if "eta" in accepted else {}
        if eta and "generator" in accepted and not isinstance(generator, list):
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N, C, h, w] → images [N, 3, H, W] in [0, 1] (fp32)."""
        images = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return (images / 2 + 0.5).clamp(0, 1).float()
