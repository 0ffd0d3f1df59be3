"""A contrastive tower's Transformer layers, run one by one with an optional per-layer modulation.

PerFusionRM scales and shifts each layer's attention and FFN outputs (paper §4.2, eqs. 4-5):
``h ← h ⊙ (1 + γ) + β`` before each residual addition. The γ/β of every layer are an argument of these
functions — no hooks and no state parked on modules — so gradient checkpointing (recomputation runs
after the forward call has returned), ``torch.compile`` and DDP see ordinary functions of their inputs
(DESIGN §9, STYLE 10). CLIP's and SigLIP's encoder layers have the same pre-norm shape (``layer_norm1``,
``self_attn``, ``layer_norm2``, ``mlp``), so both families run through here.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
