"""A convex taste learned from training picks over any image features (synthetic data): the ``perfect eyes``
ceiling of ``eval rm`` (and the ladder of docs/notes/benchmarks-history.md, whose script is retired).

    s(candidate of merchant m) = ⟨B ψ(m) + D_m, φ(candidate)⟩

ψ(m) is a constant and a one-hot of the merchant's profile features as a model gets them (the
vocabulary's ids; feature 0, the merchant id, is left to D), D_m a personal offset for each merchant
with training picks (zero for any other), both L2-shrunk; the loss is the reward model's Plackett-Luce
loss, minimized to convergence by L-BFGS. Given the oracle's attributes as φ (``attributes``), it is
what a model that sees what the oracle sees learns from the same records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from perfusion_cli.losses import plackett_luce_loss

# chosen on the tuning draw's val split (docs/benchmarks.md: `mixed`, 12 sessions, seed 1) from
# {0.001, 0.01, 0.1} × {0.3, 1, 3, 10}, reported on the others
L2_PROFILE = 0.01
L2_PERSONAL = 0.3


def profile_onehot(features: torch.Tensor, cardinalities: list[int]) -> torch.Tensor:
    """[G, F] vocabulary ids → ψ [G, 1 + Σ cardinalities of features 1..F-1]."""
    columns = [torch.ones(len(features), 1)]
    for index, size in enumerate(cardinalities[1:], start=1):
        columns.append(torch.nn.functional.one_hot(features[:, index].long(), size).float())
    return torch.cat(columns, dim=1)


@dataclass
class LearnedTaste:
    weights: torch.Tensor  # B [Ψ, A]
    offsets: dict[str, torch.Tensor]  # merchant id → D_m [A]

    def scores(self, image: torch.Tensor, profile: torch.Tensor, merchants: list[str]) -> torch.Tensor:
        """image [G, K, A] features, ψ [G, Ψ], the groups' merchant ids → [G, K]."""
        zero = torch.zeros(self.weights.shape[1])
        taste = profile @ self.weights + torch.stack([self.offsets.get(m, zero) for m in merchants])
        return (image * taste[:, None, :]).sum(-1)


def fit_taste(image: torch.Tensor, profile: torch.Tensor, merchants: list[str], picked: torch.Tensor,
              valid: torch.Tensor, l2_profile: float = L2_PROFILE, l2_personal: float = L2_PERSONAL) -> LearnedTaste:
    """The taste minimizing the training groups' Plackett-Luce loss + L2: image [G, K, A] (zero where not
    valid), ψ [G, Ψ], merchant ids [G], picked and valid [G, K]."""
    known = sorted(set(merchants))
    row = torch.as_tensor(np.searchsorted(np.array(known), np.array(merchants)))
    weights = torch.zeros(profile.shape[1], image.shape[-1], requires_grad=True)
    offsets = torch.zeros(len(known), image.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, offsets], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        taste = profile @ weights + offsets[row]  # [G, A]
        loss = (plackett_luce_loss((image * taste[:, None, :]).sum(-1), picked, valid)
                + l2_profile * weights.square().sum() + l2_personal * offsets.square().sum() / len(known))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LearnedTaste(weights.detach(), {m: offsets[i].detach() for i, m in enumerate(known)})
