"""``perfusion generate``: images for one merchant and prompt, PNGs plus ``metadata.json``.

The merchant is looked up in the prepared data's ``merchant_table.jsonl`` and encoded with the vocabulary
the generator was trained with. An unknown merchant is an error unless ``cold_start`` says how to
build u: ``mean`` (the average u of the training merchants) or ``features`` (a profile given as
``key=value`` pairs; its ``merchant_id`` maps to the out-of-vocabulary id). Image i uses seed
``seed + i``, so ``--no-personalization`` with the same seeds gives the base model's counterparts.

Output folders are named after the merchant and prompt; two requests whose names would collide
(``M1`` and ``m1``, say) get different folders, and a repeated request replaces its own.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL.PngImagePlugin import PngInfo

from perfusion_cli import __version__
from perfusion_cli.config import GenerateConfig
from perfusion_cli.data.identifiers import slug
from perfusion_cli.data.manifest import Manifest, load_manifest
from perfusion_cli.data.merchants import COLD_START_ADVICE, read_merchants, require_known, typed_profile
from perfusion_cli.data.requests import Request
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.environment import pick_device
from perfusion_cli.errors import ConfigError, DataError
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.backbones import tokenize
from perfusion_cli.models.reward import load_reward_for
from perfusion_cli.pipeline import PerFusionPipeline, to_pil
from perfusion_cli.pipelines import load_pipeline
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.runs import run_of


def parse_profile(pairs: list[str], vocab: FeatureVocab) -> dict:
    """``["style=bohemian", "price_level=40"]`` → a profile typed by the vocabulary's feature kinds."""
    profile = {}
    for pair in (p for item in pairs for p in re.split(r"[,\s]+", item.strip()) if p):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--features expects key=value pairs, got {pair!r}")
        profile[key] = value
    return typed_profile(profile, vocab, "--features")


def merchant_condition(pipeline: PerFusionPipeline, merchants: dict[str, dict], data_dir: Path, merchant: str,
                       cold_start: str | None, profile: dict | None) -> tuple[torch.Tensor | None,
                                                                            torch.Tensor | None, dict]:
    """(features [1, F] or None, embedding [1, d_u] or None, a description for the metadata);
    ``merchants`` is the prepared data's table (``read_merchants``); ``profile`` a typed cold-start profile."""
    vocab = pipeline.branch.vocab
    if merchant in merchants:
        ids = vocab.encode(merchant, merchants[merchant]["features"])
        return torch.tensor([ids]), None, {"source": "prepared data", "role": merchants[merchant]["role"]}
    if not cold_start:
        require_known(merchant, merchants, data_dir, COLD_START_ADVICE)
    if cold_start == "features":
        if profile is None:
            raise ConfigError("--cold-start features needs the merchant's profile: --features key=value …")
        return torch.tensor([vocab.encode(merchant, profile)]), None, {"source": "cold start: features",
                                                                        "profile": profile}
    training = [row["feature_ids"] for row in merchants.values() if row["role"] == "train"]
    with torch.no_grad():
        u = pipeline.branch.merchant(torch.tensor(training, device=pipeline.device)).mean(0, keepdim=True)
    return None, u, {"source": "cold start: mean of training merchants", "merchants": len(training)}


def output_folder(root: Path, merchant: str, prompt: str, seed: int, personalized: bool) -> Path:
    """``root/<merchant>/<prompt>-seed<S>[-base]``, with ``-2``, ``-3`` … when that name already holds
    the images of another merchant or prompt (names are case-folded and shortened)."""
    name = f"{slug(prompt)}-seed{seed}{'' if personalized else '-base'}"
    for index in range(1, 10_000):
        merchant_dir = root / (slug(merchant) + ("" if index == 1 else f"-{index}"))
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


@dataclass
class _Condition:
    features: torch.Tensor | None  # [1, F], or None for a cold start by the mean embedding
    embedding: torch.Tensor | None  # [1, d_u]: what the branch is conditioned on (None: the base model)
    source: dict


class Designer:
    """The generator, its data and reward model, loaded once; serves one request or many (batched)."""

    def __init__(self, run_dir: Path, data_dir: Path, config: GenerateConfig, progress: Progress | None = None):
        self.progress = progress or NullProgress()
        self.run_dir, self.data_dir, self.config = run_dir, Path(data_dir), config
        self.manifest = load_manifest(data_dir)
        self.merchants = read_merchants(data_dir)
        if config.rerank and not config.reward:
            raise ConfigError("--rerank needs a reward model: train one (`perfusion train-rm`) or pass --reward")
        device = pick_device(config.device)
        self.pipeline = load_pipeline(run_dir, device)
        self.pipeline.branch.vocab.require_same(self.manifest.vocab, "generator", data_dir)
        self.run_code = run_of(run_dir).code()  # the commit that trained the generator (run.json)
        self.reward = None
        if config.reward:
            self.reward = load_reward_for(config.reward, self.manifest.vocab, data_dir, device, "reward model")

    @torch.no_grad()
    def condition(self, merchant: str, profile_pairs: list[str] | None = None, profile: dict | None = None,
                  cold_start: str | None = None) -> _Condition:
        """The merchant's condition: from the prepared data, else a cold start (``config.cold_start`` unless
        ``cold_start`` is given) from ``--features`` pairs or an already typed ``profile``."""
        if profile_pairs:
            profile = parse_profile(profile_pairs, self.pipeline.branch.vocab)
        features, embedding, source = merchant_condition(self.pipeline, self.merchants, self.data_dir, merchant,
                                                         cold_start or self.config.cold_start, profile)
        if features is not None:
            embedding = self.pipeline.branch.merchant(features.to(self.pipeline.device))
        return _Condition(features, embedding if self.config.personalization else None, source)

    @torch.no_grad()
    def images(self, requests: list[Request], conditions: list[_Condition]) -> list[torch.Tensor]:
        """Every request's images, in batches of ``batch_size`` across requests (the condition is per sample); each
        denoising step advances ``progress`` by one (``steps_for`` counts them)."""
        jobs = [(r, i) for r, request in enumerate(requests) for i in range(request.n)]
        config = self.config
        out: list[torch.Tensor] = []
        for start in range(0, len(jobs), config.batch_size):
            chunk = jobs[start:start + config.batch_size]
            embeddings = [conditions[r].embedding for r, _ in chunk]
            personal = torch.cat(embeddings) if all(e is not None for e in embeddings) else None
            out.append(self.pipeline([requests[r].prompt for r, _ in chunk], merchant_embedding=personal,
                                     num_inference_steps=config.steps, guidance_scale=config.guidance,
                                     height=config.resolution, width=config.resolution, output_type="pt",
                                     generator=[torch.Generator().manual_seed(requests[r].seed + i) for r, i in chunk],
                                     on_step=self.progress.advance, branch_every=config.branch_every,
                                     branch_until=config.branch_until).images)
        flat = torch.cat(out)
        bounds = [0, *itertools.accumulate(request.n for request in requests)]
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]

    def scores(self, prompt: str, images: torch.Tensor, condition: _Condition) -> dict:
        """PerFusionRM's score of each image for this merchant and prompt (``values`` empty without one)."""
        return _reward_scores(self.reward, prompt, images, condition.features, len(self.manifest.vocab.features))

    def ranked(self, values: list, n: int) -> list[int]:
        """The order to show ``n`` images in: best first by their reward ``values`` when reranking, else as made."""
        return sorted(range(n), key=lambda i: -values[i]) if self.config.rerank else list(range(n))

    def write(self, request: Request, images: torch.Tensor, condition: _Condition, out_root: Path) -> dict:
        """Score (reward model; oracle on synthetic data), rerank if asked, write PNGs + metadata.json."""
        config = self.config
        seeds = [request.seed + i for i in range(request.n)]
        _, _, truncated = tokenize(self.pipeline.tokenizer, [request.prompt])
        scores = self.scores(request.prompt, images, condition)
        oracle = _oracle(self.manifest, request.merchant, images)
        order = self.ranked(scores["values"], request.n)
        folder = output_folder(out_root, request.merchant, request.prompt, request.seed, config.personalization)
        entries = []
        made = {"merchant": request.merchant, "prompt": request.prompt, "base_model": self.pipeline.base_model,
                "resolution": images.shape[-1], "steps": config.steps, "guidance": config.guidance,
                "personalized": config.personalization, "model": str(self.run_dir), "run_code": self.run_code,
                "perfusion": __version__}
        with atomic_dir(folder) as tmp:
            for rank, index in enumerate(order):
                name = f"{rank:02d}-seed{seeds[index]}.png"
                to_pil(images[index]).save(tmp / name, pnginfo=_png_text({**made, "seed": seeds[index]}))
                entries.append({"file": name, "seed": seeds[index], "rank": rank,
                                "reward": scores["values"][index] if scores["values"] else None,
                                "oracle": oracle[index] if oracle else None})
            metadata = {**made, "prompt_truncated": bool(truncated),
                        "prompt_token_limit": min(self.pipeline.tokenizer.model_max_length, 77),
                        "seed": request.seed, "merchant_source": condition.source,
                        "reward_model": config.reward, "reward_note": scores["note"], "reranked": config.rerank,
                        "settings": {**asdict(config), "n": request.n, "seed": request.seed}, "images": entries}
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=True))
        (folder.parent / ".merchant").write_text(request.merchant, encoding="utf-8")
        metadata["folder"] = str(folder)
        return metadata

    def steps_for(self, requests: list[Request]) -> int:
        """The denoising steps ``images(requests)`` runs (its pipeline calls × steps)."""
        return math.ceil(sum(request.n for request in requests) / self.config.batch_size) * self.config.steps

    def serve(self, requests: list[Request], out_root: Path, profile_pairs: list[str] | None = None) -> Iterator[dict]:
        """Generate and write the requests, yielding each one's metadata once its folder is written: a wave of
        requests (about ``batch_size`` images) at a time, so memory holds one wave, whatever the file's length."""
        waves = list(_waves(requests, self.config.batch_size))
        total = sum(request.n for request in requests)
        self.progress.start(f"generating {total} image(s) for {len(requests)} request(s)",
                            sum(self.steps_for(wave) for wave in waves))
        try:
            for wave in waves:
                conditions = [self.condition(request.merchant, profile_pairs) for request in wave]
                for request, batch, condition in zip(wave, self.images(wave, conditions), conditions):
                    yield self.write(request, batch, condition, out_root)
        finally:
            self.progress.stop()


def _waves(requests: list[Request], batch_size: int) -> Iterator[list[Request]]:
    """Consecutive requests grouped while their images fit ``batch_size`` (a larger request is a wave alone)."""
    wave: list[Request] = []
    for request in requests:
        if wave and sum(r.n for r in wave) + request.n > batch_size:
            yield wave
            wave = []
        wave.append(request)
    if wave:
        yield wave


def generate(run_dir: Path, data_dir: Path, merchant: str, prompt: str, config: GenerateConfig, out_root: Path,
             profile_pairs: list[str] | None = None, progress: Progress | None = None) -> dict:
    """One merchant and prompt: ``config.n`` images; returns the metadata it wrote."""
    designer = Designer(run_dir, data_dir, config, progress)
    [written] = designer.serve([Request(merchant, prompt, config.n, config.seed)], out_root, profile_pairs)
    return written


def _png_text(values: dict) -> PngInfo:
    """What made an image, in its PNG's text chunks (international text: prompts and ids may be any Unicode)."""
    info = PngInfo()
    for key, value in values.items():
        info.add_itxt(f"perfusion:{key}", "" if value is None else str(value))
    return info


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


def _oracle(manifest: Manifest, merchant: str, images: torch.Tensor) -> list[float] | None:
    """The synthetic marketplace's hidden-taste utility, when the data is synthetic and knows the merchant (the
    marketplace is imported only then)."""
    if not manifest.synthetic:
        return None
    from perfusion_cli.marketplace.synthetic import load_truth, oracle_utility

    truth = load_truth(manifest.data_dir)
    if truth is None or merchant not in truth:
        return None
    return [oracle_utility(truth[merchant], image.cpu().numpy()) for image in images]
