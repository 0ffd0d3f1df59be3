"""The bundled tiny bases draw recognizable products: a silhouette in a colour. Each is sampled by diffusers'
own pipeline for its layout (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``FluxPipeline`` with
classifier-free guidance, as the tiny FLUX base has no guidance embedding), so the folders are what those
pipelines load."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from perfusion_cli.marketplace.drawing import BACKGROUND
from perfusion_cli.marketplace.oracle import measure, product_mask
from perfusion_cli.models.backbones import resolve

PROMPTS = ["linen dress", "denim trousers", "leather handbag", "wool hoodie"]


# base → (its diffusers pipeline, the call's guidance)
SAMPLERS = {"tiny": (StableDiffusionPipeline, {"guidance_scale": 3.0}),
            "tiny-sdxl": (StableDiffusionXLPipeline, {"guidance_scale": 3.0}),
            "tiny-flux": (FluxPipeline, {"true_cfg_scale": 3.0, "negative_prompt": [""] * 4, "max_sequence_length": 16})}


@pytest.fixture(scope="module", params=list(SAMPLERS))
def samples(request):
    kind, guidance = SAMPLERS[request.param]
    pipeline = kind.from_pretrained(resolve(request.param, "sd"), torch_dtype=torch.float32)
    if kind is not FluxPipeline:  # the flow base keeps its flow-matching Euler
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    images = {}
    for prompt in PROMPTS:
        out = pipeline([prompt] * 4, num_inference_steps=20, height=64, width=64, **guidance,
                       generator=[torch.Generator().manual_seed(s) for s in range(4)], output_type="np")
        images[prompt] = np.round(out.images * 255).astype(np.uint8)
    return images


@pytest.mark.slow
def test_samples_are_a_coloured_silhouette_on_the_background(samples):
    good = 0
    for prompt, images in samples.items():
        for image in images:
            features = measure(image)
            corners = np.concatenate([image[:4, :4], image[:4, -4:], image[-4:, :4], image[-4:, -4:]]).reshape(-1, 3)
            # the tiny VAE tints the border by up to ~45 levels; a product in the corner is >100 away
            background_corners = np.abs(corners.astype(np.float32) - BACKGROUND).max() < 48
            coverage = product_mask(image).mean()
            good += features.present and background_corners and 0.08 < coverage < 0.85 and features.saturation > 0.15
    assert good >= 0.8 * sum(len(v) for v in samples.values()), f"only {good} recognizable products"


@pytest.mark.slow
def test_the_prompt_decides_the_silhouette(samples):
    masks = {prompt: np.mean([product_mask(image) for image in images], axis=0) > 0.5 for prompt, images in samples.items()}

    def iou(a, b):
        return (masks[a] & masks[b]).sum() / max(1, (masks[a] | masks[b]).sum())

    assert iou("leather handbag", "denim trousers") < 0.6
    assert iou("linen dress", "wool hoodie") < 0.8
