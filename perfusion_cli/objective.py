"""The group-level Diffusion-DPO objective on one batch of groups (DESIGN §5; paper §4.3.2).

For B groups of up to K candidates (only valid candidates are encoded):

1. VAE latents x_0 of every candidate and the prompt's text embedding (frozen; optionally cached);
2. one noise ε and one time t per group, shared by its candidates; x_t and the target from the base's noise
   process (``perfusion_cli.noise``: DDPM's ε or v for the U-Nets, rectified flow's velocity ε − x_0);
3. ε_θ and ε_ref (or the velocities) from the frozen model (``FrozenSD.predictions``: the personalized branch; or
   ``full_predictions``: a whole trainable U-Net or transformer, Diffusion-DPO's own setting, which ``bench``
   measures against);
4. per-candidate errors ‖ε − ε̂‖² (mean over the latent), the implicit rewards
   r = −(β/2)(err_θ − err_ref), and the Plackett-Luce loss over each group's positives
   (``pairwise``: Diffusion-DPO on every positive-negative pair);
5. optionally, what keeps the model near the reference: ``safeguard`` μ scales each group's negatives'
   gradient so the positives' error does not rise to first order (Diffusion-SDPO's winner-preserving
   rule, ``losses.winner_preserving_scale``), ``kl_weight``·‖ε_θ − ε_ref‖² on every candidate (the
   per-step KL to the reference), and ``sft_weight``·err_θ over the positives (an SFT term on the
   selected candidates).

Positives are the logged selections, or a frozen PerFusionRM's top-k (``positives = "reward"``).
Besides the loss it returns the diagnostics Diffusion-DPO users ask for: the errors of both models
and their ratio (the KL price), the implicit reward margin and the pair accuracy.

``terms`` is the step from latents on, free of data-dependent shapes and of host reads, so that
``bench --plan`` traces this very code on the meta device (``plan.train_gen_step``).
"""

from __future__ import annotations

import contextlib

import torch

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.losses import (group_dpo_loss, implicit_rewards, pairwise_dpo_loss, scale_gradient,
                                  winner_preserving_scale)
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.models.text import TextConditions
from perfusion_cli.noise import noise_process

LOSSES = {"group": group_dpo_loss, "pairwise": pairwise_dpo_loss}


def top_k_positives(scores: torch.Tensor, valid: torch.Tensor, top_k: int) -> torch.Tensor:
    """[B, K] scores → each group's top-k valid candidates (at least one left as a negative)."""
    scores = scores.float().masked_fill(~valid, float("-inf"))
    k = torch.clamp(valid.sum(1) - 1, max=top_k)  # [B]
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return (ranks < k[:, None]) & valid


def reward_positives(reward, batch: GroupBatch, top_k: int) -> torch.Tensor:
    """The frozen reward model's top-k candidates of each group."""
    with torch.no_grad():
        scores = reward.score(batch.prompts, batch.images, batch.features, batch.valid)
    return top_k_positives(scores, batch.valid, top_k)


def preference_diagnostics(rewards: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Over a batch's (positive, negative) pairs: how often r_p > r_n, and the mean margin r_p − r_n."""
    pairs = (positive & valid).unsqueeze(2) & (valid & ~positive).unsqueeze(1)
    margins = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    count = pairs.sum().clamp(min=1)
    return {"pair_accuracy": ((margins > 0) & pairs).sum().item() / count.item(),
            "reward_margin": (margins * pairs).sum().item() / count.item()}


class GroupDPOObjective:
    def __init__(self, frozen: FrozenSD, config: GenTrainConfig, reward=None, autocast=None, predict=None):
        self.frozen = frozen
        self.config = config
        self.reward = reward
        self.process = noise_process(frozen.sd.noise_scheduler, config.time_density, config.logit_mean,
                                     config.logit_std)
        self.loss_fn = LOSSES[config.loss]
        self.autocast = autocast or contextlib.nullcontext
        self.predict = predict or frozen.predictions

    def __call__(self, policy, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device, valid = self.frozen.device, batch.valid
        rows = torch.arange(len(batch), device=device).repeat_interleave(valid.shape[1])[valid.flatten()]
        groups, slots = torch.nonzero(valid, as_tuple=True)
        keys = [(batch.session_ids[g], k) for g, k in zip(groups.tolist(), slots.tolist())]
        if batch.latents is not None:  # stored by prepare --latents (train-gen checked what made them)
            latents = batch.latents[valid].to(device, self.frozen.dtype)
            text = self.frozen.text_conditions(batch.text, batch.pooled).to(device, self.frozen.dtype)
        else:
            latents = self.frozen.latents(batch.images[valid], keys)
            text = self.frozen.text(batch.prompts)
        positive = reward_positives(self.reward, batch, self.config.top_k) if self.reward else batch.selected
        loss, terms = self.terms(policy, latents, text, batch.features, rows, valid, positive)
        model_err, ref_err = terms["model_err"], terms["ref_err"]
        rewards = implicit_rewards(model_err, ref_err, self.config.beta).detach()
        errors = {"model_err": model_err[valid].mean().item(), "ref_err": ref_err[valid].mean().item(),
                  "kl": terms["kl"].item()}
        return loss, {**errors, **{key: terms[key].item() for key in ("kl_term", "sft_term", "safeguard_scale")
                                   if key in terms},
                      "err_gap": errors["model_err"] - errors["ref_err"],
                      "err_ratio": errors["model_err"] / max(errors["ref_err"], 1e-12),
                      **preference_diagnostics(rewards, positive, valid),
                      "truncated_prompts": self.frozen.truncated_prompts}

    def terms(self, policy, latents: torch.Tensor, text: TextConditions, features: torch.Tensor, rows: torch.Tensor,
              valid: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of B groups from their valid candidates' latents [N, C, h, w] (``rows`` [N]: each one's group),
        the groups' text and merchant features ([B, …]) and masks [B, K]; with the per-candidate errors [B, K],
        the KL and the anchors, as tensors."""
        device = latents.device
        scale = self.frozen.latent_scale
        text = text.sized(latents.shape[-2] * scale, latents.shape[-1] * scale)
        # one noise and one time per group, shared by its candidates
        noise = torch.randn((valid.shape[0], *latents.shape[1:]), device=device, dtype=latents.dtype)[rows]
        times = self.process.times(valid.shape[0], device)[rows]
        noisy = self.process.noisy(latents, noise, times)
        target = self.process.target(latents, noise, times).float()
        with self.autocast():
            personalized, reference = self.predict(policy, noisy, times, text[rows], features[rows])
        model_err = self._per_candidate(personalized, target, valid)
        ref_err = self._per_candidate(reference, target, valid)
        terms = {}
        if self.config.safeguard is not None:  # keep only the part of the negatives' push the positives survive
            residuals = torch.zeros((*valid.shape, target[0].numel()), device=device).masked_scatter(
                valid[..., None], (personalized.detach().float() - target).flatten(1))
            safeguard = winner_preserving_scale(residuals, positive, valid, self.config.safeguard)
            model_err = scale_gradient(model_err, safeguard, valid & ~positive)
            terms["safeguard_scale"] = safeguard.mean()
        loss = self.loss_fn(model_err, ref_err, positive, self.config.beta, valid)
        anchors = self._anchors(model_err, positive & valid, personalized, reference)
        kl = (personalized.detach().float() - reference.float()).pow(2).mean()
        return loss + sum(anchors.values()), {"model_err": model_err, "ref_err": ref_err, "kl": kl, **anchors,
                                              **terms}

    def _anchors(self, model_err: torch.Tensor, positive: torch.Tensor, personalized: torch.Tensor,
                 reference: torch.Tensor) -> dict:
        """Terms that hold the model near the reference: the KL of each denoising step to the reference's
        (Gaussian steps of equal variance: ∝ ‖ε_θ − ε_ref‖², the per-step KL DPOK regularizes with), on every
        candidate; and the SFT anchor, the positives' own denoising error."""
        terms = {}
        if self.config.kl_weight:
            terms["kl_term"] = self.config.kl_weight * (personalized.float() - reference.float()).pow(2).mean()
        if self.config.sft_weight:  # the positives' mean error, without indexing by the mask (traceable)
            terms["sft_term"] = self.config.sft_weight * (model_err * positive).sum() / positive.sum().clamp(min=1)
        return terms

    @staticmethod
    def _per_candidate(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean squared error per valid candidate, scattered into [B, K] (zeros in padded slots)."""
        return torch.zeros(valid.shape, device=target.device).masked_scatter(
            valid, (prediction.float() - target).pow(2).mean(dim=(1, 2, 3)))
