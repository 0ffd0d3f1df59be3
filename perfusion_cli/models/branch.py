"""The personalized branch of PerFusion (DESIGN §4; paper §4.3.1, fig. 4).

A ``ControlNetModel.from_unet`` copy of the frozen U-Net's encoder and middle block (zero 1×1 convs
on every residual), whose condition is the merchant instead of an image:

    u = MerchantEncoder(features)                       [B, d_u]
    grid = Linear(u) viewed as [B, c, g, g]             a small spatial grid
    cond = bilinear upsample of grid to the latent size  [B, c, h, w]
    ControlNet: conv_in(z_t) + ZeroConv1x1(cond) → down blocks → mid → zero convs → residuals

The residuals are added to the frozen U-Net's skip connections and middle block. Because the 1×1
conv and every residual conv start at zero, an untrained branch leaves the U-Net's prediction exactly
unchanged. The merchant grid is upsampled to whatever latent size the sample has, so generation at
another resolution needs no retraining of the conditioning.

This is a diffusers ``ModelMixin``: ``save_pretrained`` writes ``config.json`` (the ControlNet's
config, the merchant encoder's settings, the feature vocabulary, and the base model and resolution it
was trained on) and safetensors weights. That folder is a generator run's ``model/``;
``PerFusionPipeline.from_run`` is its reader.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.merchant import MerchantEncoder


def _public(config) -> dict:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in dict(config).items()
            if not key.startswith("_")}


class PersonalizedBranch(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    residual_only = True  # it only adds to the U-Net's skips and middle block: the encoder half can be shared

    @register_to_config
    def __init__(self, controlnet_config: dict, cardinalities: list[int], features: list | None = None,
                 merchant_encoder: dict | None = None, grid_size: int = 8, grid_channels: int = 16,
                 base_model: str | None = None, resolution: int | None = None):
        super().__init__()
        encoder = MerchantEncoderConfig(**(merchant_encoder or {}))
        self.merchant = MerchantEncoder(cardinalities, encoder)
        self.to_grid = nn.Linear(encoder.user_dim, grid_channels * grid_size * grid_size)
        self.controlnet = ControlNetModel.from_config({**controlnet_config, "conditioning_channels": grid_channels})
        first = self.controlnet.config.block_out_channels[0]
        self.controlnet.controlnet_cond_embedding = nn.Conv2d(grid_channels, first, kernel_size=1)
        nn.init.zeros_(self.controlnet.controlnet_cond_embedding.weight)
        nn.init.zeros_(self.controlnet.controlnet_cond_embedding.bias)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, vocab: FeatureVocab, merchant: MerchantEncoderConfig,
                  grid_size: int = 8, grid_channels: int = 16, base_model: str | None = None,
                  resolution: int | None = None) -> "PersonalizedBranch":
        """A branch whose ControlNet copies ``unet``'s encoder and middle block weights."""
        source = ControlNetModel.from_unet(unet)
        branch = cls(controlnet_config=_public(source.config), cardinalities=vocab.cardinalities,
                     features=vocab.to_json(), merchant_encoder=asdict(merchant), grid_size=grid_size,
                     grid_channels=grid_channels, base_model=base_model, resolution=resolution)
        copied = {k: v for k, v in source.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        missing, unexpected = branch.controlnet.load_state_dict(copied, strict=False)
        assert not unexpected and all(k.startswith("controlnet_cond_embedding.") for k in missing)
        return branch.to(device=unet.device)

    @property
    def vocab(self) -> FeatureVocab:
        return FeatureVocab.from_json(self.config.features or [])

    def condition(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """features: [B, F] → the merchant condition [B, c, h, w] at latent size ``size``."""
        return self.condition_from_embedding(self.merchant(features), size)

    def condition_from_embedding(self, u: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """u: [B, d_u] (a merchant's, or e.g. the population mean for a cold start) → [B, c, h, w]."""
        grid_size, channels = self.config.grid_size, self.config.grid_channels
        grid = self.to_grid(u).view(-1, channels, grid_size, grid_size)
        return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)

    def attach(self, unet: UNet2DConditionModel, processor: type | None = None) -> None:
        """Nothing to install: the residuals are passed to the U-Net call."""
        if processor is not None:
            self.controlnet.set_attn_processor(processor())

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                features: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The frozen U-Net's extra keyword arguments: this branch's down-block and mid-block residuals.

        Pass ``features`` [B, F], or a precomputed ``cond`` [B, c, h, w] (one per sample in the batch).
        Every branch kind answers a call with the U-Net's keyword arguments, so the trainer calls the
        branch itself (through DDP's wrapper) and the U-Net call is the same for every kind.
        """
        if cond is None:
            cond = self.condition(features, sample.shape[-2:])
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=cond.to(sample.dtype),
                                    conditioning_scale=scale, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
