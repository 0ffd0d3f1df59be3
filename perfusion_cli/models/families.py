"""Which backbone family a base belongs to: the one place that tells them apart (U-Nets: SD 1.x/2.x and SDXL;
flow transformers: FLUX.1 and SD 3.5). Each family answers with its frozen parts, which share one interface:
``latents``, ``text``, ``predictions`` (what the objective calls), ``encode_pixels``, ``text_from_ids``,
``text_lengths``, ``latent_channels`` and ``create_branch`` (what ``bench --plan`` traces), ``sd.noise_scheduler`` (its noise
process, ``perfusion_cli.noise``). A new family adds its files and a line to ``TRANSFORMERS``."""

from __future__ import annotations

import torch

from perfusion_cli.models.architectures import build_sd, transformer_folder
from perfusion_cli.models.backbones import pipeline_config, resolve
from perfusion_cli.models.flux_architecture import build_flux
from perfusion_cli.models.frozen_flux import FrozenFlux
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.models.frozen_sd3 import FrozenSD3
from perfusion_cli.models.sd3_architecture import build_sd3


def sd_layout(base: str, dtype: torch.dtype, device: torch.device, share_encoder: bool = True,
              cache: bool = False) -> FrozenSD:
    """The frozen SD parts of ``base`` with random weights on ``device`` (the meta device to count)."""
    with device:
        parts = build_sd(base, dtype)
    return FrozenSD(parts.components(base), device, dtype, share_encoder, cache)


# the flow transformers: (pipeline class of their folders, transformer class of their shipped configs, how to build
# their parts from those configs, their frozen parts); the U-Nets otherwise
TRANSFORMERS = [("FluxPipeline", "FluxTransformer2DModel", build_flux, FrozenFlux),
                ("StableDiffusion3Pipeline", "SD3Transformer2DModel", build_sd3, FrozenSD3)]


def _configured_family(base: str):
    """(build, frozen class) of the flow transformer ``base`` is, by its configs (shipped for a hub id, or a local
    folder's), else None."""
    return next(((build, frozen) for _, transformer, build, frozen in TRANSFORMERS
                 if transformer_folder(base, transformer)), None)


def is_flow_transformer(base: str) -> bool:
    """Whether ``base`` is one of the flow-transformer families, by its configs (the U-Nets otherwise)."""
    return _configured_family(base) is not None


def frozen_layout(base: str, dtype: torch.dtype, device: torch.device, share_encoder: bool = True,
                  cache: bool = False):
    """``base``'s frozen parts built from its configs with random weights: counting and the real-layout tests."""
    family = _configured_family(base)
    if family is None:
        return sd_layout(base, dtype, device, share_encoder, cache)
    build, frozen = family
    with device:
        parts = build(base, dtype)
    return frozen(parts, device, dtype)


def frozen_class(base: str):
    """The frozen-parts class that loads ``base`` (a local folder, a hub id, or a bundled ``tiny`` base)."""
    pipeline = pipeline_config(resolve(base, "sd")).get("_class_name")
    return next((frozen for name, _, _, frozen in TRANSFORMERS if name == pipeline), FrozenSD)


def load_frozen(base: str, device: torch.device, mixed_precision: str = "no", **kwargs):
    """``base``'s frozen parts with its weights: ``FrozenSD.load``'s call, for whichever family ``base`` is."""
    return frozen_class(base).load(base, device, mixed_precision, **kwargs)
