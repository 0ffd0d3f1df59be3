"""Which backbone family a base belongs to: the one place that tells them apart (U-Nets: SD 1.x/2.x and SDXL;
flow transformers: FLUX.1). Each family answers with its frozen parts, which share one interface: ``latents``,
``text``, ``predictions`` (what the objective calls), ``encode_pixels``, ``text_from_ids``, ``text_lengths``,
``latent_channels`` and ``create_branch`` (what ``bench --plan`` traces), ``sd.noise_scheduler`` (its noise
process, ``perfusion_cli.noise``). A new family adds its files and a line to ``LAYOUTS``."""

from __future__ import annotations

import torch

from perfusion_cli.models.architectures import build_sd
from perfusion_cli.models.flux_architecture import flux_layout, is_shipped_flux
from perfusion_cli.models.frozen_sd import FrozenSD


def sd_layout(base: str, dtype: torch.dtype, device: torch.device, share_encoder: bool = True,
              cache: bool = False) -> FrozenSD:
    """The frozen SD parts of ``base`` with random weights on ``device`` (the meta device to count)."""
    with device:
        parts = build_sd(base, dtype)
    return FrozenSD(parts.components(base), device, dtype, share_encoder, cache)


LAYOUTS = [(is_shipped_flux, flux_layout)]  # (is the base this family's?, its layout); the U-Nets otherwise


def frozen_layout(base: str, dtype: torch.dtype, device: torch.device, share_encoder: bool = True,
                  cache: bool = False):
    """``base``'s frozen parts built from its configs with random weights: counting and the real-layout tests."""
    layout = next((layout for matches, layout in LAYOUTS if matches(base)), sd_layout)
    return layout(base, dtype, device, share_encoder=share_encoder, cache=cache)
