"""The contrastive image-text backbones PerFusionRM wraps, one entry per family (DESIGN §4).

A family says which transformers class holds the weights, how its towers run with a modulation
(``clip_towers`` / ``siglip_towers``), how pixels are normalized, how wide its embeddings are, and the
score's offset: CLIP scores ``scale · cos``; SigLIP ``scale · cos + bias`` (its sigmoid loss's logit). The
family is read from the checkpoint's ``config.json`` (``model_type``), so ``--base-model`` takes either and
a saved PerFusionRM knows its own. A new family is a new towers file and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedModel, PreTrainedTokenizerBase, SiglipConfig,
                          SiglipModel)

from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.models import clip_towers, siglip_towers
from perfusion_cli.models.backbones import CLIP_MEAN, CLIP_STD, load_part, resolve


@dataclass(frozen=True)
class TowerFamily:
    name: str
    model_class: type[PreTrainedModel]
    config_class: type
    text_features: Callable
    image_features: Callable
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    has_bias: bool  # the score adds the model's learned logit_bias
    width: Callable[[object], int]  # the embedding's width, from the model's config
    text_mask: bool  # the text tower reads the padding mask (SigLIP was trained on padded text without one)

    def embedding_dim(self, model: PreTrainedModel) -> int:
        return self.width(model.config)

    def bias(self, model: PreTrainedModel) -> torch.Tensor | float:
        return model.logit_bias if self.has_bias else 0.0


CLIP = TowerFamily("clip", CLIPModel, CLIPConfig, clip_towers.text_features, clip_towers.image_features,
                   CLIP_MEAN, CLIP_STD, has_bias=False, width=lambda config: config.projection_dim,
                   text_mask=True)
SIGLIP = TowerFamily("siglip", SiglipModel, SiglipConfig, siglip_towers.text_features, siglip_towers.image_features,
                     (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), has_bias=True,
                     width=lambda config: config.text_config.projection_size, text_mask=False)
FAMILIES = {family.name: family for family in (CLIP, SIGLIP)}


def family_of(config: dict) -> TowerFamily:
    """The family of a checkpoint's ``config.json`` (a dict); ``ConfigError`` naming the ones we support."""
    model_type = config.get("model_type", "clip")
    if model_type not in FAMILIES:
        raise ConfigError(f"PerFusionRM wraps {' or '.join(FAMILIES)} (config model_type), not {model_type!r} — for "
                          f"SigLIP 2 pick a fixed-resolution checkpoint (google/siglip2-…-patch16-224 and the like)")
    return FAMILIES[model_type]


def build_towers(config: dict) -> PreTrainedModel:
    """A family's model from its config dict (random weights; under ``torch.device("meta")`` to count)."""
    family = family_of(config)
    return family.model_class(family.config_class.from_dict(config))


def load_towers(base: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A CLIP or SigLIP checkpoint (hub id, folder, ``tiny`` / ``tiny-siglip``) and its tokenizer."""
    path = resolve(base, "clip")
    config = load_part("CLIP or SigLIP", path, _config, path)
    family = family_of(config)
    model = load_part(family.name, path, family.model_class.from_pretrained, path, dtype=dtype, use_safetensors=True)
    tokenizer = load_part(f"the {family.name} tokenizer", path, AutoTokenizer.from_pretrained, path)
    return model, tokenizer


def _config(path: str) -> dict:
    from transformers import PretrainedConfig

    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise CheckpointError(f"cannot load CLIP or SigLIP from {path!r}: the folder has no config.json")
    return PretrainedConfig.get_config_dict(path)[0]
