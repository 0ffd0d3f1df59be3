"""Group-level preference losses (DESIGN §5; paper §4.2.2, §4.3.2 and appendix A).

Scores are [B, K]; ``positive`` and ``valid`` are boolean [B, K]. A group's negatives are its valid
non-positives. Groups without a positive or without a negative contribute nothing; the result is the
mean over the groups that do contribute (zero, still differentiable, when none does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masks(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None):
    valid = torch.ones_like(positive, dtype=torch.bool) if valid is None else valid.bool()
    positive = positive.bool() & valid
    negative = valid & ~positive
    usable = positive.any(dim=1) & negative.any(dim=1)  # [B]
    return positive, negative, usable


def _mean_over(per_group: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """The mean over usable groups, zero (still differentiable) when none is; without reading the mask on the host,
    so a meta-device trace (``bench --plan``) runs it too."""
    kept = torch.where(usable, per_group, torch.zeros_like(per_group))  # a where, not a product: no NaN leaks
    return kept.sum() / usable.sum().clamp(min=1)


def plackett_luce_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L = −(1/|P|) Σ_{p∈P} log( exp(s_p) / (exp(s_p) + Σ_{n∈N} exp(s_n)) ), mean over groups."""
    positive, negative, usable = _masks(scores, positive, valid)
    scores = scores.float()
    negatives = torch.logsumexp(scores.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)  # [B, 1]
    log_choice = scores - torch.logaddexp(scores, negatives)  # [B, K]
    per_group = -(log_choice * positive).sum(1) / positive.sum(1).clamp(min=1)
    return _mean_over(per_group, usable)


def bradley_terry_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise baseline: −log σ(s_p − s_n), mean over a group's (p, n) pairs, then over groups."""
    positive, negative, usable = _masks(scores, positive, valid)
    scores = scores.float()
    margins = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, K(p), K(n)]
    pairs = positive.unsqueeze(2) & negative.unsqueeze(1)
    per_group = -(F.logsigmoid(margins) * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return _mean_over(per_group, usable)


def implicit_rewards(model_err: torch.Tensor, ref_err: torch.Tensor, beta: float) -> torch.Tensor:
    """r_i = −(β/2)·(‖ε − ε_θ‖² − ‖ε − ε_ref‖²), errors [B, K] as per-candidate mean squared errors."""
    return -0.5 * beta * (model_err.float() - ref_err.float())


def group_dpo_loss(model_err: torch.Tensor, ref_err: torch.Tensor, positive: torch.Tensor, beta: float,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """The group generalization of Diffusion-DPO: Plackett-Luce over implicit rewards.

    With one positive and one negative it equals Diffusion-DPO's
    ``-logsigmoid(-0.5 * beta * (model_diff - ref_diff))``, so β keeps its meaning (5000 for SD 1.5).
    """
    return plackett_luce_loss(implicit_rewards(model_err, ref_err, beta), positive, valid)


def pairwise_dpo_loss(model_err: torch.Tensor, ref_err: torch.Tensor, positive: torch.Tensor, beta: float,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion-DPO applied to every (positive, negative) pair of a group (the ``--loss pairwise`` baseline)."""
    return bradley_terry_loss(implicit_rewards(model_err, ref_err, beta), positive, valid)


def winner_preserving_scale(residuals: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor, mu: float = 0.0,
                            eps: float = 1e-12) -> torch.Tensor:
    """Per group, how much of the negatives' gradient to keep so the positives' error does not rise.

    The Diffusion-SDPO safeguard (arXiv 2511.03317), in its output-space form, for groups: with e_P the
    mean residual ε_θ − ε of a group's positives and e_N that of its negatives (the candidates share
    the noise, so their residuals live in one space), a step along −∇err_P + λ·∇err_N keeps err_P from
    rising to first order when λ·⟨e_N, e_P⟩ ≤ (1 − μ)·‖e_P‖². So
    λ = min(1, (1 − μ)·‖e_P‖² / ⟨e_N, e_P⟩) where ⟨e_N, e_P⟩ > 0, else 1.

    residuals: [B, K, D] (ε_θ − ε per candidate, flattened; values in padded slots are ignored);
    positive, valid: [B, K] → λ: [B], without gradient.
    """
    residuals = residuals.detach().float()
    positive = positive.bool() & valid.bool()
    negative = valid.bool() & ~positive

    def mean_of(mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float()
        return (residuals * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)

    e_p, e_n = mean_of(positive), mean_of(negative)
    dot, norm = (e_p * e_n).sum(1), (e_p * e_p).sum(1)
    bound = (1.0 - mu) * norm / dot.clamp(min=eps)
    return torch.where(dot > 0, bound.clamp(max=1.0), torch.ones_like(dot))


def scale_gradient(values: torch.Tensor, scale: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``values`` unchanged in the forward pass; their gradient multiplied by ``scale`` [B] where ``where`` [B, K]."""
    scaled = values.detach() + scale[:, None].to(values.dtype) * (values - values.detach())
    return torch.where(where, scaled, values)
