"""Recipes: TOML files whose sections configure the commands; flags override recipe values.

Precedence, lowest first: the dataclass defaults below, the recipe's section for the command, then the
flags a user typed. Unknown sections, unknown keys, wrong types and values out of range are errors
that name the key (or the flag). ``None`` means "not set" (TOML has no null: leave the key out).

This module is imported by ``perfusion --help``: it must stay free of heavy imports.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

from perfusion_cli.errors import ConfigError

T = TypeVar("T")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ASSETS = Path(__file__).resolve().parent / "assets"  # the bundled tiny backbones
SHIPPED_RECIPES = Path(__file__).resolve().parent / "recipes"
TINY_RECIPE = SHIPPED_RECIPES / "tiny-cpu.toml"
MAX_GROUP = 1024  # candidates in one group, the most any setting or manifest may say
MAX_SEED = 2**32 - 1
MAX_STEPS = 100_000_000  # optimizer steps, and every step count or interval  # what every random generator we seed takes (numpy's legacy seeding stops here)


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field whose value (when set) must lie in a range; checked wherever config is built."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"range": limits})
    return field(default=default, metadata={"range": limits})


@dataclass
class SyntheticConfig:
    """The synthetic marketplace of DESIGN §7."""

    merchants: int = bounded(64, ge=2, le=100_000)
    sessions_per_merchant: int = bounded(30, ge=1, le=10_000)
    group_size: int = bounded(5, ge=2, le=64)
    resolution: int = bounded(64, ge=16, le=1024)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    # Draws of the marketplace (tune on one, report on another): the renderer, the taste mix, and the
    # Gumbel noise of the merchants' picks (utilities span about ±2).
    style: Literal["catalogue", "studio"] = "catalogue"
    taste: Literal["colour", "mixed", "subtle"] = "colour"
    noise: float = bounded(0.3, ge=0, le=10)


@dataclass
class PrepareConfig:
    format: Literal["logs", "pickapic"] = "logs"
    min_records: int = bounded(10, ge=1, le=1_000_000)
    val_fraction: float = bounded(0.1, ge=0, lt=1)
    test_fraction: float = bounded(0.1, ge=0, lt=1)
    cold_start_fraction: float = bounded(0.1, ge=0, lt=1)
    numeric_buckets: int = bounded(8, ge=1, le=1024)
    shard_size: int = bounded(500, ge=1, le=100_000)
    max_image_pixels: int = bounded(4096 * 4096, ge=1, le=2**28)
    max_image_bytes: int = bounded(32 * 1024 * 1024, ge=1, le=2**30)
    # An image is resized so its short side is the training resolution and centre-cropped; a very long
    # thin image would first be blown up to (resolution × resolution·aspect) pixels. Refuse it at prepare.
    max_aspect_ratio: float = bounded(8.0, ge=1, le=1000)
    # A session showing more candidates is quarantined (too_many_candidates): every batch that holds a group
    # is padded to the largest group prepared, so one 10,000-candidate session would pad them all.
    max_candidates: int = bounded(64, ge=2, le=MAX_GROUP)
    # What transparency (cut-out product PNGs, WebP alpha) is painted on when an image is stored: white, black
    # or #rrggbb. Images are stored as a browser shows them (orientation applied, 8-bit sRGB, no metadata).
    background: str = "white"


@dataclass
class MerchantEncoderConfig:
    """Sparse features → embeddings → DCN-V2 crossing → MLP → u (DESIGN §4)."""

    embed_dim: int = bounded(16, ge=1, le=4096)
    cross_layers: int = bounded(3, ge=0, le=16)
    mlp_dims: list[int] = bounded([256], ge=1, le=16_384)
    user_dim: int = bounded(128, ge=1, le=16_384)
    dropout: float = bounded(0.0, ge=0, lt=1)
    # While training, replace the merchant id by the out-of-vocabulary id with this probability, so the
    # profile features learn the taste they carry (sparse and cold-start merchants lean on them).
    id_dropout: float = bounded(0.0, ge=0, lt=1)


@dataclass
class TrainLoopConfig:
    """What every training command shares: optimisation, checkpoints, the data stream, trackers."""

    batch_size: int = bounded(8, ge=1, le=4096)
    group_size: int = bounded(5, ge=2, le=64)
    lr: float = bounded(1e-5, gt=0, le=1)
    weight_decay: float = bounded(1e-2, ge=0, le=10)
    warmup_steps: int = bounded(0, ge=0, le=MAX_STEPS)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 at max_steps
    max_steps: int = bounded(1000, ge=1, le=MAX_STEPS)
    grad_accum: int = bounded(1, ge=1, le=4096)
    max_grad_norm: Optional[float] = bounded(1.0, gt=0, le=1e6)  # None: no clipping (the norm is still logged)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    num_workers: int = bounded(0, ge=0, le=256)
    shuffle_buffer: int = bounded(1000, ge=1, le=1_000_000)
    steps_per_epoch: Optional[int] = bounded(None, ge=1, le=MAX_STEPS)  # None: one pass over the train split
    log_every: int = bounded(1, ge=1, le=MAX_STEPS)
    eval_every: Optional[int] = bounded(None, ge=0, le=MAX_STEPS)  # 0 or None: no validation
    checkpoint_every: Optional[int] = bounded(None, ge=1, le=MAX_STEPS)  # None: only on a stop signal and at the end
    keep_last: int = bounded(2, ge=1, le=1000)
    skip_bad_shards: bool = False
    report_to: Literal["none", "tensorboard", "wandb"] = "none"


@dataclass
class RMTrainConfig(TrainLoopConfig):
    base_model: str = DEFAULT_CLIP
    loss: Literal["pl", "bt"] = "pl"
    plugin: bool = True
    shared_plugin: bool = False
    freeze_backbone: bool = False
    backbone_lr: Optional[float] = bounded(None, gt=0, le=1)  # None: the plug-ins' lr
    plugin_hidden: int = bounded(256, ge=1, le=16_384)
    # A linear taste over the standardized image embedding, added to the score (zero at init):
    # s = scale · cos(t(prompt; u), v(image; u)) + ⟨W u, standardize(v)⟩. The plug-ins alone reach a
    # merchant's weights on colour, pattern and cut only through LayerNorm and CLIP's unit sphere.
    taste_head: bool = True
    # The temperature the prompt-image cosine starts from (then learned with the plug-ins); None keeps
    # CLIP's logit scale (30 for the tiny CLIP, 100 for OpenAI's and LAION's). Every candidate of a
    # group matches its prompt, so at CLIP's temperature the cosine's small differences outweigh a
    # merchant's taste (docs/benchmarks.md, "Subtle tastes"); any positive scale leaves the untrained
    # model's ranking exactly CLIP's.
    prompt_scale: Optional[float] = bounded(3.0, gt=0, le=1000)
    merchant: MerchantEncoderConfig = field(default_factory=MerchantEncoderConfig)
    eval_max_groups: Optional[int] = bounded(None, ge=1, le=100_000_000)
    augment_flip: bool = False  # mirror each candidate with probability 1/2 (tastes are left-right symmetric)
    # Start from a trained reward model's weights (a run or its model/ folder) instead of the base model's:
    # continued training on new logs prepared with that run's vocabulary (`prepare LOGS --vocab DATA`).
    init_from: Optional[str] = None


@dataclass
class GenTrainConfig(TrainLoopConfig):
    base_model: str = DEFAULT_SD
    beta: float = bounded(5000.0, gt=0, le=1e8)
    loss: Literal["group", "pairwise"] = "group"
    positives: Literal["labels", "reward"] = "labels"
    reward: Optional[str] = None
    top_k: int = bounded(1, ge=1, le=MAX_GROUP)
    resolution: int = bounded(512, ge=8, le=4096)
    attention: Literal["sdpa", "xformers"] = "sdpa"
    share_encoder: bool = True
    cache_latents: bool = False
    # Use the latents and text embeddings stored in the shards (prepare --latents) when the data has them;
    # they must come from this base model's VAE and text encoder at this resolution (checked).
    stored_latents: bool = True
    # The flow transformers' training σ (diffusers' SD3 / FLUX trainers' --weighting_scheme, --logit_mean and
    # --logit_std, with logit_mean σ's as in the SD3 paper): u ~ N(logit_mean, logit_std²), σ = sigmoid(u) through
    # the base's own shift; or σ uniform. A positive logit_mean trains more at high noise, where a product's colour
    # is decided (recipes/tiny-flux-cpu.toml). A U-Net draws its times uniformly over its schedule: these stay at
    # their defaults there (refused otherwise).
    time_density: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = bounded(0.0, ge=-10, le=10)
    logit_std: float = bounded(1.0, gt=0, le=10)
    # The branch kind: adapter (the default, at about the base's cost per image: merchant tokens through
    # decoupled cross-attention, adapter_tokens of them; docs/benchmarks.md), controlnet (PerFusion's
    # ControlNet copy of the encoder half; grid_* size its condition) or xs (a thin ControlNet of
    # xs_width × the U-Net's channels, from scratch).
    branch: Literal["controlnet", "xs", "adapter"] = "adapter"
    grid_size: int = bounded(8, ge=1, le=256)
    grid_channels: int = bounded(16, ge=1, le=1024)
    xs_width: float = bounded(0.25, gt=0, lt=1)
    adapter_tokens: int = bounded(4, ge=1, le=77)
    merchant: MerchantEncoderConfig = field(default_factory=MerchantEncoderConfig)
    # Staying near the reference (off-policy logs pull the branch away from what the base draws):
    # safeguard μ scales each group's negatives' gradient so the positives' denoising error does not rise
    # (Diffusion-SDPO's winner-preserving rule, arXiv 2511.03317; None: off, 0: the plain bound);
    # kl_weight κ adds κ·‖ε_θ − ε_ref‖² on every candidate (the per-step KL to the reference, as DPOK);
    # sft_weight λ adds λ·‖ε − ε_θ‖² on the positives (an SFT anchor on the selected candidates).
    safeguard: Optional[float] = bounded(None, ge=0, lt=1)
    kl_weight: float = bounded(0.0, ge=0, le=1e8)
    sft_weight: float = bounded(0.0, ge=0, le=1e8)
    # Warn (in the log and on screen) when the branch's denoising error on the training groups exceeds
    # the frozen reference's by this factor: the model is leaving the reference (reward hacking).
    warn_error_ratio: float = bounded(1.5, gt=1, le=1000)
    # On-policy training (`train-gen --online`; docs/architecture.md, "Online training"): each step draws
    # group_size candidates per (merchant, prompt) of the batch from the current model (DDIM, sample_steps
    # steps from fresh noise, η sample_eta, guidance sample_guidance), ranks them with the frozen reward model
    # (`reward`, default the workspace's runs/rm) and trains on them with the group loss, the reward's top_k
    # as positives. online_mix: the share of steps that train on the logged groups instead (their labels);
    # online_warmup: the first steps, all on the logged groups (the policy's own draws carry a signal once the
    # logs have moved it toward each merchant's taste).
    online: bool = False
    online_mix: float = bounded(0.0, ge=0, le=1)
    online_warmup: int = bounded(0, ge=0, le=MAX_STEPS)
    # online_beta, online_kl_weight, online_sft_weight: β, κ and λ of the on-policy steps (None: the run's). The
    # model's own draws are smooth: their denoising errors were a third of the logged images' on the tiny recipe,
    # and so are the loss's margins; the logged steps keep the anchor off-policy logs need.
    online_beta: Optional[float] = bounded(None, gt=0, le=1e8)
    online_kl_weight: Optional[float] = bounded(None, ge=0, le=1e8)
    online_sft_weight: Optional[float] = bounded(None, ge=0, le=1e8)
    sample_steps: int = bounded(8, ge=1, le=1000)
    sample_eta: float = bounded(0.0, ge=0, le=1)  # 0: each candidate's noise is its only randomness (docs)
    sample_guidance: float = bounded(3.0, ge=0, le=100)
    # The reward-hacking guard of online runs: every probe_every steps (and at step 0, the base) the same
    # probe_pairs (merchant, prompt) pairs are drawn with fixed seeds and scored by the reward and by judges
    # the run does not train on: the oracle (synthetic data), clean backgrounds, intact products and the
    # prompt's zero-shot CLIP score (judge_clip), and a second reward-model run (`judge`). A judge falling
    # clearly below its best probe while the reward climbs is a warning; stop_on_hacking then ends the run
    # with the last probe that passed as its weights.
    probe_every: int = bounded(50, ge=0, le=MAX_STEPS)  # 0: no guard
    probe_pairs: int = bounded(16, ge=1, le=100_000)
    judge: Optional[str] = None
    judge_clip: Optional[str] = None  # None: the tiny CLIP for the tiny bases, else the default CLIP
    stop_on_hacking: bool = False


@dataclass
class GenerateConfig:
    n: int = bounded(4, ge=1, le=256)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    steps: int = bounded(30, ge=1, le=1000)
    guidance: float = bounded(7.5, ge=0, le=100)
    resolution: Optional[int] = bounded(None, ge=8, le=4096)  # None: the training resolution
    rerank: bool = False
    personalization: bool = True
    cold_start: Optional[Literal["mean", "features"]] = None
    reward: Optional[str] = None  # None: <workspace>/runs/rm when it holds a trained reward model
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Cheaper personalization: the branch on every N-th denoising step (its output reused in between),
    # and only on the first fraction of the steps.
    branch_every: int = bounded(1, ge=1, le=1000)
    branch_until: float = bounded(1.0, gt=0, le=1)
    batch_size: int = bounded(16, ge=1, le=1024)  # images per pipeline call; --requests batches across merchants


@dataclass
class EvalRMConfig:
    split: str = "test"
    batch_size: int = bounded(32, ge=1, le=4096)
    skip_bad_shards: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class EvalGenConfig:
    split: str = "test"
    n_per_prompt: int = bounded(2, ge=1, le=64)
    max_pairs: Optional[int] = bounded(64, ge=1, le=100_000)  # None: every pair of the split
    steps: int = bounded(30, ge=1, le=1000)
    guidance: float = bounded(7.5, ge=0, le=100)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    clip_model: Optional[str] = None  # None: the tiny CLIP for tiny runs, else ViT-L/14
    aesthetic_weights: Optional[str] = None
    reward: Optional[str] = None  # None: <workspace>/runs/rm when it holds a trained reward model
    fid_inception: Optional[str] = None  # None: FID on the evaluation CLIP's image features
    device: Literal["auto", "cpu", "cuda"] = "auto"
    branch_every: int = bounded(1, ge=1, le=1000)
    branch_until: float = bounded(1.0, gt=0, le=1)


@dataclass
class BenchConfig:
    """``perfusion bench``; the train-step comparison also reads β and K from ``[train-gen]``."""

    steps: int = bounded(30, ge=1, le=1000)
    repeats: int = bounded(3, ge=1, le=100)
    batch_size: int = bounded(4, ge=1, le=1024)
    num_workers: int = bounded(0, ge=0, le=256)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class ServeConfig:
    """``perfusion serve``: where it listens and what one request may ask; images follow ``[generate]``."""

    host: str = "127.0.0.1"
    port: int = bounded(8000, ge=0, le=65535)  # 0: a free port, printed at start
    max_n: int = bounded(8, ge=1, le=64)  # candidates one request may ask for
    default_n: int = bounded(4, ge=1, le=64)
    max_prompt_chars: int = bounded(500, ge=1, le=100_000)
    max_body_bytes: int = bounded(64 * 1024, ge=1024, le=64 * 2**20)
    # micro-batching: requests waiting at most max_wait_ms join one pipeline call of up to max_batch_images
    max_batch_images: int = bounded(16, ge=1, le=1024)
    max_wait_ms: float = bounded(25.0, ge=0, le=10_000)
    queue_size: int = bounded(64, ge=1, le=100_000)  # requests waiting beyond it are refused: 503 with Retry-After
    # one merchant's requests waiting or running beyond it are refused (429): one merchant cannot fill the queue
    max_pending_per_merchant: int = bounded(8, ge=1, le=100_000)
    request_timeout_s: float = bounded(120.0, gt=0, le=3600)
    # a request's headers, and then its body, must arrive within this: a client that sends them slowly (or
    # never finishes) is cut off, not kept for ever (408 for a body; the connection closed for headers)
    read_timeout_s: float = bounded(10.0, gt=0, le=600)
    keep_shown_days: float = bounded(7.0, gt=0, le=3650)  # candidates shown longer ago are removed at start


@dataclass
class BaseTrainConfig:
    """Pre-training of the tiny base backbones on the synthetic catalogue (tiny models only)."""

    images: int = bounded(12000, ge=1, le=10_000_000)
    clip_steps: int = bounded(1500, ge=0, le=MAX_STEPS)
    vae_steps: int = bounded(800, ge=0, le=MAX_STEPS)
    unet_steps: int = bounded(4000, ge=0, le=MAX_STEPS)
    batch_size: int = bounded(64, ge=1, le=4096)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    num_threads: Optional[int] = bounded(None, ge=1, le=1024)  # None: every core


# The fields no flag sets: a recipe sets them (docs/recipes.md lists them); every other field of a section has a
# flag of the same name on a command that builds it (cli/flags.py checks names; tests/cli/test_flags.py, both).
RECIPE_ONLY: dict[str, frozenset[str]] = {
    "synthetic": frozenset({"group_size", "resolution"}),
    "prepare": frozenset({"val_fraction", "test_fraction", "cold_start_fraction", "numeric_buckets", "shard_size",
                          "max_image_pixels", "max_image_bytes", "max_aspect_ratio", "max_candidates", "background"}),
    "train-rm": frozenset({"weight_decay", "warmup_steps", "max_grad_norm", "shuffle_buffer", "steps_per_epoch",
                           "log_every", "plugin_hidden", "taste_head", "prompt_scale", "merchant", "eval_max_groups",
                           "augment_flip"}),
    "train-gen": frozenset({"weight_decay", "warmup_steps", "max_grad_norm", "shuffle_buffer", "steps_per_epoch",
                            "log_every", "eval_every", "grid_size", "grid_channels", "xs_width", "adapter_tokens",
                            "merchant", "warn_error_ratio", "time_density", "logit_mean", "logit_std"}),
    "generate": frozenset({"batch_size"}),
    "serve": frozenset({"default_n", "max_prompt_chars", "max_body_bytes", "keep_shown_days"}),
    "pretrain-base": frozenset({"batch_size"}),
}

SECTIONS: dict[str, type] = {
    "synthetic": SyntheticConfig,
    "prepare": PrepareConfig,
    "train-rm": RMTrainConfig,
    "train-gen": GenTrainConfig,
    "generate": GenerateConfig,
    "eval-rm": EvalRMConfig,
    "eval-gen": EvalGenConfig,
    "bench": BenchConfig,
    "serve": ServeConfig,
    "pretrain-base": BaseTrainConfig,
}


# [train-gen-online]: the [train-gen] keys an online run (`train-gen --online`, or online = true) takes instead of
# [train-gen]'s: on-policy groups want their own step size, anchor and length (docs/recipes.md). Checked as
# [train-gen] is; no flag routes to it (the flags of train-gen override both).
ONLINE_SECTION = "train-gen-online"


def train_gen_values(recipe: dict[str, dict[str, Any]], online: bool | None = None) -> dict[str, Any]:
    """The recipe's [train-gen] values, with [train-gen-online]'s over them when the run is online: ``online``
    as a flag gave it, else as the recipe's [train-gen] says."""
    values = recipe.get("train-gen", {})
    if online is None:
        online = bool(values.get("online", False))
    return {**values, **recipe.get(ONLINE_SECTION, {})} if online else dict(values)


def recipe_file(name: str | Path) -> Path:
    """A recipe path, or the name of a shipped recipe (``tiny-cpu``, ``sd15-industrial``, …)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED_RECIPES / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SHIPPED_RECIPES.glob("*.toml")))
    raise ConfigError(f"recipe not found: {name} (a TOML file, or a shipped recipe: {known})")


def load_recipe(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a recipe; every section and key is checked against the dataclasses above."""
    if path is None:
        return {}
    path = recipe_file(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"recipe {path} cannot be read: {exc.strerror or exc}") from None
    recipe: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in SECTIONS and section != ONLINE_SECTION:
            raise ConfigError(f"recipe {path}: unknown section [{section}] (known: "
                              f"{', '.join([*SECTIONS, ONLINE_SECTION])})")
        if not isinstance(values, dict):
            raise ConfigError(f"recipe {path}: [{section}] must be a table")
        recipe[section] = values
    for section, values in recipe.items():  # validates eagerly; an online run's values as they will be merged
        merged = train_gen_values(recipe, online=True) if section == ONLINE_SECTION else values
        build(SECTIONS["train-gen" if section == ONLINE_SECTION else section], merged,
              where=f"recipe {path} [{section}]")
    return recipe


def build(cls: type[T], values: dict[str, Any], overrides: dict[str, Any] | None = None,
          where: str = "config") -> T:
    """Instantiate ``cls`` from recipe ``values`` then ``overrides`` (flags; None values are not given).

    A bad recipe value is named by its key and section; a bad flag by its flag (``--max-steps``).
    """
    merged = dict(values)
    flags = set()
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
            flags.add(key)
    return _build(cls, merged, where, flags)


def _build(cls: type[T], values: dict[str, Any], where: str, flags: set[str] = frozenset()) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        name = f"--{key.replace('_', '-')}" if key in flags else f"{where}: key '{key}'"
        checked = _check(hints[key], value, name)
        _check_range(checked, fields[key].metadata.get("range", {}), name)
        kwargs[key] = checked
    return cls(**kwargs)


def _check_range(value: Any, limits: dict[str, float], where: str) -> None:
    if value is None or not limits:
        return
    for item in value if isinstance(value, list) else [value]:
        for op, bound in limits.items():
            ok = {"ge": item >= bound, "gt": item > bound, "le": item <= bound, "lt": item < bound}[op]
            if not ok:
                sign = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}[op]
                shown = int(bound) if float(bound).is_integer() else bound  # 4294967295, not 4.29497e+09
                raise ConfigError(f"{where} must be {sign} {shown:g}, got {item!r}" if isinstance(shown, float)
                                  else f"{where} must be {sign} {shown}, got {item!r}")


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
        if not value:
            raise ConfigError(f"{where} must not be empty")
        return [_check(inner, item, where) for item in value]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _check(inner, value, where)
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
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        if not value.strip() or "\x00" in value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover - a programming error


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
