"""Personalized plug-ins for a CLIP tower (DESIGN §4; paper §4.2, eqs. 4-5).

For every Transformer layer j, an adaptive network A_j(u) gives a scale and a shift for the attention
output and for the FFN output, applied before each residual addition:

    h ← h ⊙ (1 + γ) + β

The last linear of A_j is zero-initialized, so an untrained plug-in leaves CLIP exactly as it was.
The plug-in attaches with forward hooks on each layer's ``self_attn`` and ``mlp``, which leaves the
CLIP module (and its ``save_pretrained`` weights) untouched; ``modulated(u)`` turns it on for one
forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class AdaptiveNetwork(nn.Module):
    """u: [N, user_dim] → (γ_attn, β_attn, γ_ffn, β_ffn), each [N, width]."""

    def __init__(self, user_dim: int, hidden: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(user_dim, hidden), nn.SiLU(), nn.Linear(hidden, 4 * width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(u).chunk(4, dim=-1)


def _modulate(hidden: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """hidden: [N, T, D]; scale, shift: [N, D]."""
    return hidden * (1 + scale.unsqueeze(1).to(hidden.dtype)) + shift.unsqueeze(1).to(hidden.dtype)


class TowerPlugin(nn.Module):
    """Adaptive networks for every layer of one tower, applied through hooks while ``modulated``."""

    def __init__(self, layers: nn.ModuleList, user_dim: int, hidden: int):
        super().__init__()
        width = layers[0].self_attn.embed_dim
        self.adapters = nn.ModuleList(AdaptiveNetwork(user_dim, hidden, width) for _ in layers)
        self._params: list[tuple[torch.Tensor, ...]] | None = None
        for index, layer in enumerate(layers):
            layer.self_attn.register_forward_hook(self._attention_hook(index))
            layer.mlp.register_forward_hook(self._ffn_hook(index))

    def _attention_hook(self, index: int):
        def hook(module, inputs, output):
            if self._params is None:
                return output
            gamma, beta = self._params[index][0], self._params[index][1]
            if isinstance(output, tuple):
                return (_modulate(output[0], gamma, beta), *output[1:])
            return _modulate(output, gamma, beta)

        return hook

    def _ffn_hook(self, index: int):
        def hook(module, inputs, output):
            if self._params is None:
                return output
            return _modulate(output, self._params[index][2], self._params[index][3])

        return hook

    @contextlib.contextmanager
    def modulated(self, u: torch.Tensor) -> Iterator[None]:
        """Within this block, the tower's forward passes are personalized by u: [N, user_dim]."""
        self._params = [adapter(u) for adapter in self.adapters]
        try:
            yield
        finally:
            self._params = None
