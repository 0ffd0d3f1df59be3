"""On-policy groups for ``train-gen --online`` (docs/architecture.md, "Online training").

Each step takes the batch's (merchant, prompt) pairs from the prepared training data and, for each,
draws ``group_size`` candidates from the current personalized model (``OnlineGroups``): DDIM from
fresh noise (η ``sample_eta``), a few steps, the branch in eval mode, as ``generate`` would draw them. The
frozen reward model scores each group for its merchant and its top-k become the positives; the
candidates' final latents are the x_0 the group loss (``GroupDPOObjective``) noises and denoises, so
nothing is re-encoded. The group key is (merchant, prompt).

``OnlineObjective`` is the loss the training loop calls: the on-policy group, or, on the share
``online_mix`` of the calls (spread evenly, the same on every process), the logged group with its
labels, so the logs still teach what the reward model cannot. Its call count is part of the checkpoint,
and every draw comes from torch's global RNG, which the checkpoint holds too: a resumed online run
repeats the uninterrupted one.
"""

from __future__ import annotations

import math
import time

import torch

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.objective import GroupDPOObjective, top_k_positives
from perfusion_cli.pipeline import PerFusionPipeline


class OnlineGroups:
    """Draws, scores and ranks the on-policy group of every (merchant, prompt) in a batch."""

    def __init__(self, pipeline: PerFusionPipeline, reward, config: GenTrainConfig, text):
        """``reward``: anything with ``score(prompts, images [B, G, 3, H, W], features [B, F]) → [B, G]``
        (a ``RewardModel``); ``text``: prompts → ``TextConditions`` (the frozen model's, cached)."""
        self.pipeline = pipeline
        self.reward = reward
        self.config = config
        self.text = text

    @torch.no_grad()
    def __call__(self, branch, batch: GroupBatch) -> tuple[GroupBatch, dict[str, float]]:
        size, count = self.config.group_size, len(batch)
        pipeline, resolution = self.pipeline, self.config.resolution
        scale = pipeline.vae_scale_factor
        noise = torch.randn((count * size, pipeline.latent_channels, resolution // scale,
                             resolution // scale), device=pipeline.device)
        training = branch.training
        branch.eval()  # the policy as generate draws it (no merchant-id dropout)
        started = time.perf_counter()
        try:
            latents = pipeline([prompt for prompt in batch.prompts for _ in range(size)],
                               features=batch.features.repeat_interleave(size, 0), latents=noise,
                               num_inference_steps=self.config.sample_steps,
                               guidance_scale=self.config.sample_guidance, eta=self.config.sample_eta,
                               height=resolution, width=resolution, output_type="latent").images
        finally:
            branch.train(training)
        images = pipeline.decode(latents).view(count, size, 3, resolution, resolution)
        sampled = time.perf_counter()
        valid = torch.ones((count, size), dtype=torch.bool, device=images.device)
        scores = self.reward.score(batch.prompts, images, batch.features.to(images.device), valid).float()
        scored = time.perf_counter()
        text = self.text(batch.prompts)
        groups = GroupBatch(images=images, valid=valid, selected=top_k_positives(scores, valid, self.config.top_k),
                            features=batch.features, prompts=batch.prompts, merchant_ids=batch.merchant_ids,
                            session_ids=batch.session_ids, latents=latents.view(count, size, *latents.shape[1:]),
                            text=text.hidden, pooled=text.pooled)
        return groups, {"reward": scores.mean().item(), "reward_best": scores.max(1).values.mean().item(),
                        "reward_spread": scores.std(1).mean().item(), "sample_seconds": sampled - started,
                        "reward_seconds": scored - sampled}


class OnlineObjective:
    """The loss of one call: the on-policy group of the batch's pairs, or on ``online_mix`` of the calls the
    logged groups themselves; the first ``warmup`` calls all train on the logs (``online_warmup`` steps).
    ``drawn``: the loss of the on-policy groups when it differs from the logged ones' (``online_beta``,
    ``online_kl_weight``, ``online_sft_weight``)."""

    def __init__(self, groups: OnlineGroups, objective: GroupDPOObjective, mix: float, unwrap=lambda model: model,
                 warmup: int = 0, drawn: GroupDPOObjective | None = None):
        self.groups = groups
        self.objective = objective
        self.drawn = drawn or objective
        self.mix = mix
        self.unwrap = unwrap  # the branch itself from its DDP wrapper (sampling needs its methods)
        self.warmup = warmup
        self.calls = 0

    def logged(self, call: int) -> bool:
        """Whether call number ``call`` (1, 2, …) trains on the logs: all of the warm-up, then those where
        ⌊n·mix⌋ (n counted after the warm-up) steps up by one."""
        after = call - self.warmup
        return after <= 0 or math.floor(after * self.mix) > math.floor((after - 1) * self.mix)

    def __call__(self, policy, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.logged(self.calls):
            loss, logs = self.objective(policy, batch)
            return loss, {**logs, "online": 0.0}
        groups, drawn = self.groups(self.unwrap(policy), batch)
        started = time.perf_counter()
        loss, logs = self.drawn(policy, groups)
        return loss, {**logs, **drawn, "loss_seconds": time.perf_counter() - started, "online": 1.0}

    def state(self) -> dict:
        return {"calls": self.calls}

    def load_state(self, state: dict) -> None:
        self.calls = int(state["calls"])
