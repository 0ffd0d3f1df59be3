"""The personalized branch of PerFusion (DESIGN §4; paper §4.3.1, fig. 4).

A ``ControlNetModel.from_unet`` copy of the frozen U-Net's encoder and middle block (zero 1×1 convs
on every residual), whose condition is the merchant instead of an image:

    u = MerchantEncoder(features)                       [B, d_u]
    grid = Linear(u) viewed as [B, c, g, g]             a small spatial grid
    cond = bilinear upsample of grid to the latent size  [B, c, h, w]
    ControlNet: conv_in(z_t) + ZeroConv1x1(cond) → down blocks → mid → zero convs → residuals

The residuals are added to the frozen U-Net's skip connections and middle block. Because the 1×1
conv and every residual conv start at zero, an untrained branch leaves the U-Net's prediction exactly
unchanged.

``width`` < 1 makes a thin branch (``--branch xs``, ControlNet-XS's sizes): the same ControlNet layout
at ``width`` × the U-Net's channels (rounded up to its norm groups), trained from scratch, whose zero
convs widen each residual to the U-Net's channels. At 0.25 it is about 6 % of a ControlNet copy's
parameters. It keeps ControlNet's one-way residual interface (so encoder sharing in training and
reuse across steps still apply); ControlNet-XS's feedback from the base into the branch is not
built: diffusers' ``UNetControlNetXSModel`` copies the U-Net's weights into a fused model and
hard-codes two resnets per down block, which the tiny base (one per block) does not have.

The merchant grid is upsampled to whatever latent size the sample has, so generation at another
resolution needs no retraining of the conditioning.

This is a diffusers ``ModelMixin``: ``save_pretrained`` writes ``config.json`` (the ControlNet's
config, the merchant encoder's settings, the feature vocabulary, and the base model and resolution it
was trained on) and safetensors weights. That folder is a generator run's ``model/``;
``PerFusionPipeline.from_run`` is its reader.
"""

from __future__ import annotations

import math
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
from perfusion_cli.models.text import TextConditions


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _public(config) -> dict:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in dict(config).items()
            if not key.startswith("_")}


class PersonalizedBranch(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True
    residual_only = True  # it only adds to the U-Net's skips and middle block: the encoder half can be shared

    @register_to_config
    def __init__(self, controlnet_config: dict, cardinalities: list[int], features: list | None = None,
                 merchant_encoder: dict | None = None, grid_size: int = 8, grid_channels: int = 16,
                 base_model: str | None = None, resolution: int | None = None,
                 residual_channels: list[int] | None = None):
        """``residual_channels``: the U-Net's channels of each residual (down blocks, then the middle
        block), for a thin branch whose zero convs widen its own; None: the ControlNet's own widths."""
        super().__init__()
        encoder = MerchantEncoderConfig(**(merchant_encoder or {}))
        self.merchant = MerchantEncoder(cardinalities, encoder)
        self.to_grid = nn.Linear(encoder.user_dim, grid_channels * grid_size * grid_size)
        self.controlnet = ControlNetModel.from_config({**controlnet_config, "conditioning_channels": grid_channels})
        first = self.controlnet.config.block_out_channels[0]
        self.controlnet.controlnet_cond_embedding = _zero_conv(grid_channels, first)
        if residual_channels is not None:
            *down, mid = residual_channels
            self.controlnet.controlnet_down_blocks = nn.ModuleList(
                _zero_conv(conv.in_channels, out) for conv, out in zip(self.controlnet.controlnet_down_blocks, down))
            self.controlnet.controlnet_mid_block = _zero_conv(self.controlnet.controlnet_mid_block.in_channels, mid)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, vocab: FeatureVocab, merchant: MerchantEncoderConfig,
                  grid_size: int = 8, grid_channels: int = 16, base_model: str | None = None,
                  resolution: int | None = None, width: float = 1.0) -> "PersonalizedBranch":
        """A branch whose ControlNet copies ``unet``'s encoder and middle block weights; with ``width`` < 1,
        a thin ControlNet of that share of the U-Net's channels, trained from scratch."""
        source = ControlNetModel.from_unet(unet, load_weights_from_unet=width == 1.0)
        config, residuals = _public(source.config), None
        if width != 1.0:
            groups = config["norm_num_groups"]
            config["block_out_channels"] = [groups * math.ceil(c * width / groups) for c in config["block_out_channels"]]
            residuals = [conv.out_channels for conv in [*source.controlnet_down_blocks, source.controlnet_mid_block]]
        branch = cls(controlnet_config=config, cardinalities=vocab.cardinalities, features=vocab.to_json(),
                     merchant_encoder=asdict(merchant), grid_size=grid_size, grid_channels=grid_channels,
                     base_model=base_model, resolution=resolution, residual_channels=residuals)
        if width == 1.0:
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

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: TextConditions,
                features: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The frozen U-Net's extra keyword arguments: this branch's down-block and mid-block residuals.

        Pass ``features`` [B, F], or a precomputed ``cond`` [B, c, h, w] (one per sample in the batch).
        Every branch kind answers a call with the U-Net's keyword arguments, so the trainer calls the
        branch itself (through DDP's wrapper) and the U-Net call is the same for every kind. The ControlNet
        reads the same text conditions as the U-Net (for SDXL: both encoders, pooled text and sizes).
        """
        if cond is None:
            cond = self.condition(features, sample.shape[-2:])
        down, mid = self.controlnet(sample, timestep, **text.unet_kwargs(), controlnet_cond=cond.to(sample.dtype),
                                    conditioning_scale=scale, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
