"""On synthetic data: does a stock diffusers pipeline personalize with ``perfusion export``'s files?

The pipeline the base model's ``model_index.json`` names (``AutoPipelineForText2Image``), with
perfusion generate's sampler, draws each held-out (merchant, prompt) pair twice from the same seed: as
it is, then with the exported IP-Adapter and the merchant's exported embedding. The marketplace's
oracle scores both. Nothing of PerFusion's own pipeline is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from perfusion_cli.evaluation.gen import held_out_pairs
from perfusion_cli.export import EMBEDDINGS, IP_ADAPTER, base_for_pipelines
from perfusion_cli.marketplace.oracle import oracle_utility
from perfusion_cli.marketplace.synthetic import load_truth


@torch.no_grad()
def stock_pipeline_gain(export_dir: Path, data_dir: Path, base_model: str, resolution: int, pairs: int = 24,
                        steps: int = 15, guidance: float = 3.0, split: str = "test") -> dict:
    """Oracle utility of the stock pipeline without and with the exported adapter, per pair and on average."""
    from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler

    held_out = held_out_pairs(data_dir, split, pairs, resolution)
    truth = load_truth(data_dir)
    pipe = AutoPipelineForText2Image.from_pretrained(base_for_pipelines(base_model), torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [pair.prompt for pair in held_out]

    def oracle(images) -> np.ndarray:
        return np.array([oracle_utility(truth[pair.merchant_id], image) for pair, image in zip(held_out, images)])

    def draw(**embeds) -> np.ndarray:
        generators = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
        return oracle(pipe(prompts, height=resolution, width=resolution, num_inference_steps=steps,
                           guidance_scale=guidance, generator=generators, **embeds).images)

    base = draw()
    pipe.load_ip_adapter(str(export_dir), subfolder="", weight_name=IP_ADAPTER, image_encoder_folder=None)
    embeddings = load_file(Path(export_dir) / EMBEDDINGS)
    u = torch.stack([embeddings[pair.merchant_id] for pair in held_out])[:, None]
    personalized = draw(ip_adapter_image_embeds=[torch.cat([u, u])])  # the merchant in both halves of guidance
    gains = personalized - base
    return {"pairs": len(held_out), "base": float(base.mean()), "personalized": float(personalized.mean()),
            "gain": float(gains.mean()), "win_rate": float((gains > 0).mean())}
