"""``perfusion eval gen``: personalized vs base generation on held-out (merchant, prompt) pairs.

For every pair, ``n_per_prompt`` images come from the personalized model and the same number from
the base model with the same seeds, each image from its own seed (``image_seed``). Each image gets
every score that can be computed (CLIP, Aesthetic, PerFusionRM, oracle); per model we report means,
FID against the real candidates of the evaluated sessions, and per metric the win rate of personalized over base: the share of pairs whose
personalized images score higher on average. A metric that cannot be computed stays in the result
with the reason, rather than vanishing.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perfusion_cli.config import DEFAULT_CLIP, EvalGenConfig
from perfusion_cli.data.identifiers import file_stem
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.data.manifest import Manifest, load_manifest
from perfusion_cli.environment import pick_device
from perfusion_cli.errors import PerfusionError
from perfusion_cli.evaluation.fid import compute_fid
from perfusion_cli.evaluation.intervals import interval, merchant_means, resampled_means
from perfusion_cli.evaluation.quality import INTEGRITY, denoising_errors, integrity_scores, kept_quality
from perfusion_cli.evaluation.report import write_report
from perfusion_cli.evaluation.scores import AestheticHead, AestheticScorer, ClipScorer
from perfusion_cli.model_card import record_evaluation
from perfusion_cli.models.backbones import is_tiny
from perfusion_cli.models.reward import load_reward_for
from perfusion_cli.pipeline import PerFusionPipeline, to_pil
from perfusion_cli.pipelines import load_pipeline
from perfusion_cli.progress import NullProgress, Progress

MODELS = ("base", "perfusion")
METRICS = ("clip", "aesthetic", "perfusionrm", "oracle", *INTEGRITY)


@dataclass
class EvalPair:
    merchant_id: str
    prompt: str
    features: list[int]
    references: torch.Tensor  # real candidates of one session with this pair, [k, 3, H, W]


@dataclass
class Generated:
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # model → [P, n, 3, H, W]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # metric → model → [P, n]


def image_seed(seed: int, pair: int, image: int, per_pair: int) -> int:
    """The seed of image ``image`` of pair number ``pair``: its own for every image. Drawing image j of every pair
    from seed + j instead gives the pairs one starting noise, and on a small model the noise decides the
    background: a table of 48 pairs × 2 images then measured the backgrounds of two draws."""
    return seed + pair * per_pair + image


def held_out_pairs(data_dir: Path, split: str, limit: int, resolution: int, by_process: bool = True) -> list[EvalPair]:
    """Distinct (merchant, prompt) pairs of a split, interleaved across merchants, at most ``limit``; from this
    process's share of the split's shards, or with ``by_process`` False from all of them (the same on every
    process)."""
    manifest = load_manifest(data_dir)
    spec = StreamSpec(Path(data_dir), split, 32, manifest.max_candidates, resolution, by_process=by_process)
    by_merchant: dict[str, dict[str, EvalPair]] = defaultdict(dict)
    for batch in eval_batches(spec):
        for row in range(len(batch)):
            merchant, prompt = batch.merchant_ids[row], batch.prompts[row]
            if prompt not in by_merchant[merchant]:
                by_merchant[merchant][prompt] = EvalPair(merchant, prompt, batch.features[row].tolist(),
                                                         batch.images[row][batch.valid[row]])
    queues = [list(pairs.values()) for _, pairs in sorted(by_merchant.items())]
    pairs: list[EvalPair] = []
    while any(queues) and (not limit or len(pairs) < limit):
        for queue in queues:
            if queue and (not limit or len(pairs) < limit):
                pairs.append(queue.pop(0))
    return pairs


def _generate(pipeline: PerFusionPipeline, pairs: list[EvalPair], config: EvalGenConfig, personalized: bool,
              progress: Progress) -> torch.Tensor:
    jobs = [(p, j) for p in range(len(pairs)) for j in range(config.n_per_prompt)]
    out = []
    for start in range(0, len(jobs), 16):
        chunk = jobs[start:start + 16]
        features = torch.tensor([pairs[p].features for p, _ in chunk]) if personalized else None
        images = pipeline([pairs[p].prompt for p, _ in chunk], features=features, num_inference_steps=config.steps,
                          branch_every=config.branch_every, branch_until=config.branch_until,
                          guidance_scale=config.guidance, output_type="pt",
                          generator=[torch.Generator().manual_seed(image_seed(config.seed, p, j, config.n_per_prompt))
                                     for p, j in chunk]).images
        out.append(images.cpu())
        progress.advance(len(chunk))
    return torch.cat(out).view(len(pairs), config.n_per_prompt, *out[0].shape[1:])


def _scorers(config: EvalGenConfig, base_model: str, device, manifest: Manifest) -> tuple[dict, dict]:
    """The scorers that can run, and for the others the reason why not."""
    scorers, reasons = {}, {}
    clip_name = config.clip_model or ("tiny" if is_tiny(base_model) else DEFAULT_CLIP)
    try:
        scorers["clip"] = ClipScorer(clip_name, device)
    except PerfusionError as exc:
        reasons["clip"] = str(exc)
    if not config.aesthetic_weights:
        reasons["aesthetic"] = ("no --aesthetic-weights given (the LAION improved-aesthetic-predictor .pth for "
                                "CLIP ViT-L/14)")
    elif "clip" in scorers:
        try:
            scorers["aesthetic"] = AestheticScorer(AestheticHead.from_file(config.aesthetic_weights), scorers["clip"])
        except PerfusionError as exc:
            reasons["aesthetic"] = str(exc)
    else:
        reasons["aesthetic"] = "needs the CLIP model, which did not load"
    if config.reward:
        try:
            scorers["perfusionrm"] = load_reward_for(config.reward, manifest.vocab, manifest.data_dir, device,
                                                     "reward model")
        except PerfusionError as exc:
            reasons["perfusionrm"] = str(exc)
    else:
        reasons["perfusionrm"] = "no reward model (train one with `perfusion train-rm`, or pass --reward)"
    for metric in INTEGRITY:
        scorers[metric] = metric
    truth = None
    if manifest.synthetic:  # the marketplace is imported only for its own data
        from perfusion_cli.marketplace.synthetic import load_truth

        truth = load_truth(manifest.data_dir)
    if truth is not None:
        scorers["oracle"] = truth
    else:
        reasons["oracle"] = "not synthetic data (no truth.json): there is no hidden taste to measure"
    return scorers, reasons


@torch.no_grad()
def score_metric(metric: str, scorer, pairs: list[EvalPair], images: torch.Tensor) -> np.ndarray:
    """images [P, n, 3, H, W] → scores [P, n]."""
    count, n = images.shape[:2]
    flat = images.flatten(0, 1)
    prompts = [pairs[p].prompt for p in range(count) for _ in range(n)]
    if metric == "clip":
        values = torch.cat([scorer.clip_score(prompts[i:i + 64], flat[i:i + 64]).cpu() for i in range(0, len(flat), 64)])
    elif metric == "aesthetic":
        values = torch.cat([scorer(flat[i:i + 64]).cpu() for i in range(0, len(flat), 64)])
    elif metric in INTEGRITY:
        values = integrity_scores(metric, flat)
    elif metric == "perfusionrm":
        features = torch.tensor([pair.features for pair in pairs])
        values = scorer.score([p.prompt for p in pairs], images.to(scorer.module.clip.device),
                              features.to(scorer.module.clip.device)).cpu()
    else:  # the oracle: the scorer is the marketplace's truth, so this is synthetic data
        from perfusion_cli.marketplace.synthetic import oracle_utility

        values = torch.tensor([oracle_utility(scorer[pairs[p].merchant_id], images[p, j].numpy())
                               if pairs[p].merchant_id in scorer else float("nan")
                               for p in range(count) for j in range(n)])
    return values.float().view(count, n).numpy()


def _save_images(images: torch.Tensor, folder: Path, pairs: list[EvalPair], tag: str, seed: int) -> list[list[str]]:
    names, per_pair = [], images.shape[1]
    for p, pair in enumerate(pairs):
        row = []
        for j in range(per_pair):
            # no id steers a path
            name = f"{p:03d}-{file_stem(pair.merchant_id)}-seed{image_seed(seed, p, j, per_pair)}-{tag}.png"
            to_pil(images[p, j]).save(folder / name)
            row.append(name)
        names.append(row)
    return names


def evaluate_generator(run_dir: Path, data_dir: Path, config: EvalGenConfig, report_dir: Path | None = None,
                       progress: Progress | None = None) -> dict:
    progress = progress or NullProgress()
    device = pick_device(config.device)
    manifest = load_manifest(data_dir)
    pipeline = load_pipeline(run_dir, device)
    pipeline.branch.vocab.require_same(manifest.vocab, "generator", data_dir)
    resolution = pipeline.default_resolution
    pairs = held_out_pairs(data_dir, config.split, config.max_pairs, resolution)
    if not pairs:
        raise PerfusionError(f"split {config.split!r} of {data_dir} has no groups to evaluate on")
    result = Generated()
    progress.start("generating (base and personalized)", 2 * len(pairs) * config.n_per_prompt)
    for model, personalized in (("base", False), ("perfusion", True)):
        result.images[model] = _generate(pipeline, pairs, config, personalized, progress)
    progress.stop()
    scorers, reasons = _scorers(config, pipeline.base_model, device, manifest)
    for metric, scorer in scorers.items():
        result.scores[metric] = {model: score_metric(metric, scorer, pairs, result.images[model]) for model in MODELS}
    summary = _summarize(result, reasons, pairs, config)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(report_dir) / "images" if report_dir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        files = {model: _save_images(result.images[model], folder, pairs, model, config.seed) for model in MODELS}
        summary["fid"] = _fid(result, pairs, folder, Path(scratch), device, scorers.get("clip"),
                              config.fid_inception)
        summary["denoising"] = denoising_errors(pipeline, data_dir, config)
        summary["kept_quality"] = kept_quality(summary)
        if report_dir:
            summary["report"] = str(write_report(Path(report_dir), summary, pairs, files, result, run_dir,
                                                 config.reward))
    record_evaluation(run_dir, "eval gen", config.split, data_dir,
                      {key: summary[key] for key in ("split", "pairs", "merchants", "steps", "guidance", "models",
                                                     "win_rate", "kept_quality")})
    return summary


def _summarize(result: Generated, reasons: dict, pairs: list[EvalPair], config: EvalGenConfig) -> dict:
    models = {model: {} for model in MODELS}
    win_rate, intervals = {}, {}
    merchants = [pair.merchant_id for pair in pairs]
    for metric in METRICS:
        if metric not in result.scores:
            for model in MODELS:
                models[model][metric] = None
            win_rate[metric] = None
            continue
        per_pair = {model: np.nanmean(result.scores[metric][model], axis=1) for model in MODELS}
        for model in MODELS:
            models[model][metric] = float(np.nanmean(per_pair[model]))
        gain = per_pair["perfusion"] - per_pair["base"]  # NaN where either is missing
        comparable = ~np.isnan(gain)
        won = np.where(comparable, (gain > 0).astype(float), np.nan)  # per pair: PerFusion scored higher
        win_rate[metric] = float(np.nanmean(won)) if comparable.any() and metric not in INTEGRITY else None
        if comparable.any():  # the gain and the win rate, merchants resampled alike for both
            draws = resampled_means([merchant_means(gain, merchants), merchant_means(won, merchants)])
            intervals[metric] = {"gain": float(np.nanmean(gain)), "gain_interval": interval(draws[0])}
            if win_rate[metric] is not None:
                intervals[metric]["win_rate_interval"] = interval(draws[1])
    return {"split": config.split, "pairs": len(pairs), "merchants": len(set(merchants)),
            "images_per_pair": config.n_per_prompt, "steps": config.steps, "guidance": config.guidance,
            "seed": config.seed, "models": models, "win_rate": win_rate, "intervals": intervals,
            "unavailable": reasons}


def _fid(result: Generated, pairs: list[EvalPair], generated: Path, scratch: Path, device, clip, inception) -> dict:
    if clip is None and not inception:
        return {"unavailable": "needs a CLIP model or --fid-inception"}
    reference = scratch / "reference"
    reference.mkdir(exist_ok=True)
    for p, pair in enumerate(pairs):
        for k, image in enumerate(pair.references):
            array = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(array).save(reference / f"{p:03d}-{k}.png")
    out = {"reference": "the real candidates of the evaluated sessions"}
    for model in MODELS:
        folder = scratch / f"fid-{model}"
        folder.mkdir(exist_ok=True)
        for file in generated.glob(f"*-{model}.png"):
            (folder / file.name).symlink_to(file.resolve())
        try:
            measured = compute_fid(folder, reference, device, clip, inception)
        except PerfusionError as exc:
            return {"unavailable": str(exc)}
        out[model] = measured.value
        out["features"] = measured.features
        out["generated_images"] = measured.generated
        out["reference_images"] = measured.reference
    return out
