"""The real architectures, from their public configs: for counting on the meta device (``bench --plan``)
and for writing random-weight models in the exact hub folder layouts (the real-architecture test).

A model built from its config with random weights loads, trains and samples exactly like the trained
one, and its FLOPs and memory are the same (DESIGN §10). The configs of the hub ids we ship
(``perfusion_cli/architectures/index.json``) are small JSON files in the package; a local folder's
own ``config.json`` files serve as well, and ``tiny`` reads the bundled tiny backbones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from perfusion_cli.errors import ConfigError
from perfusion_cli.models.backbones import SDComponents, is_tiny, load_part, resolve
from perfusion_cli.models.towers import build_towers

ARCHITECTURES = Path(__file__).resolve().parent.parent / "architectures"
SD_PARTS = ("unet", "vae", "text_encoder", "scheduler")
SDXL_PART = "text_encoder_2"  # SDXL's second text encoder (CLIPTextModelWithProjection)


def read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the architecture config {path}: {exc}") from None


def shipped_folder(base: str) -> Path | None:
    entry = read_config(ARCHITECTURES / "index.json").get(base)
    return ARCHITECTURES / entry if entry else None


def transformer_folder(base: str, class_name: str) -> tuple[Path, bool] | None:
    """(folder, shipped) of a flow-transformer base whose transformer is ``class_name``: its configs shipped here for
    a hub id (``<part>.json``), or a local diffusers folder (``<part>/config.json``); None for another family."""
    shipped = shipped_folder(base)
    if shipped is not None:
        path, found = shipped / "transformer.json", (shipped, True)
    else:
        path, found = Path(base) / "transformer" / "config.json", (Path(base), False)
    return found if path.is_file() and read_config(path).get("_class_name") == class_name else None


def transformer_configs(base: str, class_name: str, parts: tuple[str, ...]) -> dict[str, dict]:
    """The configs of a flow-transformer base's ``parts`` that it has (a folder may leave out an optional text
    encoder), without their metadata keys."""
    folder, shipped = transformer_folder(base, class_name)
    names = {"scheduler": "scheduler_config.json"}
    paths = {part: folder / f"{part}.json" if shipped else folder / part / names.get(part, "config.json")
             for part in parts}
    return {part: without_meta(read_config(path)) for part, path in paths.items() if path.is_file()}


def known_bases() -> list[str]:
    return sorted(key for key in read_config(ARCHITECTURES / "index.json") if not key.startswith("_"))


def _missing(base: str) -> ConfigError:
    return ConfigError(f"no architecture config for {base!r}: pass a local model folder, or one of the hub ids "
                       f"whose configs ship with perfusion ({', '.join(known_bases())})")


def sd_configs(base: str) -> dict[str, dict]:
    """The configs of a Stable-Diffusion base: unet, vae, text_encoder, scheduler (SDXL: and text_encoder_2)."""
    shipped = shipped_folder(base)
    if shipped is not None:
        parts = SD_PARTS + ((SDXL_PART,) if (shipped / f"{SDXL_PART}.json").is_file() else ())
        return {part: read_config(shipped / f"{part}.json") for part in parts}
    folder = Path(resolve(base, "sd")) if is_tiny(base) else Path(base)
    if not (folder / "unet" / "config.json").is_file():
        raise _missing(base)
    names = {"scheduler": "scheduler_config.json"}
    parts = SD_PARTS + ((SDXL_PART,) if (folder / SDXL_PART / "config.json").is_file() else ())
    return {part: read_config(folder / part / names.get(part, "config.json")) for part in parts}


def clip_config(base: str) -> dict:
    """A reward-model base's config (CLIP or SigLIP: its ``model_type`` says which)."""
    shipped = shipped_folder(base)
    if shipped is not None:
        return read_config(shipped)
    folder = Path(resolve(base, "clip")) if is_tiny(base) else Path(base)
    if not (folder / "config.json").is_file():
        raise _missing(base)
    return read_config(folder / "config.json")


@dataclass
class SDArchitecture:
    """The Stable-Diffusion modules of a base, built from configs (random weights; on any device)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    scheduler: object  # the class its config names (SD 1.5: PNDMScheduler)
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL

    def components(self, base: str) -> SDComponents:
        """As ``load_sd`` gives them (the training schedule as DDPM; no tokenizers: counting feeds token ids)."""
        with torch.device("cpu"):
            noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        return SDComponents(self.vae, self.text_encoder, None, self.unet, noise_scheduler, base, self.text_encoder_2,
                            None, self.text_encoder_2 is not None)


def build_sd(base: str, dtype: torch.dtype = torch.float32) -> SDArchitecture:
    """Build under ``with torch.device("meta")`` to count without allocating."""
    import diffusers

    configs = sd_configs(base)
    scheduler_class = getattr(diffusers, configs["scheduler"].get("_class_name", "DDPMScheduler"), DDPMScheduler)
    with torch.device("cpu"):  # schedulers hold small CPU tables (Euler's copies its sigmas to the CPU)
        scheduler = scheduler_class.from_config(configs["scheduler"])
    return SDArchitecture(
        unet=UNet2DConditionModel.from_config(configs["unet"]).to(dtype),
        vae=AutoencoderKL.from_config(configs["vae"]).to(dtype),
        text_encoder=CLIPTextModel(_text_config(configs["text_encoder"])).to(dtype),
        scheduler=scheduler,
        text_encoder_2=(CLIPTextModelWithProjection(_text_config(configs[SDXL_PART])).to(dtype)
                        if SDXL_PART in configs else None),
    )


def unet_layout(base: str) -> UNet2DConditionModel:
    """The base's U-Net built from its config on the meta device: its module layout, nothing allocated or read
    but the config (shipped for the hub ids in ``index.json``, so offline too; other hub ids from the cache)."""
    try:
        config = sd_configs(base)["unet"]
    except ConfigError:
        config = load_part("the U-Net's config", base, UNet2DConditionModel.load_config, base, subfolder="unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def pipeline_class(base: str) -> str:
    """The diffusers pipeline class of a Stable-Diffusion base, from its configs (offline for the shipped ones)."""
    return "StableDiffusionXLPipeline" if SDXL_PART in sd_configs(base) else "StableDiffusionPipeline"


def build_clip(base: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A reward-model base built from its config: a ``CLIPModel`` or a ``SiglipModel``."""
    return build_towers(clip_config(base)).to(dtype)


def _text_config(values: dict) -> CLIPTextConfig:
    return CLIPTextConfig(**without_meta(values))


def without_meta(values: dict) -> dict:
    return {key: value for key, value in values.items() if key not in ("architectures", "_name_or_path", "_comment")}


def tokenizer_for(text_encoder) -> object:
    """The bundled tokenizer, padding to ``text_encoder``'s length (the random layouts' tokenizer)."""
    from perfusion_cli.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    return tokenizer


def write_random_sd(base: str, folder: Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random-weight Stable-Diffusion folder in the hub layout (``model_index.json``, one sub-folder per
    component, safetensors weights), with the bundled tokenizer (its ids fit the real 49,408-token vocab).
    An SDXL base gets SDXL's layout (``text_encoder_2``, ``tokenizer_2``, ``force_zeros_for_empty_prompt``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    sd = build_sd(base, dtype)
    tokenizer = tokenizer_for(sd.text_encoder)
    if sd.text_encoder_2 is not None:
        pipeline = StableDiffusionXLPipeline(vae=sd.vae, text_encoder=sd.text_encoder, text_encoder_2=sd.text_encoder_2,
                                             tokenizer=tokenizer, tokenizer_2=tokenizer, unet=sd.unet,
                                             scheduler=sd.scheduler, force_zeros_for_empty_prompt=True)
    else:
        pipeline = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=tokenizer, unet=sd.unet,
                                           scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def write_random_clip(base: str, folder: Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random-weight CLIP or SigLIP folder in the hub layout, with the bundled tokenizer (its ids fit either's
    vocabulary; a SigLIP pads to its text length, 64 for SigLIP 2)."""
    from perfusion_cli.models.tiny import build_tokenizer

    torch.manual_seed(seed)
    clip = build_clip(base, dtype)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = clip.config.text_config.max_position_embeddings
    clip.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)
