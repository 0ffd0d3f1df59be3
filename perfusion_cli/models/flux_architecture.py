"""FLUX.1's modules from its public configs (``perfusion_cli/architectures/flux1-dev``): random weights, on any
device, for counting on the meta device (``bench --plan``), as ``architectures.build_sd`` builds the U-Nets."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from perfusion_cli.models.architectures import read_config, shipped_folder, without_meta
from perfusion_cli.models.frozen_flux import FluxComponents, FrozenFlux

PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")


def flux_folder(base: str) -> Path | None:
    """The shipped folder of a FLUX base (its configs hold a transformer), else None."""
    folder = shipped_folder(base)
    return folder if folder is not None and (folder / "transformer.json").is_file() else None


def flux_configs(base: str) -> dict[str, dict]:
    """The configs of a FLUX base whose architecture ships here."""
    return {part: read_config(flux_folder(base) / f"{part}.json") for part in PARTS}


def build_flux(base: str, dtype: torch.dtype = torch.float32, max_sequence_length: int = 512) -> FluxComponents:
    """Build under ``with torch.device("meta")`` to count without allocating (no tokenizers: counting feeds ids)."""
    configs = flux_configs(base)
    clean = lambda part: without_meta(configs[part])  # noqa: E731
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


def flux_layout(base: str, dtype: torch.dtype, device: torch.device, **_) -> FrozenFlux:
    """The frozen FLUX parts of ``base`` with random weights on ``device`` (the meta device to count)."""
    with device:
        parts = build_flux(base, dtype)
    return FrozenFlux(parts, device, dtype)


def is_shipped_flux(base: str) -> bool:
    return flux_folder(base) is not None


