"""``perfusion generate``: images for one merchant and prompt, PNGs plus ``metadata.json``.

The merchant is looked up in the prepared data's ``merchants.jsonl`` and encoded with the vocabulary
the generator was trained with. An unknown merchant is an error unless ``cold_start`` says how to
build u: ``mean`` (the average u of the training merchants) or ``features`` (a profile given as
``key=value`` pairs; its ``merchant_id`` maps to the out-of-vocabulary id). Image i uses seed
``seed + i``, so ``--no-personalization`` with the same seeds gives the base model's counterparts.

Output folders are named after the merchant and prompt; two requests whose names would collide
(``M1`` and ``m1``, say) get different folders, and a repeated request replaces its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perfusion_cli.config import GenerateConfig
from perfusion_cli.data.manifest import Manifest, load_manifest
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.data.synthetic import load_truth, oracle_utility
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.environment import pick_device
from perfusion_cli.errors import ConfigError, DataError
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.backbones import tokenize
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.progress import NullProgress, Progress


def parse_profile(pairs: list[str], vocab: FeatureVocab) -> dict:
    """``["style=bohemian", "price_level=40"]`` → a profile typed by the vocabulary's feature kinds."""
    kinds = {feature.name: feature.kind for feature in vocab.features}
    profile = {}
    for pair in (p for item in pairs for p in re.split(r"[,\s]+", item.strip()) if p):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--features expects key=value pairs, got {pair!r}")
        if key not in kinds or key == "merchant_id":
            known = ", ".join(k for k in kinds if k != "merchant_id")
            raise ConfigError(f"--features: unknown feature {key!r} (the model knows: {known})")
        if kinds[key] == "numeric":
            try:
                profile[key] = float(value)
            except ValueError:
                raise ConfigError(f"--features: {key} is numeric, got {value!r}") from None
        else:
            profile[key] = value
    return profile


def merchant_condition(pipeline: PerFusionPipeline, manifest: Manifest, merchant: str, config: GenerateConfig,
                       profile_pairs: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """(features [1, F] or None, embedding [1, d_u] or None, a description for the metadata)."""
    vocab = pipeline.branch.vocab
    merchants = read_merchants(manifest.data_dir)
    if merchant in merchants:
        ids = vocab.encode(merchant, merchants[merchant]["features"])
        return torch.tensor([ids]), None, {"source": "prepared data", "role": merchants[merchant]["role"]}
    if not config.cold_start:
        raise DataError(f"unknown merchant {merchant!r}: it is not in the prepared data ({manifest.data_dir}) — pass "
                        f"--cold-start mean, or --cold-start features --features key=value …")
    if config.cold_start == "features":
        if not profile_pairs:
            raise ConfigError("--cold-start features needs the merchant's profile: --features key=value …")
        profile = parse_profile(profile_pairs, vocab)
        return torch.tensor([vocab.encode(merchant, profile)]), None, {"source": "cold start: features",
                                                                        "profile": profile}
    training = [row["feature_ids"] for row in merchants.values() if row["role"] == "train"]
    with torch.no_grad():
        u = pipeline.branch.merchant(torch.tensor(training, device=pipeline.device)).mean(0, keepdim=True)
    return None, u, {"source": "cold start: mean of training merchants", "merchants": len(training)}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


def output_folder(root: Path, merchant: str, prompt: str, seed: int, personalized: bool) -> Path:
    """``root/<merchant>/<prompt>-seed<S>[-base]``, with ``-2``, ``-3`` … when that name already holds
    the images of another merchant or prompt (names are case-folded and shortened)."""
    name = f"{_slug(prompt)}-seed{seed}{'' if personalized else '-base'}"
    for index in range(1, 10_000):
        merchant_dir = root / (_slug(merchant) + ("" if index == 1 else f"-{index}"))
        if _owner(merchant_dir / ".merchant") not in (None, merchant):
            continue
        for number in range(1, 10_000):
            folder = merchant_dir / (name if number == 1 else f"{name}-{number}")
            metadata = _read_metadata(folder)
            if metadata is None or metadata.get("prompt") == prompt:
                return folder
    raise DataError(f"too many colliding output folders under {root}")  # pragma: no cover


def _owner(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _read_metadata(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {} if folder.exists() else None


def generate(run_dir: Path, data_dir: Path, merchant: str, prompt: str, config: GenerateConfig, out_root: Path,
             profile_pairs: list[str] | None = None, progress: Progress | None = None) -> dict:
    """Generate, score (reward model; oracle on synthetic data), rerank if asked, write; returns metadata."""
    progress = progress or NullProgress()
    manifest = load_manifest(data_dir)
    reward_source = config.reward
    if config.rerank and not reward_source:
        raise ConfigError("--rerank needs a reward model: train one (`perfusion train-rm`) or pass --reward")
    device = pick_device(config.device)
    pipeline = PerFusionPipeline.from_run(run_dir, device)
    pipeline.branch.vocab.require_same(manifest.vocab, "generator", data_dir)
    reward = None
    if reward_source:
        reward = load_reward_model(reward_source, device)
        reward.vocab.require_same(manifest.vocab, "reward model", data_dir)
    features, embedding, source = merchant_condition(pipeline, manifest, merchant, config, profile_pairs or [])
    seeds = [config.seed + i for i in range(config.n)]
    _, _, truncated = tokenize(pipeline.tokenizer, [prompt])
    personal = {"features": features.repeat(config.n, 1), "merchant_embedding": None} if features is not None else \
        {"features": None, "merchant_embedding": embedding.repeat(config.n, 1)}
    if not config.personalization:
        personal = {"features": None, "merchant_embedding": None}
    progress.start(f"generating {config.n} image(s)", config.steps)
    images = pipeline([prompt] * config.n, **personal, num_inference_steps=config.steps,
                      guidance_scale=config.guidance, height=config.resolution, width=config.resolution,
                      generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt",
                      on_step=progress.advance).images
    progress.stop()
    scores = _reward_scores(reward, prompt, images, features, len(manifest.vocab.features))
    oracle = _oracle(data_dir, merchant, images)
    order = list(range(config.n))
    if config.rerank:
        order = sorted(order, key=lambda i: -scores["values"][i])
    folder = output_folder(out_root, merchant, prompt, config.seed, config.personalization)
    entries = []
    with atomic_dir(folder) as tmp:
        for rank, index in enumerate(order):
            name = f"{rank:02d}-seed{seeds[index]}.png"
            array = np.round(images[index].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
            Image.fromarray(array).save(tmp / name)
            entries.append({"file": name, "seed": seeds[index], "rank": rank,
                            "reward": scores["values"][index] if scores["values"] else None,
                            "oracle": oracle[index] if oracle else None})
        metadata = {"merchant": merchant, "prompt": prompt, "prompt_truncated": bool(truncated),
                    "prompt_token_limit": min(pipeline.tokenizer.model_max_length, 77),
                    "seed": config.seed, "personalized": config.personalization,
                    "merchant_source": source, "model": str(run_dir), "reward_model": reward_source,
                    "reward_note": scores["note"], "reranked": config.rerank, "settings": asdict(config),
                    "images": entries}
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=True))
    (folder.parent / ".merchant").write_text(merchant, encoding="utf-8")
    metadata["folder"] = str(folder)
    return metadata


def _reward_scores(reward, prompt, images, features, n_features: int) -> dict:
    if reward is None:
        return {"values": [], "note": "no reward model given"}
    note = "PerFusionRM score of (merchant, prompt, image)"
    if features is None:
        features = torch.zeros(1, n_features, dtype=torch.long)
        note += "; cold start by mean: scored as an unknown merchant (all features out of vocabulary)"
    with torch.no_grad():
        values = reward.score([prompt], images.unsqueeze(0), features.to(images.device)).squeeze(0)
    return {"values": [float(v) for v in values], "note": note}


def _oracle(data_dir: Path, merchant: str, images: torch.Tensor) -> list[float] | None:
    """The synthetic marketplace's hidden-taste utility, when the data is synthetic and knows the merchant."""
    truth = load_truth(data_dir)
    if truth is None or merchant not in truth:
        return None
    return [oracle_utility(truth[merchant], image.cpu().numpy()) for image in images]
