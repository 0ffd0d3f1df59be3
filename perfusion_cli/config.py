"""Recipes: TOML files whose sections configure the commands; flags override recipe values.

Precedence, lowest first: the dataclass defaults below, the recipe's section for the command, then the
flags a user typed. Unknown sections, unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from perfusion_cli.errors import ConfigError

T = TypeVar("T")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class SyntheticConfig:
    """The synthetic marketplace of DESIGN §7."""

    merchants: int = 64
    sessions_per_merchant: int = 30
    group_size: int = 5
    resolution: int = 64
    seed: int = 0


@dataclass
class PrepareConfig:
    format: Literal["logs", "pickapic"] = "logs"
    min_records: int = 10
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    cold_start_fraction: float = 0.1
    numeric_buckets: int = 8
    shard_size: int = 500
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 32 * 1024 * 1024


@dataclass
class MerchantEncoderConfig:
    """Sparse features → embeddings → DCN-V2 crossing → MLP → u (DESIGN §4)."""

    embed_dim: int = 16
    cross_layers: int = 3
    mlp_dims: list[int] = field(default_factory=lambda: [256])
    user_dim: int = 128
    dropout: float = 0.0


@dataclass
class TrainLoopConfig:
    """What every training command shares: optimisation, checkpoints and the data stream."""

    batch_size: int = 8
    group_size: int = 5
    lr: float = 1e-5
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    max_steps: int = 1000
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    num_workers: int = 0
    shuffle_buffer: int = 1000
    steps_per_epoch: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    skip_bad_shards: bool = False


@dataclass
class RMTrainConfig(TrainLoopConfig):
    base_model: str = DEFAULT_CLIP
    loss: Literal["pl", "bt"] = "pl"
    plugin: bool = True
    shared_plugin: bool = False
    freeze_backbone: bool = False
    backbone_lr: float = 0.0
    plugin_hidden: int = 256
    merchant: MerchantEncoderConfig = field(default_factory=MerchantEncoderConfig)
    lr: float = 1e-5
    eval_max_groups: int = 0


@dataclass
class GenTrainConfig(TrainLoopConfig):
    base_model: str = DEFAULT_SD
    beta: float = 5000.0
    loss: Literal["group", "pairwise"] = "group"
    positives: Literal["labels", "reward"] = "labels"
    reward: str = ""
    top_k: int = 1
    resolution: int = 512
    attention: Literal["sdpa", "xformers"] = "sdpa"
    share_encoder: bool = True
    cache_latents: bool = False
    grid_size: int = 8
    grid_channels: int = 16
    merchant: MerchantEncoderConfig = field(default_factory=MerchantEncoderConfig)
    lr: float = 1e-5


@dataclass
class GenerateConfig:
    n: int = 4
    seed: int = 0
    steps: int = 30
    guidance: float = 7.5
    resolution: int = 0
    rerank: bool = False
    personalization: bool = True
    cold_start: Literal["", "mean", "features"] = ""
    device: str = "auto"


@dataclass
class EvalGenConfig:
    split: str = "test"
    n_per_prompt: int = 2
    max_pairs: int = 64
    steps: int = 30
    guidance: float = 7.5
    seed: int = 0
    clip_model: str = ""
    aesthetic_weights: str = ""
    reward: str = ""
    fid_reference: str = ""
    device: str = "auto"


@dataclass
class BaseTrainConfig:
    """Pre-training of the tiny base backbones on the synthetic catalogue (tiny models only)."""

    images: int = 12000
    clip_steps: int = 1500
    vae_steps: int = 800
    unet_steps: int = 4000
    batch_size: int = 64
    seed: int = 0
    num_threads: int = 0


SECTIONS: dict[str, type] = {
    "synthetic": SyntheticConfig,
    "prepare": PrepareConfig,
    "train-rm": RMTrainConfig,
    "train-gen": GenTrainConfig,
    "generate": GenerateConfig,
    "eval-gen": EvalGenConfig,
    "pretrain-base": BaseTrainConfig,
}


def load_recipe(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a recipe; every section and key is checked against the dataclasses above."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    recipe: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"recipe {path}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"recipe {path}: [{section}] must be a table")
        build(SECTIONS[section], values, where=f"recipe {path} [{section}]")  # validates eagerly
        recipe[section] = values
    return recipe


def build(cls: type[T], values: dict[str, Any], overrides: dict[str, Any] | None = None,
          where: str = "config") -> T:
    """Instantiate ``cls`` from recipe ``values`` then ``overrides`` (None values are ignored)."""
    merged = dict(values)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    return _build(cls, merged, where)


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _check(hints[key], value, f"{where}: key '{key}'")
    return cls(**kwargs)


def _check(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(hint)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [_check(inner, item, where) for item in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover - a programming error


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
