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
TINY_SIGLIP = "tiny-siglip"  # a reward-model base only: the bundled tiny SigLIP
TINY_FLUX = "tiny-flux"  # FLUX.1's layout at tiny widths


# (bundled base, what is asked for) → its folder under ASSETS; tiny-sdxl's CLIP (reward models, metrics) is tiny's
TINY_FOLDERS = {(TINY, "clip"): "tiny-clip", (TINY, "sd"): "tiny-sd", (TINY_SDXL, "clip"): "tiny-clip",
                (TINY_SDXL, "sd"): TINY_SDXL, (TINY_SIGLIP, "clip"): TINY_SIGLIP, (TINY_FLUX, "clip"): "tiny-clip",
                (TINY_FLUX, "sd"): TINY_FLUX}
MAKES = {"tiny-clip": "pretrain-base", "tiny-sd": "pretrain-base", TINY_SDXL: "pretrain-base --sdxl",
         TINY_SIGLIP: "pretrain-base --siglip", TINY_FLUX: "pretrain-base --flux"}


def resolve(base: str, kind: str) -> str:
    """The folder or hub id to load for ``base``; ``kind`` picks the bundled tiny model ('clip' or 'sd')."""
    if not is_tiny(base):
        return base
    if (base, kind) not in TINY_FOLDERS:
        raise CheckpointError(f"{base} is a reward-model base (SigLIP), not a diffusion base: pass tiny or tiny-sdxl "
                              f"for the generator")
    name = TINY_FOLDERS[base, kind]
    path = ASSETS / name
    if not (path / ("config.json" if kind == "clip" else "model_index.json")).is_file():
        raise CheckpointError(f"the bundled {name} backbone is missing from {path} — run `perfusion {MAKES[name]} "
                              f"--out {ASSETS}`")
    return str(path)


def is_tiny(base: str) -> bool:
    """One of the bundled CPU backbones (``tiny``, ``tiny-sdxl``, ``tiny-siglip``, ``tiny-flux``)."""
    return base in (TINY, TINY_SDXL, TINY_SIGLIP, TINY_FLUX)


def load_part(what: str, base: str, loader, *args, **kwargs):
    try:
        return loader(*args, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if Path(base).exists() else (" (a hub id needs network access; pass a local folder instead, or "
                                               "'tiny' for the bundled CPU models)")
        raise CheckpointError(f"cannot load {what} from {base!r}: {first}{hint}") from None


def load_clip(base: str, dtype: torch.dtype = torch.float32) -> tuple[CLIPModel, CLIPTokenizer]:
    path = resolve(base, "clip")
    model = load_part("CLIP", path, CLIPModel.from_pretrained, path, dtype=dtype, use_safetensors=True)
    tokenizer = load_part("the CLIP tokenizer", path, CLIPTokenizer.from_pretrained, path)
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

    return load_part("the model index (model_index.json)", path, DiffusionPipeline.load_config, path)


def load_sd(base: str, dtype: torch.dtype = torch.float32) -> SDComponents:
    """SD 1.x/2.x or SDXL (``stabilityai/stable-diffusion-xl-base-1.0``'s layout: two encoders and tokenizers)."""
    path = resolve(base, "sd")
    common = {"use_safetensors": True}

    def encoder(cls, subfolder: str):
        return load_part(f"the {subfolder.replace('_', ' ')}", path, cls.from_pretrained, path, subfolder=subfolder,
                         dtype=dtype, **common)

    def tokenizer(subfolder: str):
        return load_part(f"the {subfolder.replace('_', ' ')}", path, CLIPTokenizer.from_pretrained, path,
                         subfolder=subfolder)

    index = pipeline_config(path)
    sdxl = (index.get("text_encoder_2") or [None])[0] is not None
    return SDComponents(
        vae=load_part("the VAE", path, AutoencoderKL.from_pretrained, path, subfolder="vae", torch_dtype=dtype,
                      **common),
        text_encoder=encoder(CLIPTextModel, "text_encoder"),
        tokenizer=tokenizer("tokenizer"),
        unet=load_part("the U-Net", path, UNet2DConditionModel.from_pretrained, path, subfolder="unet",
                       torch_dtype=dtype, **common),
        noise_scheduler=load_part("the scheduler", path, DDPMScheduler.from_pretrained, path, subfolder="scheduler"),
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


def clip_pixels(images: torch.Tensor, size: int, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] → a tower's input: resized to ``size`` (bicubic, antialiased), normalized by ``mean`` /
    ``std`` (CLIP's by default)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    mean = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std
