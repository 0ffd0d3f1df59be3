"""The frozen FLUX.1 parts PerFusion trains against: latents, text conditions, velocity predictions.

A flow transformer (``frozen_transformer.FrozenTransformer``: latents, the adapter, ``predictions``); what is
FLUX's own stays here:

- latents stay unpacked [N, 16, h, w] so the noise process and the objective see the U-Nets' shapes; packed
  into 2×2 patches [N, h/2·w/2, 64] with their (0, row, column) position ids only around the transformer call
  (diffusers' ``FluxPipeline._pack_latents`` / ``_unpack_latents`` / ``_prepare_latent_image_ids``);
- text: T5's token embeddings (the joint attention's text stream, ``max_sequence_length`` tokens) and CLIP-L's
  pooled embedding (``pooled_projections``), as ``FluxPipeline.encode_prompt`` makes them;
- time: the transformer takes σ, the noise process's time / 1000 (the pipeline divides the same way);
- guidance: FLUX.1-dev's guidance embedding gets ``guidance`` (diffusers' FLUX trainers pass their
  ``--guidance_scale``, 3.5 by default); a base without the embedding (schnell, the tiny one) gets none, and is
  guided classifier-free when drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from perfusion_cli.models.backbones import tokenize
from perfusion_cli.models.flux_adapter import FluxMerchantAdapter
from perfusion_cli.models.frozen_transformer import FrozenTransformer, JointText, part_loader
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

    def with_text_length(self) -> "FluxComponents":
        """T5's tokens as its tokenizer pads them, at most FLUX's 512 (a tiny T5's 16)."""
        self.max_sequence_length = min(512, self.tokenizer_2.model_max_length)
        return self


class FrozenFlux(FrozenTransformer):
    adapter = FluxMerchantAdapter

    @property
    def guided_by_batch(self) -> bool:
        """FLUX.1-dev's guidance is an embedded number; a base without the embedding (the tiny one) is guided
        classifier-free, the prompt and the empty prompt as a batch of two."""
        return not self.sd.transformer.config.guidance_embeds

    @property
    def text_lengths(self) -> list[int]:
        """Tokens per text encoder: CLIP's 77, T5's ``max_sequence_length``."""
        return [min(77, self.sd.text_encoder.config.max_position_embeddings), self.sd.max_sequence_length]

    def text_from_ids(self, ids: list[torch.Tensor]) -> JointText:
        """Token ids of CLIP and T5 → T5's token embeddings and CLIP's pooled embedding."""
        pooled = self.sd.text_encoder(ids[0], output_hidden_states=False).pooler_output
        hidden = self.sd.text_encoder_2(ids[1], output_hidden_states=False)[0]
        return JointText(hidden.to(self.dtype), pooled.to(self.dtype))

    def encode_text(self, prompts: list[str]) -> JointText:
        """Distinct prompts' conditions (``text`` is what callers use: it encodes each prompt once)."""
        clip_ids, _, truncated = tokenize(self.sd.tokenizer, prompts)
        t5 = self.sd.tokenizer_2(prompts, padding="max_length", max_length=self.sd.max_sequence_length,
                                 truncation=True, return_tensors="pt")
        self.truncated_prompts += truncated
        return self.text_from_ids([clip_ids.to(self.device), t5["input_ids"].to(self.device)])

    @classmethod
    def components(cls, path: str, dtype: torch.dtype) -> FluxComponents:
        load = part_loader(path, dtype)
        return FluxComponents(
            vae=load("the VAE", AutoencoderKL, "vae"),
            text_encoder=load("the CLIP text encoder", CLIPTextModel, "text_encoder"),
            tokenizer=load("the CLIP tokenizer", AutoTokenizer, "tokenizer"),
            text_encoder_2=load("the T5 text encoder", T5EncoderModel, "text_encoder_2"),
            tokenizer_2=load("the T5 tokenizer", AutoTokenizer, "tokenizer_2"),
            transformer=load("the transformer", FluxTransformer2DModel, "transformer"),
            noise_scheduler=load("the scheduler", FlowMatchEulerDiscreteScheduler, "scheduler"),
        ).with_text_length()

    def velocity(self, noisy, times, text, extra=None, guidance=None):
        return velocity(self.sd.transformer, noisy, times, text, self.latent_scale,
                        self.sd.guidance if guidance is None else guidance, extra)
