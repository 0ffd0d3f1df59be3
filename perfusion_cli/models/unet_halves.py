"""The frozen U-Net's forward pass in two halves, so one encoder pass serves two decoder passes.

PerFusion adds the branch's residuals to the frozen U-Net's skip connections and to its middle
block's output (DESIGN §4). Everything before those additions — time embedding, ``conv_in``, the down
blocks and the middle block — is therefore identical for the personalized pass ε_θ and the reference
pass ε_ref on the same noisy latents, timestep and text. ``encode`` runs that once; ``decode`` runs
the up blocks with or without residuals. ``decode(encode(x))`` equals ``unet(x)`` to float tolerance
(a test holds us to it), for the SD 1.x/2.x and SDXL families of configs (``supports_split``: SDXL's
``text_time`` added embedding is part of the time embedding, so it is computed once too); anything
else falls back to two full passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from perfusion_cli.models.text import TextConditions


@dataclass
class UNetEncoding:
    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    mid: torch.Tensor
    forward_upsample_size: bool


def supports_split(unet: UNet2DConditionModel) -> bool:
    config = unet.config
    return (unet.class_embedding is None and config.addition_embed_type in (None, "text_time")
            and not config.center_input_sample
            and unet.encoder_hid_proj is None and getattr(unet, "position_net", None) is None
            and unet.mid_block is not None)


def encode(unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor,
           text: TextConditions) -> UNetEncoding:
    """Steps 1-4 of ``UNet2DConditionModel.forward``: time (and added) embedding, conv_in, down blocks, mid block."""
    factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(dim % factor != 0 for dim in sample.shape[-2:])
    kwargs = text.unet_kwargs()
    encoder_hidden_states = kwargs["encoder_hidden_states"]
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    added = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                               added_cond_kwargs=kwargs.get("added_cond_kwargs", {}))
    if added is not None:
        emb = emb + added
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (hidden,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, residuals = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden, residuals = block(hidden_states=hidden, temb=emb)
        skips += residuals
    if getattr(unet.mid_block, "has_cross_attention", False):
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        hidden = unet.mid_block(hidden, emb)
    return UNetEncoding(emb, encoder_hidden_states, skips, hidden, forward_upsample_size)


def decode(unet: UNet2DConditionModel, encoding: UNetEncoding, down_residuals=None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 5-6: up blocks and output, with a ControlNet-style branch's residuals added if given."""
    skips = encoding.skips
    hidden = encoding.mid
    if down_residuals is not None:
        skips = tuple(skip + residual for skip, residual in zip(skips, down_residuals))
    if mid_residual is not None:
        hidden = hidden + mid_residual
    emb = encoding.emb
    for index, block in enumerate(unet.up_blocks):
        is_final = index == len(unet.up_blocks) - 1
        residuals = skips[-len(block.resnets):]
        skips = skips[:-len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if (not is_final and encoding.forward_upsample_size) else None
        if getattr(block, "has_cross_attention", False):
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=residuals,
                           encoder_hidden_states=encoding.encoder_hidden_states, upsample_size=upsample_size)
        else:
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=residuals,
                           upsample_size=upsample_size)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
