"""The reward-hacking guard of online runs: the reward beside judges it was not trained with.

Every ``probe_every`` steps (and at step 0, where the untrained branch is the base exactly) the same
probe pairs are drawn with the same seeds, one per image (deterministic DDIM) and scored by the reward and by each
judge: on synthetic data the oracle (the merchants' hidden tastes); on any data the clean-background
and intact-product shares and the prompt's zero-shot CLIP score; with ``--judge`` a second reward-model
run. A judge *falls* when its per-pair values sit below those of its best probe so far, paired over the
pairs, by more than its tolerance and by more than ``Z`` standard errors; the reward *climbs* when its
mean is above its mean at that best probe. Both at once is reward hacking: a warning, and with
``--stop-on-hacking`` the end of the run (the loop keeps the last probe that passed as the weights).

Every process draws the whole probe set, so all reach the same verdict without talking. The guard's
history (each judge's best probe) goes into the checkpoint, so a resumed run judges as the
uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from perfusion_cli.config import DEFAULT_CLIP, GenTrainConfig
from perfusion_cli.data.manifest import Manifest
from perfusion_cli.evaluation.gen import EvalPair, held_out_pairs, image_seed, score_metric
from perfusion_cli.evaluation.quality import INTEGRITY
from perfusion_cli.evaluation.scores import ClipScorer
from perfusion_cli.models.backbones import is_tiny
from perfusion_cli.models.reward import load_reward_for
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.loop import ProbeResult

Z = 3.0  # standard errors a fall must exceed: one-sided 0.13 % per judge and probe
# what a fall must also exceed, in each judge's units (the bars of docs/benchmarks.md: 2 CLIP points; 5 % of
# the samples losing their clean background or intact product); the oracle and a judge reward: any fall
TOLERANCE = {"clip": 2.0, "clean_background": 0.05, "intact": 0.05}


class HackingGuard:
    def __init__(self, draw: Callable[[], torch.Tensor], reward: Callable[[torch.Tensor], np.ndarray],
                 judges: dict[str, tuple[str, object]], pairs: list[EvalPair], every: int):
        """``draw()`` → the probe images [P, n, 3, H, W]; ``reward(images)`` → [P, n] scores; ``judges``:
        name → (metric, scorer) as ``evaluation.gen.score_metric`` takes them."""
        self.draw, self.reward, self.judges, self.pairs, self.every = draw, reward, judges, pairs, every
        self.best: dict[str, dict] = {}  # judge → {"step", "reward", "values" (per pair)} of its best probe

    def due(self, step: int, last: int) -> bool:
        return step % self.every == 0 or step == last

    @torch.no_grad()
    def __call__(self, step: int) -> ProbeResult:
        images = self.draw()
        reward = np.nanmean(self.reward(images), axis=1)
        row = {"reward": float(np.mean(reward))}
        result = ProbeResult(row)
        for name, (metric, scorer) in self.judges.items():
            values = np.nanmean(score_metric(metric, scorer, self.pairs, images), axis=1)
            row[name] = float(np.nanmean(values))
            best = self.best.get(name)
            if best is not None and self._fell(name, values, np.asarray(best["values"])) \
                    and row["reward"] > best["reward"]:
                result.hacking = True
                result.warnings.append(
                    f"reward_hacking: the reward climbed ({best['reward']:.4g} at step {best['step']} → "
                    f"{row['reward']:.4g}) while the judge {name} fell ({float(np.nanmean(best['values'])):.4g} → "
                    f"{row[name]:.4g}) on the probe set: the model is gaming the reward; lower --lr, raise "
                    f"--kl-weight or improve the reward model")
            if best is None or row[name] > float(np.nanmean(best["values"])):
                self.best[name] = {"step": step, "reward": row["reward"], "values": values.tolist()}
        row["hacking"] = result.hacking
        return result

    @staticmethod
    def _fell(name: str, values: np.ndarray, best: np.ndarray) -> bool:
        drop = best - values
        drop = drop[~np.isnan(drop)]
        if not len(drop):
            return False
        mean = float(drop.mean())
        error = float(drop.std(ddof=1) / np.sqrt(len(drop))) if len(drop) > 1 else 0.0
        return mean > TOLERANCE.get(name, 0.0) and mean > Z * error

    def state(self) -> dict:
        return {"best": self.best}

    def load_state(self, state: dict) -> None:
        self.best = state["best"]


SEEDS = 2  # images per probe pair


def build_guard(config: GenTrainConfig, pipeline: PerFusionPipeline, branch, reward, manifest: Manifest,
                device) -> HackingGuard | None:
    """The guard of an online run (None with probe_every 0): probe pairs from the validation split (else the
    training split), the judges this data allows."""
    if not config.probe_every:
        return None
    split = "val" if manifest.raw["splits"].get("val", {}).get("groups", 0) else "train"
    pairs = held_out_pairs(manifest.data_dir, split, config.probe_pairs, config.resolution, by_process=False)
    judges: dict[str, tuple[str, object]] = {}
    if manifest.synthetic:  # the marketplace is imported only for its own data
        from perfusion_cli.marketplace.synthetic import load_truth

        truth = load_truth(manifest.data_dir)
        if truth is not None:
            judges["oracle"] = ("oracle", truth)
    if config.judge:
        judges["judge_reward"] = ("perfusionrm", load_reward_for(config.judge, manifest.vocab, manifest.data_dir,
                                                                 device, "judge reward model"))
    judges.update({metric: (metric, metric) for metric in INTEGRITY})
    judges["clip"] = ("clip", ClipScorer(config.judge_clip or ("tiny" if is_tiny(config.base_model) else DEFAULT_CLIP),
                                         device))
    prompts = [pair.prompt for pair in pairs for _ in range(SEEDS)]
    features = torch.tensor([pair.features for pair in pairs for _ in range(SEEDS)])

    def draw() -> torch.Tensor:
        training = branch.training
        branch.eval()
        try:
            images = pipeline(prompts, features=features, num_inference_steps=config.sample_steps,
                              guidance_scale=config.sample_guidance, height=config.resolution, width=config.resolution,
                              generator=[torch.Generator().manual_seed(image_seed(config.seed, p, j, SEEDS))
                                         for p in range(len(pairs)) for j in range(SEEDS)], output_type="pt").images
        finally:
            branch.train(training)
        return images.cpu().view(len(pairs), SEEDS, *images.shape[1:])

    def rewards(images: torch.Tensor) -> np.ndarray:
        scores = reward.score([pair.prompt for pair in pairs], images.to(device), features[::SEEDS].to(device))
        return scores.float().cpu().numpy()

    return HackingGuard(draw, rewards, judges, pairs, config.probe_every)
