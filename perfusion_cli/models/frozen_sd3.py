"""The frozen SD 3.5 parts PerFusion trains against: latents, text conditions, velocity predictions.

A flow transformer (``frozen_transformer.FrozenTransformer``: latents, the adapter, ``predictions``); what is SD
3.5's own stays here, as ``StableDiffusion3Pipeline.encode_prompt`` makes it:

- text: CLIP-L's and OpenCLIP bigG's penultimate hidden states side by side (768 + 1280 = 2048 wide), padded to
  the joint attention's 4096, then T5-XXL's tokens after them (77 + ``max_sequence_length`` tokens); the pooled
  embedding is both CLIPs' projected embeddings side by side (2048). T5 is optional, as the pipeline allows:
  without it, as many zero tokens as CLIP's (so a run without T5 is a run of the same shapes);
- time: the transformer takes the noise process's time as it is (σ·1000, the scheduler's timesteps);
- guidance: classifier-free, the prompt and the empty prompt as one batch of two (no guidance embedding).
The latents go to the transformer unpacked; it patches them itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

from perfusion_cli.models.backbones import pipeline_config, tokenize
from perfusion_cli.models.frozen_transformer import FrozenTransformer, JointText, part_loader
from perfusion_cli.models.sd3_adapter import SD3MerchantAdapter

CLIP_TOKENS = 77


@dataclass
class SD3Components:
    vae: AutoencoderKL
    text_encoder: torch.nn.Module  # CLIP-L with projection
    tokenizer: object
    text_encoder_2: torch.nn.Module  # OpenCLIP bigG with projection
    tokenizer_2: object
    text_encoder_3: torch.nn.Module | None  # T5-XXL, or None
    tokenizer_3: object
    transformer: SD3Transformer2DModel
    noise_scheduler: FlowMatchEulerDiscreteScheduler
    max_sequence_length: int = 256

    @property
    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3, self.transformer)
                if m is not None]


class FrozenSD3(FrozenTransformer):
    adapter = SD3MerchantAdapter
    guided_by_batch = True

    @property
    def text_lengths(self) -> list[int]:
        """Tokens per text encoder: both CLIPs' 77, T5's ``max_sequence_length`` when there is a T5."""
        t5 = [self.sd.max_sequence_length] if self.sd.text_encoder_3 is not None else []
        return [min(CLIP_TOKENS, encoder.config.max_position_embeddings)
                for encoder in (self.sd.text_encoder, self.sd.text_encoder_2)] + t5

    def text_from_ids(self, ids: list[torch.Tensor]) -> JointText:
        """Token ids of CLIP-L, CLIP-G (and T5) → the joint attention's text tokens and the pooled embedding."""
        width = self.sd.transformer.config.joint_attention_dim
        clip_l = self.sd.text_encoder(ids[0], output_hidden_states=True)
        clip_g = self.sd.text_encoder_2(ids[1], output_hidden_states=True)
        clip = torch.cat([clip_l.hidden_states[-2], clip_g.hidden_states[-2]], dim=-1)
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        if self.sd.text_encoder_3 is not None:
            t5 = self.sd.text_encoder_3(ids[2])[0]
        else:
            t5 = torch.zeros(clip.shape[0], clip.shape[1], width, device=clip.device, dtype=clip.dtype)
        pooled = torch.cat([clip_l.text_embeds, clip_g.text_embeds], dim=-1)
        return JointText(torch.cat([clip, t5.to(clip.dtype)], dim=-2).to(self.dtype), pooled.to(self.dtype))

    def encode_text(self, prompts: list[str]) -> JointText:
        """Distinct prompts' conditions (``text`` is what callers use: it encodes each prompt once)."""
        ids, truncated = [], 0
        for tokenizer in (self.sd.tokenizer, self.sd.tokenizer_2):
            clip_ids, _, cut = tokenize(tokenizer, prompts)
            ids.append(clip_ids.to(self.device))
            truncated = max(truncated, cut)
        if self.sd.text_encoder_3 is not None:
            t5 = self.sd.tokenizer_3(prompts, padding="max_length", max_length=self.sd.max_sequence_length,
                                     truncation=True, return_tensors="pt")
            ids.append(t5["input_ids"].to(self.device))
        self.truncated_prompts += truncated
        return self.text_from_ids(ids)

    @classmethod
    def components(cls, path: str, dtype: torch.dtype) -> SD3Components:
        """Without ``text_encoder_3`` in its ``model_index.json`` (T5 left out, as the SD3 pipeline allows) the T5
        tokens are zeros."""
        load = part_loader(path, dtype)
        t5 = (pipeline_config(path).get("text_encoder_3") or [None])[0] is not None
        return SD3Components(
            vae=load("the VAE", AutoencoderKL, "vae"),
            text_encoder=load("the CLIP-L text encoder", CLIPTextModelWithProjection, "text_encoder"),
            tokenizer=load("the CLIP-L tokenizer", AutoTokenizer, "tokenizer"),
            text_encoder_2=load("the CLIP-G text encoder", CLIPTextModelWithProjection, "text_encoder_2"),
            tokenizer_2=load("the CLIP-G tokenizer", AutoTokenizer, "tokenizer_2"),
            text_encoder_3=load("the T5 text encoder", T5EncoderModel, "text_encoder_3") if t5 else None,
            tokenizer_3=load("the T5 tokenizer", AutoTokenizer, "tokenizer_3") if t5 else None,
            transformer=load("the transformer", SD3Transformer2DModel, "transformer"),
            noise_scheduler=load("the scheduler", FlowMatchEulerDiscreteScheduler, "scheduler"),
        )

    def velocity(self, noisy, times, text, extra=None, guidance=None):
        return self.sd.transformer(hidden_states=noisy, timestep=times.to(noisy.dtype),
                                   encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                                   **(extra or {})).sample
