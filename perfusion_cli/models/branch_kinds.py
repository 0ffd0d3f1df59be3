"""The kinds of personalized branch ``train-gen`` can train (``--branch``), and the one way to load one.

- ``controlnet``: PerFusion's own, a ControlNet copy of the U-Net's encoder half (``controlnet_branch.py``);
- ``xs``: the same class as a thin ControlNet (ControlNet-XS's sizes, ``width`` < 1; ``controlnet_branch.py``);
- ``adapter``: the merchant as extra tokens through decoupled cross-attention (``adapter.py``).

Both have the same interface: ``condition`` / ``condition_from_embedding`` (the merchant as the
branch's condition), a call that returns the keyword arguments personalizing the frozen U-Net's call
(``unet(x, t, text, **branch(x, t, text, features=…))``; a call, so DDP's wrapper sees it), ``attach``
(install on the frozen U-Net), ``residual_only`` (whether ε_θ and ε_ref may share the U-Net's encoder
half), and ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.errors import CheckpointError
from perfusion_cli.models.adapter import MerchantAdapter
from perfusion_cli.models.controlnet_branch import PersonalizedBranch
from perfusion_cli.models.flux_adapter import FluxMerchantAdapter
from perfusion_cli.models.sd3_adapter import SD3MerchantAdapter
from perfusion_cli.runs import loading, model_class

KINDS = {"controlnet": PersonalizedBranch, "xs": PersonalizedBranch, "adapter": MerchantAdapter}
# what a model folder may hold: the kinds, and the adapters on the flow transformers' joint attention
LOADABLE = (*KINDS.values(), FluxMerchantAdapter, SD3MerchantAdapter)


def create_branch(config: GenTrainConfig, unet: UNet2DConditionModel, vocab: FeatureVocab, base_model: str):
    if config.branch == "adapter":
        branch = MerchantAdapter.from_unet(unet, vocab, config.merchant, config.adapter_tokens, base_model,
                                           config.resolution)
    else:
        branch = PersonalizedBranch.from_unet(unet, vocab, config.merchant, config.grid_size, config.grid_channels,
                                              base_model, config.resolution,
                                              width=config.xs_width if config.branch == "xs" else 1.0)
    branch.attach(unet)
    if config.gradient_checkpointing:  # the frozen U-Net too: gradients flow back through it
        if branch._supports_gradient_checkpointing:
            branch.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    return branch


def load_branch(folder: Path, dtype: torch.dtype = torch.float32):
    name = model_class(folder)
    classes = {cls.__name__: cls for cls in LOADABLE}
    if name not in classes:
        raise CheckpointError(f"{folder} holds no personalized branch (config.json names {name!r})")
    with loading(folder, "generator"):
        return classes[name].from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
