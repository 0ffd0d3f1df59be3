"""CLIP's two towers, run layer by layer with an optional per-layer modulation passed in explicitly.

PerFusionRM scales and shifts each Transformer layer's attention and FFN outputs (paper §4.2,
eqs. 4-5): ``h ← h ⊙ (1 + γ) + β`` before each residual addition. The γ/β of every layer are an
argument of these functions — no hooks and no state parked on modules — so gradient checkpointing
(recomputation runs after the forward call has returned), ``torch.compile`` and DDP see ordinary
functions of their inputs (DESIGN §9, STYLE 10).

The layers are the stock ``CLIPEncoderLayer`` sub-modules (layer norms, attention, MLP) of a Hugging
Face ``CLIPModel``; with no modulation the outputs equal ``get_text_features`` / ``get_image_features``
(a test holds us to it).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPModel

# Per layer: (γ_attn, β_attn, γ_ffn, β_ffn), each [N, width]; None: plain CLIP.
Modulation = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] | None


def modulate(hidden: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """hidden: [N, T, D]; scale, shift: [N, D] → hidden ⊙ (1 + scale) + shift."""
    return hidden * (1 + scale.unsqueeze(1).to(hidden.dtype)) + shift.unsqueeze(1).to(hidden.dtype)


def _layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, *params: torch.Tensor) -> torch.Tensor:
    residual = hidden
    attended = layer.self_attn(hidden_states=layer.layer_norm1(hidden), attention_mask=mask)[0]
    if params:
        attended = modulate(attended, params[0], params[1])
    hidden = residual + attended
    transformed = layer.mlp(layer.layer_norm2(hidden))
    if params:
        transformed = modulate(transformed, params[2], params[3])
    return hidden + transformed


def run_layers(layers: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor | None, modulation: Modulation,
               checkpointing: bool = False) -> torch.Tensor:
    for index, layer in enumerate(layers):
        params = modulation[index] if modulation is not None else ()
        step = functools.partial(_layer, layer)
        if checkpointing and torch.is_grad_enabled():
            hidden = checkpoint(step, hidden, mask, *params, use_reentrant=False)
        else:
            hidden = step(hidden, mask, *params)
    return hidden


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
