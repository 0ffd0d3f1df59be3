"""SD 3.5's modules from its public configs (``perfusion_cli/architectures/sd35-medium``) or a local SD 3.5 folder's:
random weights, on any device, for counting on the meta device (``bench --plan``, the memory check before a
run), as ``flux_architecture`` builds FLUX.1's."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from perfusion_cli.models.architectures import tokenizer_for, transformer_configs
from perfusion_cli.models.frozen_sd3 import SD3Components

CLASS = "SD3Transformer2DModel"
PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "scheduler")


def build_sd3(base: str, dtype: torch.dtype = torch.float32, max_sequence_length: int = 256, t5: bool = True,
              overrides: dict[str, dict] | None = None) -> SD3Components:
    """Build under ``with torch.device("meta")`` to count without allocating (no tokenizers: counting feeds ids).
    ``overrides``: per part, config values to change (toy widths for tests)."""
    configs = transformer_configs(base, CLASS, PARTS)
    clean = lambda part: {**configs[part], **(overrides or {}).get(part, {})}  # noqa: E731
    t5 = t5 and "text_encoder_3" in configs
    with torch.device("cpu"):  # the scheduler's small tables stay on the CPU
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(clean("scheduler"))
    return SD3Components(
        vae=AutoencoderKL.from_config(clean("vae")).to(dtype),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clean("text_encoder"))).to(dtype),
        tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clean("text_encoder_2"))).to(dtype),
        tokenizer_2=None,
        text_encoder_3=T5EncoderModel(T5Config(**clean("text_encoder_3"))).to(dtype) if t5 else None,
        tokenizer_3=None,
        transformer=SD3Transformer2DModel.from_config(clean("transformer")).to(dtype),
        noise_scheduler=scheduler,
        max_sequence_length=max_sequence_length,
    )


def write_random_sd3(base: str, folder: Path, overrides: dict[str, dict] | None = None, t5: bool = False,
                     dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random-weight SD 3.5 folder in the hub layout, T5 left out unless ``t5`` (the SD3 pipeline runs without
    it; T5-XXL alone is 4.8 B parameters), with the bundled tokenizer for every text encoder."""
    torch.manual_seed(seed)
    parts = build_sd3(base, dtype, t5=t5, overrides=overrides)
    tokenizer = tokenizer_for(parts.text_encoder)
    StableDiffusion3Pipeline(parts.transformer, parts.noise_scheduler, parts.vae, parts.text_encoder, tokenizer,
                             parts.text_encoder_2, tokenizer, parts.text_encoder_3, tokenizer if t5 else None
                             ).save_pretrained(folder, safe_serialization=True)
    return Path(folder)
