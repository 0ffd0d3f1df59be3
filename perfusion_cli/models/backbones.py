"""One loading path for every backbone: a Hugging Face id, a local folder, or ``tiny`` (DESIGN §4).

``tiny`` names folders bundled with the package (``perfusion_cli/assets``), made by
``perfusion pretrain-base``; they load through exactly the ``from_pretrained`` calls that load
``openai/clip-vit-large-patch14`` or ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Weights are
read from safetensors only (``use_safetensors=True``): a folder holding only pickle weights is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from perfusion_cli.config import ASSETS
from perfusion_cli.errors import CheckpointError

TINY = "tiny"


def resolve(base: str, kind: str) -> str:
    """The folder or hub id to load for ``base``; ``kind`` picks the bundled tiny model ('clip' or 'sd')."""
    if base == TINY:
        path = ASSETS / f"tiny-{kind}"
        if not (path / ("config.json" if kind == "clip" else "model_index.json")).is_file():
            raise CheckpointError(f"the bundled tiny {kind} backbone is missing from {path} — "
                                  f"run `perfusion pretrain-base --out {ASSETS}`")
        return str(path)
    return base


def _load(what: str, base: str, loader, *args, **kwargs):
    try:
        return loader(*args, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if Path(base).exists() else (" (a hub id needs network access; pass a local folder instead, or "
                                               "'tiny' for the bundled CPU models)")
        raise CheckpointError(f"cannot load {what} from {base!r}: {first}{hint}") from None


def load_clip(base: str, dtype: torch.dtype = torch.float32) -> tuple[CLIPModel, CLIPTokenizer]:
    path = resolve(base, "clip")
    model = _load("CLIP", path, CLIPModel.from_pretrained, path, dtype=dtype, use_safetensors=True)
    tokenizer = _load("the CLIP tokenizer", path, CLIPTokenizer.from_pretrained, path)
    return model, tokenizer


@dataclass
class SDComponents:
    """The parts of a Stable-Diffusion folder that PerFusion trains against (all frozen)."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    path: str


def load_sd(base: str, dtype: torch.dtype = torch.float32) -> SDComponents:
    path = resolve(base, "sd")
    common = {"use_safetensors": True}
    return SDComponents(
        vae=_load("the VAE", path, AutoencoderKL.from_pretrained, path, subfolder="vae", torch_dtype=dtype, **common),
        text_encoder=_load("the text encoder", path, CLIPTextModel.from_pretrained, path, subfolder="text_encoder",
                           dtype=dtype, **common),
        tokenizer=_load("the tokenizer", path, CLIPTokenizer.from_pretrained, path, subfolder="tokenizer"),
        unet=_load("the U-Net", path, UNet2DConditionModel.from_pretrained, path, subfolder="unet",
                   torch_dtype=dtype, **common),
        noise_scheduler=_load("the scheduler", path, DDPMScheduler.from_pretrained, path, subfolder="scheduler"),
        path=path,
    )


def base_reference(base_model: str) -> str:
    """How a run records its base: hub ids and ``tiny`` as given, local folders as absolute paths."""
    path = Path(base_model)
    return str(path.resolve()) if base_model != TINY and path.exists() else base_model


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pad/truncate to the tokenizer's length; returns (input_ids, attention_mask, prompts truncated)."""
    limit = min(tokenizer.model_max_length, 77)
    full = tokenizer(prompts, padding=False, truncation=False)["input_ids"]
    truncated = sum(len(ids) > limit for ids in full)
    batch = tokenizer(prompts, padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], truncated


# OpenAI CLIP's pixel statistics; the LAION and OpenAI checkpoints all use them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] → CLIP input: resized to ``size`` (bicubic, antialiased), normalized."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std
