"""Where PerFusionRM's last points go on a synthetic draw: a ladder from its pixels to the oracle's eyes
(docs/benchmarks.md, "Subtle tastes and few records").

    .venv/bin/python scripts/rm_ladder.py WORKSPACE RUN [--l2-profile 0.01] [--l2-personal 0.3]

WORKSPACE is a prepared synthetic workspace (its ``data/``), RUN a reward-model run trained on it.
Every rung below the model itself learns the same taste from the same training picks, to convergence
(``evaluation.taste_learner``):

    s(candidate of merchant m) = ⟨B ψ(m) + D_m, φ(candidate)⟩

ψ(m) is a one-hot of the merchant's profile features as the model gets them (the vocabulary's ids,
the merchant id left out) plus a constant, D_m a personal offset for each merchant with training
records (none for cold-start merchants), both L2-shrunk; the loss is the RM's Plackett-Luce loss,
minimized by L-BFGS. The rungs differ only in the image features φ:

- ``taste on the RM's embedding``: the RM's image embedding (modulated as for an unknown merchant),
  standardized over the training candidates: what a converged linear taste gets from the model's eyes.
- ``taste on attributes read from it``: a ridge readout of the oracle's attributes
  (``evaluation.attributes``) from that embedding, fitted on the training candidates' *true* attributes:
  the same eyes, with the directions that matter found from clean labels that the picks do not carry.
- ``perfect eyes``: the oracle's attributes themselves, in the utility's own basis: perfect eyes and the
  taste's form given, only its weights learned from the picks. ``eval rm`` prints it among its ceilings.

Then the records ceiling and the oracle (``evaluation.ceilings``), on the test split (known merchants'
later sessions) and the cold-start split. Prints a markdown table and the readout's R² per attribute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perfusion_cli.config import EvalRMConfig
from perfusion_cli.data.loader import EvalStream, StreamSpec
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.oracle import measure, stack
from perfusion_cli.data.synthetic import read_truth
from perfusion_cli.evaluation.attributes import ATTRIBUTES, attributes
from perfusion_cli.evaluation.ceilings import ceilings
from perfusion_cli.evaluation.taste_learner import L2_PERSONAL, L2_PROFILE, fit_taste, profile_onehot
from perfusion_cli.metrics import gauc
from perfusion_cli.models.backbones import clip_pixels
from perfusion_cli.models.reward import RewardModel, load_reward_model

SPLITS = ("train", "test", "cold_start")


@torch.no_grad()
def read_split(model: RewardModel, data_dir: Path, split: str, group_size: int, resolution: int,
               with_attributes: bool = False) -> dict:
    """Every group of ``split``: the model's scores [G, K], its embedding [G, K, P], the profile ids [G, F],
    valid and picked [G, K], merchant ids [G]; ``with_attributes``, also the oracle's attributes [G, K, A]
    (measured at the draw's ``resolution``: only the readout's training split needs them)."""
    parts: dict[str, list] = {name: [] for name in ("scores", "embedding", "features", "valid", "picked",
                                                    "merchants", *(["attributes"] if with_attributes else []))}
    for batch in EvalStream(StreamSpec(data_dir, split, 32, group_size, resolution)):
        flat = batch.valid.flatten()
        pixels = clip_pixels(batch.images.flatten(0, 1)[flat], model.module.image_size)
        unknown = torch.zeros(int(flat.sum()), batch.features.shape[1], dtype=torch.long)  # out-of-vocabulary ids
        embedding = torch.zeros(flat.numel(), model.module.config.clip_config["projection_dim"])
        embedding[flat] = model.module.image_embeddings(pixels, unknown)
        if with_attributes:
            seen = np.zeros((len(batch), group_size, len(ATTRIBUTES)), dtype=np.float32)
            for g in range(len(batch)):
                candidates = torch.nonzero(batch.valid[g]).flatten().tolist()
                seen[g, candidates] = attributes(stack([measure(batch.images[g, k].numpy()) for k in candidates]))
            parts["attributes"].append(torch.from_numpy(seen))
        parts["scores"].append(model.score(batch.prompts, batch.images, batch.features, batch.valid))
        parts["embedding"].append(embedding.view(len(batch), group_size, -1))
        parts["features"].append(batch.features)
        parts["valid"].append(batch.valid)
        parts["picked"].append(batch.selected.bool())
        parts["merchants"] += list(batch.merchant_ids)
    return {name: (np.array(values) if name == "merchants" else torch.cat(values)) for name, values in parts.items()}


def split_gauc(split: dict, scores: torch.Tensor) -> float:
    valid = split["valid"].numpy()
    merchants = np.repeat(split["merchants"][:, None], valid.shape[1], axis=1)[valid]
    return gauc(scores.numpy()[valid], split["picked"].numpy()[valid], list(merchants))


def ladder(workspace: Path, run: Path, l2_profile: float, l2_personal: float) -> tuple[list[tuple], list[float]]:
    data_dir = workspace / "data"
    model = load_reward_model(run)
    group_size = load_manifest(data_dir).max_candidates
    drawn = read_truth(data_dir)
    if drawn is None:
        raise SystemExit(f"{data_dir} holds real data: the ladder needs a synthetic draw's oracle")
    resolution = int(drawn.get("config", {}).get("resolution", 64))
    splits = {name: read_split(model, data_dir, name, group_size, resolution, with_attributes=name == "train")
              for name in SPLITS}
    train = splits["train"]
    embedded = train["embedding"][train["valid"]]
    mean, std = embedded.mean(0), embedded.std(0) + 1e-6
    true = train["attributes"][train["valid"]]
    design = torch.cat([(embedded - mean) / std, torch.ones(len(embedded), 1)], dim=1)
    readout = torch.linalg.solve(design.T @ design + torch.eye(design.shape[1]), design.T @ true)  # ridge, λ 1
    explained = 1 - ((design @ readout - true).square().mean(0) / true.var(0).clamp(min=1e-9))

    def embedding(split: dict) -> torch.Tensor:
        return (split["embedding"] - mean) / std * split["valid"][..., None]

    def read(split: dict) -> torch.Tensor:
        standardized = embedding(split)
        return torch.cat([standardized, torch.ones(*standardized.shape[:2], 1)], -1) @ readout * split["valid"][..., None]

    rows = [("PerFusionRM", *(split_gauc(splits[name], splits[name]["scores"]) for name in SPLITS[1:]))]
    cardinalities = model.vocab.cardinalities
    profiles = {name: profile_onehot(split["features"], cardinalities) for name, split in splits.items()}
    for label, features in (("taste on the RM's embedding", embedding), ("taste on attributes read from it", read)):
        taste = fit_taste(features(train), profiles["train"], list(train["merchants"]), train["picked"],
                          train["valid"], l2_profile, l2_personal)
        rows.append((label, *(split_gauc(splits[name], taste.scores(features(splits[name]), profiles[name],
                                                                    list(splits[name]["merchants"])))
                              for name in SPLITS[1:])))
    bounds = {name: {row["model"]: row["gauc"] for row in ceilings(data_dir, EvalRMConfig(split=name))}
              for name in SPLITS[1:]}
    for name in ("perfect eyes", "records ceiling", "oracle"):
        rows.append((name, *(bounds[split][name] for split in SPLITS[1:])))
    return rows, explained.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("run", type=Path)
    # rungs 1 and 2 only: perfect eyes is eval rm's ceiling, with the library's settings
    parser.add_argument("--l2-profile", type=float, default=L2_PROFILE, help="L2 on the profile part (rungs 1-2)")
    parser.add_argument("--l2-personal", type=float, default=L2_PERSONAL, help="L2 on the personal part (rungs 1-2)")
    args = parser.parse_args()
    rows, explained = ladder(args.workspace, args.run, args.l2_profile, args.l2_personal)
    oracle = rows[-1][1:]
    print("| rung | test GAUC | / oracle | cold-start GAUC | / oracle |\n|---|---|---|---|---|")
    for label, test, cold in rows:
        print(f"| {label} | {test:.3f} | {test / oracle[0]:.0%} | {cold:.3f} | {cold / oracle[1]:.0%} |")
    print("readout R²: " + ", ".join(f"{name} {value:.2f}" for name, value in zip(ATTRIBUTES[:-1], explained)))


if __name__ == "__main__":
    main()
