"""Personalized plug-ins for a CLIP tower (DESIGN §4; paper §4.2, eqs. 4-5).

For every Transformer layer j, an adaptive network A_j(u) gives a scale and a shift for the attention
output and for the FFN output (applied by ``modulated_layers``): ``h ← h ⊙ (1 + γ) + β``. The last linear
of A_j is zero-initialized, so an untrained plug-in leaves CLIP exactly as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from perfusion_cli.models.modulated_layers import Modulation


class AdaptiveNetwork(nn.Module):
    """u: [N, user_dim] → (γ_attn, β_attn, γ_ffn, β_ffn), each [N, width]."""

    def __init__(self, user_dim: int, hidden: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(user_dim, hidden), nn.SiLU(), nn.Linear(hidden, 4 * width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(u).chunk(4, dim=-1)


class TowerPlugin(nn.Module):
    """One adaptive network per layer of a tower: u → the tower's modulation."""

    def __init__(self, layers: int, width: int, user_dim: int, hidden: int):
        super().__init__()
        self.adapters = nn.ModuleList(AdaptiveNetwork(user_dim, hidden, width) for _ in range(layers))

    def forward(self, u: torch.Tensor) -> Modulation:
        return [adapter(u) for adapter in self.adapters]
