"""FLUX.1's modules from its public configs (``perfusion_cli/architectures/flux1-dev``): random weights, on any
device, for counting on the meta device (``bench --plan``), as ``architectures.build_sd`` builds the U-Nets."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from perfusion_cli.models.architectures import tokenizer_for, transformer_configs
from perfusion_cli.models.frozen_flux import FluxComponents

PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")
CLASS = "FluxTransformer2DModel"


def build_flux(base: str, dtype: torch.dtype = torch.float32, max_sequence_length: int = 512,
               overrides: dict[str, dict] | None = None) -> FluxComponents:
    """Build under ``with torch.device("meta")`` to count without allocating (no tokenizers: counting feeds ids).
    ``overrides``: per part, config values to change (fewer blocks for the real-architecture tests)."""
    configs = transformer_configs(base, CLASS, PARTS)  # shipped for a hub id, or a local FLUX folder's
    clean = lambda part: {**configs[part], **(overrides or {}).get(part, {})}  # noqa: E731
    with torch.device("cpu"):  # the scheduler's small tables stay on the CPU
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(clean("scheduler"))
    return FluxComponents(
        vae=AutoencoderKL.from_config(clean("vae")).to(dtype),
        text_encoder=CLIPTextModel(CLIPTextConfig(**clean("text_encoder"))).to(dtype),
        tokenizer=None,
        text_encoder_2=T5EncoderModel(T5Config(**clean("text_encoder_2"))).to(dtype),
        tokenizer_2=None,
        transformer=FluxTransformer2DModel.from_config(clean("transformer")).to(dtype),
        noise_scheduler=scheduler,
        max_sequence_length=max_sequence_length,
    )


def write_random_flux(base: str, folder: Path, overrides: dict[str, dict] | None = None,
                      dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random-weight FLUX.1 folder in the hub layout (``model_index.json``, a sub-folder per component,
    safetensors), with the bundled tokenizer for CLIP and T5 (its 658 ids fit both vocabularies)."""
    torch.manual_seed(seed)
    parts = build_flux(base, dtype, overrides=overrides)
    tokenizer = tokenizer_for(parts.text_encoder)
    FluxPipeline(parts.noise_scheduler, parts.vae, parts.text_encoder, tokenizer, parts.text_encoder_2, tokenizer,
                 parts.transformer).save_pretrained(folder, safe_serialization=True)
    return Path(folder)
