"""The frozen FLUX.1 parts PerFusion trains against: latents, text conditions, velocity predictions.

The flow family's counterpart of ``frozen_sd.FrozenSD``, with the same three calls the objective makes
(``latents``, ``text``, ``predictions``) and the same attributes (``device``, ``dtype``, ``latent_scale``,
``sd.noise_scheduler``: here a ``FlowMatchEulerDiscreteScheduler``, so ``noise.noise_process`` gives rectified
flow). What is FLUX's own stays here:

- latents: the 16-channel VAE's mean, shifted and scaled ((z − shift_factor)·scaling_factor, as FLUX's pipeline
  undoes it), kept unpacked [N, 16, h, w] so the noise process and the objective see the U-Nets' shapes; packed
  into 2×2 patches [N, h/2·w/2, 64] with their (0, row, column) position ids only around the transformer call
  (diffusers' ``FluxPipeline._pack_latents`` / ``_unpack_latents`` / ``_prepare_latent_image_ids``);
- text: T5's token embeddings (the joint attention's text stream, ``max_sequence_length`` tokens) and CLIP-L's
  pooled embedding (``pooled_projections``), as ``FluxPipeline.encode_prompt`` makes them;
- time: the transformer takes σ, the noise process's time / 1000 (the pipeline divides the same way);
- guidance: FLUX.1-dev's guidance embedding gets ``guidance`` (diffusers' FLUX trainers pass their
  ``--guidance_scale``, 3.5 by default); a base without the embedding (schnell) gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from perfusion_cli.errors import ConfigError
from perfusion_cli.models.backbones import tokenize
from perfusion_cli.models.flux_adapter import FluxMerchantAdapter
from perfusion_cli.models.text import TextConditions


def velocity(transformer: FluxTransformer2DModel, noisy: torch.Tensor, times: torch.Tensor, text: TextConditions,
             latent_scale: int, guidance: float, extra: dict | None = None) -> torch.Tensor:
    """The transformer's velocity at unpacked ``noisy`` [N, C, h, w] and noise-process ``times`` [N]; ``extra``: a
    branch's keyword arguments."""
    batch, channels, height, width = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
    text_ids = torch.zeros(text.hidden.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    embedded = None
    if transformer.config.guidance_embeds:
        embedded = torch.full((batch,), guidance, device=noisy.device, dtype=torch.float32)
    out = transformer(hidden_states=packed, encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                      timestep=times.to(noisy.dtype) / 1000, img_ids=image_ids, txt_ids=text_ids, guidance=embedded,
                      **(extra or {})).sample
    return FluxPipeline._unpack_latents(out, height * latent_scale, width * latent_scale, latent_scale)


class JointText(TextConditions):
    """A flow transformer's text: ``hidden`` the text stream's tokens, ``pooled`` the pooled embedding. No size
    conditions (``sized`` leaves it as it is)."""

    def sized(self, height: int, width: int) -> "JointText":
        return self


@dataclass
class FluxComponents:
    vae: AutoencoderKL
    text_encoder: torch.nn.Module  # CLIP-L: the pooled embedding
    tokenizer: object
    text_encoder_2: torch.nn.Module  # T5-XXL: the token embeddings
    tokenizer_2: object
    transformer: FluxTransformer2DModel
    noise_scheduler: FlowMatchEulerDiscreteScheduler
    max_sequence_length: int = 512
    guidance: float = 3.5

    @property
    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.text_encoder, self.text_encoder_2, self.transformer]


class FrozenFlux:
    def __init__(self, sd: FluxComponents, device: torch.device, dtype: torch.dtype):
        self.sd = sd
        for module in sd.frozen_modules:
            module.requires_grad_(False).eval().to(device, dtype)
        self.device, self.dtype = device, dtype
        self.latent_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
        self.truncated_prompts = 0
        self.share_encoder = False  # no encoder half: every call runs the whole transformer

    @property
    def latent_channels(self) -> int:
        return self.sd.vae.config.latent_channels

    @property
    def text_lengths(self) -> list[int]:
        """Tokens per text encoder: CLIP's 77, T5's ``max_sequence_length``."""
        return [min(77, self.sd.text_encoder.config.max_position_embeddings), self.sd.max_sequence_length]

    def create_branch(self, config, vocab, base_model: str):
        """The merchant adapter on the transformer's joint attention (the one branch kind on FLUX so far)."""
        if config.branch != "adapter":
            raise ConfigError(f"--branch {config.branch} is not built for FLUX yet: use --branch adapter")
        branch = FluxMerchantAdapter.from_transformer(self.sd.transformer, vocab, config.merchant,
                                                      config.adapter_tokens, base_model, config.resolution)
        branch.attach(self.sd.transformer)
        if config.gradient_checkpointing:  # gradients flow back through the frozen transformer
            self.sd.transformer.enable_gradient_checkpointing()
        return branch

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [−1, 1] → the transformer's latents [N, 16, h, w] (unpacked): (z − shift)·scale."""
        config = self.sd.vae.config
        mean = self.sd.vae.encode(pixels).latent_dist.mean
        return ((mean - (config.shift_factor or 0.0)) * config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def latents(self, images: torch.Tensor, keys=None) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] → the transformer's latents [N, 16, h, w] (unpacked)."""
        return self.encode_pixels(images.to(self.device, self.sd.vae.dtype) * 2 - 1)

    def text_from_ids(self, ids: list[torch.Tensor]) -> "JointText":
        """Token ids of CLIP and T5 → T5's token embeddings and CLIP's pooled embedding."""
        pooled = self.sd.text_encoder(ids[0], output_hidden_states=False).pooler_output
        hidden = self.sd.text_encoder_2(ids[1], output_hidden_states=False)[0]
        return JointText(hidden.to(self.dtype), pooled.to(self.dtype))

    @torch.no_grad()
    def text(self, prompts: list[str]) -> JointText:
        clip_ids, _, truncated = tokenize(self.sd.tokenizer, prompts)
        t5 = self.sd.tokenizer_2(prompts, padding="max_length", max_length=self.sd.max_sequence_length,
                                 truncation=True, return_tensors="pt")
        self.truncated_prompts += truncated
        return self.text_from_ids([clip_ids.to(self.device), t5["input_ids"].to(self.device)])

    def predictions(self, branch, noisy, times, text: TextConditions, features) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_θ with gradients into ``branch``, v_ref without)."""
        extra = branch(noisy, times, text, features=features)
        with torch.no_grad():
            reference = velocity(self.sd.transformer, noisy, times, text, self.latent_scale, self.sd.guidance)
        return velocity(self.sd.transformer, noisy, times, text, self.latent_scale, self.sd.guidance, extra), reference
