"""CLIP's two towers, run layer by layer with an optional per-layer modulation (``modulated_layers``).

The layers are the stock ``CLIPEncoderLayer`` sub-modules (layer norms, attention, MLP) of a Hugging
Face ``CLIPModel``; with no modulation the outputs equal ``get_text_features`` / ``get_image_features``
(a test holds us to it). The text tower is causal and masks padding; it pools the end-of-text token.
"""

from __future__ import annotations

import torch
from transformers import CLIPModel

from perfusion_cli.models.modulated_layers import Modulation, run_layers


def _text_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal and padding mask as an additive [B, 1, T, T] float mask."""
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                      torch.finfo(dtype).min)


def text_features(clip: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  modulation: Modulation = None, checkpointing: bool = False) -> torch.Tensor:
    """[B, L] token ids → projected text features [B, P] (not normalized)."""
    tower = clip.text_model
    hidden = tower.embeddings(input_ids=input_ids)
    hidden = run_layers(tower.encoder.layers, hidden, _text_mask(attention_mask, hidden.dtype), modulation,
                        checkpointing)
    hidden = tower.final_layer_norm(hidden)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    eos = tower.config.eos_token_id
    # CLIP pools the end-of-text token: the highest id for the original checkpoints (eos id 2 in their
    # config), else the first position of the eos id — as transformers does.
    position = input_ids.argmax(-1) if eos == 2 else (input_ids == eos).int().argmax(-1)
    return clip.text_projection(hidden[rows, position.to(hidden.device)])


def image_features(clip: CLIPModel, pixel_values: torch.Tensor, modulation: Modulation = None,
                   checkpointing: bool = False) -> torch.Tensor:
    """[N, 3, S, S] CLIP-normalized pixels → projected image features [N, P] (not normalized)."""
    tower = clip.vision_model
    hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
    hidden = run_layers(tower.encoder.layers, hidden, None, modulation, checkpointing)
    return clip.visual_projection(tower.post_layernorm(hidden[:, 0]))
