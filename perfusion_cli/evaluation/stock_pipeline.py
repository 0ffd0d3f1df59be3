"""On synthetic data: does a stock diffusers pipeline personalize with ``perfusion export``'s files?

The pipeline the base model's ``model_index.json`` names (``AutoPipelineForText2Image``), with
perfusion generate's sampler, draws each held-out (merchant, prompt) pair twice from the same seed: as
it is, then with the exported IP-Adapter and the merchant's exported embedding. The marketplace's
oracle scores both. Nothing of PerFusion's own pipeline is used. One call per pair: a stock pipeline
repeats its ``ip_adapter_image_embeds`` over every prompt and image of a call (``batch_size ×
num_images_per_prompt``), so one call personalizes for one merchant; embeddings of several merchants
stacked into one call are silently spread across the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from perfusion_cli.evaluation.gen import held_out_pairs, image_seed
from perfusion_cli.export import EMBEDDINGS, IP_ADAPTER
from perfusion_cli.marketplace.oracle import oracle_utility
from perfusion_cli.marketplace.synthetic import load_truth
from perfusion_cli.models.backbones import resolve


@torch.no_grad()
def stock_pipeline_gain(export_dir: Path, data_dir: Path, base_model: str, resolution: int, pairs: int = 24,
                        steps: int = 15, guidance: float = 3.0, images_per_pair: int = 1, seed: int = 0,
                        split: str = "test") -> dict:
    """Oracle utility of the stock pipeline without and with the exported adapter, averaged per pair (image j
    of pair p from ``image_seed``, as ``eval gen`` draws), and the share of pairs the adapter wins."""
    from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler

    held_out = held_out_pairs(data_dir, split, pairs, resolution)
    truth = load_truth(data_dir)
    pipe = AutoPipelineForText2Image.from_pretrained(resolve(base_model, "sd"), torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def draw(p: int, pair, **embeds) -> float:
        images = pipe(pair.prompt, height=resolution, width=resolution, num_inference_steps=steps,
                      guidance_scale=guidance, num_images_per_prompt=images_per_pair,
                      generator=[torch.Generator().manual_seed(image_seed(seed, p, j, images_per_pair))
                                 for j in range(images_per_pair)],
                      **embeds).images
        return float(np.mean([oracle_utility(truth[pair.merchant_id], image) for image in images]))

    base = np.array([draw(p, pair) for p, pair in enumerate(held_out)])
    pipe.load_ip_adapter(str(export_dir), subfolder="", weight_name=IP_ADAPTER, image_encoder_folder=None)
    embeddings = load_file(Path(export_dir) / EMBEDDINGS)
    # one merchant per call: diffusers repeats ip_adapter_image_embeds over the whole batch
    personalized = np.array([draw(p, pair, ip_adapter_image_embeds=[_both_halves(embeddings[pair.merchant_id])])
                             for p, pair in enumerate(held_out)])
    gains = personalized - base
    return {"pairs": len(held_out), "base": float(base.mean()), "personalized": float(personalized.mean()),
            "gain": float(gains.mean()), "win_rate": float((gains > 0).mean())}


def _both_halves(u: torch.Tensor) -> torch.Tensor:
    """[d_u] → [2, 1, d_u]: the merchant as guidance's negative and positive image embedding."""
    return torch.stack([u, u])[:, None]
