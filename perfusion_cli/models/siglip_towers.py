"""SigLIP's two towers (SigLIP and the fixed-resolution SigLIP 2 checkpoints, transformers' ``SiglipModel``), run
layer by layer with an optional per-layer modulation (``modulated_layers``).

As SigLIP was trained: the text tower attends both ways over prompts padded to its length, with no mask, and
pools the last position through its head; the vision tower pools with its attention-pooling head (MAP).
With no modulation the outputs equal ``get_text_features(input_ids)`` / ``get_image_features`` (a test).
"""

from __future__ import annotations

import torch
from transformers import SiglipModel

from perfusion_cli.models.modulated_layers import Modulation, run_layers


def text_features(model: SiglipModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  modulation: Modulation = None, checkpointing: bool = False) -> torch.Tensor:
    """[B, L] token ids (padded to the tokenizer's length) → text features [B, P] (not normalized).
    ``attention_mask`` is not used: SigLIP's text tower was trained without one."""
    tower = model.text_model
    hidden = run_layers(tower.encoder.layers, tower.embeddings(input_ids=input_ids), None, modulation, checkpointing)
    return tower.head(tower.final_layer_norm(hidden)[:, -1])


def image_features(model: SiglipModel, pixel_values: torch.Tensor, modulation: Modulation = None,
                   checkpointing: bool = False) -> torch.Tensor:
    """[N, 3, S, S] normalized pixels → image features [N, P] (not normalized)."""
    tower = model.vision_model
    hidden = run_layers(tower.encoder.layers, tower.embeddings(pixel_values), None, modulation, checkpointing)
    return tower.head(tower.post_layernorm(hidden))
