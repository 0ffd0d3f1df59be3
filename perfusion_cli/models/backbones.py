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
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from perfusion_cli.config import ASSETS
from perfusion_cli.errors import CheckpointError

TINY = "tiny"


TINY_SDXL = "tiny-sdxl"


def resolve(base: str, kind: str) -> str:
    """The folder or hub id to load for ``base``; ``kind`` picks the bundled tiny model ('clip' or 'sd').

    ``tiny-sdxl`` is the bundled SDXL-architecture base (two text encoders, ``text_time`` conditions); its CLIP
    (for reward models and metrics) is the tiny one."""
    if is_tiny(base):
        name = "tiny-clip" if kind == "clip" else "tiny-sd" if base == TINY else TINY_SDXL
        path = ASSETS / name
        if not (path / ("config.json" if kind == "clip" else "model_index.json")).is_file():
            command = "pretrain-base --sdxl" if name == TINY_SDXL else "pretrain-base"
            raise CheckpointError(f"the bundled {name} backbone is missing from {path} — "
                                  f"run `perfusion {command} --out {ASSETS}`")
        return str(path)
    return base


def is_tiny(base: str) -> bool:
    """One of the bundled CPU backbones (``tiny``, ``tiny-sdxl``)."""
    return base in (TINY, TINY_SDXL)


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
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's second encoder (pooled + projection)
    tokenizer_2: CLIPTokenizer | None = None
    zero_empty_prompt: bool = False  # guidance's unconditional text is zeros (SDXL's force_zeros_for_empty_prompt)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list:
        return [self.text_encoder] + ([self.text_encoder_2] if self.is_sdxl else [])

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.is_sdxl else [])

    @property
    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, *self.text_encoders, self.unet]


def pipeline_config(path: str) -> dict:
    """A diffusers folder's (or hub id's) ``model_index.json``: which components it has, pipeline settings."""
    from diffusers import DiffusionPipeline

    return _load("the model index (model_index.json)", path, DiffusionPipeline.load_config, path)


def load_sd(base: str, dtype: torch.dtype = torch.float32) -> SDComponents:
    """SD 1.x/2.x or SDXL (``stabilityai/stable-diffusion-xl-base-1.0``'s layout: two encoders and tokenizers)."""
    path = resolve(base, "sd")
    common = {"use_safetensors": True}

    def encoder(cls, subfolder: str):
        return _load(f"the {subfolder.replace('_', ' ')}", path, cls.from_pretrained, path, subfolder=subfolder,
                     dtype=dtype, **common)

    def tokenizer(subfolder: str):
        return _load(f"the {subfolder.replace('_', ' ')}", path, CLIPTokenizer.from_pretrained, path,
                     subfolder=subfolder)

    index = pipeline_config(path)
    sdxl = (index.get("text_encoder_2") or [None])[0] is not None
    return SDComponents(
        vae=_load("the VAE", path, AutoencoderKL.from_pretrained, path, subfolder="vae", torch_dtype=dtype, **common),
        text_encoder=encoder(CLIPTextModel, "text_encoder"),
        tokenizer=tokenizer("tokenizer"),
        unet=_load("the U-Net", path, UNet2DConditionModel.from_pretrained, path, subfolder="unet",
                   torch_dtype=dtype, **common),
        noise_scheduler=_load("the scheduler", path, DDPMScheduler.from_pretrained, path, subfolder="scheduler"),
        path=path,
        text_encoder_2=encoder(CLIPTextModelWithProjection, "text_encoder_2") if sdxl else None,
        tokenizer_2=tokenizer("tokenizer_2") if sdxl else None,
        zero_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)),
    )


def base_reference(base_model: str) -> str:
    """How a run records its base: hub ids and ``tiny`` as given, local folders as absolute paths."""
    path = Path(base_model)
    return str(path.resolve()) if not is_tiny(base_model) and path.exists() else base_model


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


def unet_layout(base: str) -> UNet2DConditionModel:
    """The base's U-Net built from its ``config.json`` on the meta device: its module layout, no weights read."""
    from accelerate import init_empty_weights

    path = resolve(base, "sd")
    config = _load("the U-Net's config", path, UNet2DConditionModel.load_config, path, subfolder="unet")
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)
