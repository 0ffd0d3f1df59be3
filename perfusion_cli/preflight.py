"""Before a job starts: will it fit in this machine's memory? (DESIGN §10: the plan, put to use.)

``train-rm``, ``train-gen`` and ``generate`` count the peak of live tensor bytes of one step at the run's real
settings — the batch, the resolution, the model — on the meta device, with the same step functions as
``bench --plan`` (``plan.py``), and refuse a run whose estimate is over the memory free on its device (RAM
for the CPU, ``torch.cuda.mem_get_info`` for a GPU), before any weight is loaded. ``batch_size = 100000``
or ``generate --resolution 4096 --n 16`` ends in one line, not in the kernel's out-of-memory killer hours
later. When the estimate cannot be made (a hub id whose configs are neither shipped nor cached), the job
starts as before: the check never blocks a run it cannot judge.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import torch

from perfusion_cli.accounting import count
from perfusion_cli.config import GenerateConfig, GenTrainConfig, RMTrainConfig, build
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.errors import ConfigError, PerfusionError
from perfusion_cli.plan import plan_generate, train_gen_step, train_rm_step
from perfusion_cli.runs import run_of


def process_device() -> torch.device:
    """The device this training process will run on (its ``LOCAL_RANK``'s GPU, else the CPU), found without
    starting Accelerate's distributed state: the trainer starts it, with its own settings."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def require_fits(peak: int, device: torch.device, what: str, advice: str) -> None:
    free = free_bytes(device)
    if peak > free:  # a run over it cannot fit; one just under may still (the estimate leaves out some overheads)
        raise ConfigError(f"{what} needs about {peak / 2**30:.1f} GiB at these settings and this machine's "
                          f"{device.type} has {free / 2**30:.1f} GiB free — {advice}")


def training_peak(config: RMTrainConfig | GenTrainConfig, vocab: FeatureVocab) -> int | None:
    """One training step's peak bytes (weights, activations, gradients, AdamW's moments), or None when the
    base model's architecture cannot be read offline."""
    try:
        step = (train_rm_step if isinstance(config, RMTrainConfig) else train_gen_step)(config, vocab)
    except (ConfigError, ValueError):  # no architecture offline; or nothing to train, which the trainer says
        return None
    cost = count(step.run, step.existing, flops=False)
    trainable = sum(p.numel() for p in step.trainable.parameters() if p.requires_grad)
    return cost.peak_bytes + (8 * trainable if config.mixed_precision != "no" else 0)


def check_training(config: RMTrainConfig | GenTrainConfig, vocab: FeatureVocab, device: torch.device) -> None:
    peak = training_peak(config, vocab)
    if peak is not None:
        require_fits(peak, device, f"one training step of {config.batch_size} groups × {config.group_size}",
                     "lower --batch-size (--grad-accum keeps the effective batch), or turn on gradient_checkpointing")


def precision_note(mixed_precision: str, device: torch.device) -> str | None:
    """A line for the user when bf16 would run emulated: it is a GPU setting, and on a CPU without bf16
    instructions a step takes many times longer than in fp32."""
    from perfusion_cli.environment import cpu_runs_bf16

    if mixed_precision != "bf16" or device.type != "cpu" or cpu_runs_bf16():
        return None
    return ("this CPU has no bf16 instructions, so bf16 is emulated and runs far slower than fp32 "
            "(70-200× in our measurements); use --mixed-precision no if the model fits in memory in fp32")


def check_generation(run_dir: Path, config: GenerateConfig, vocab: FeatureVocab, images: int,
                     device: torch.device) -> None:
    """``images`` per pipeline call at ``config.resolution``, in the dtype ``generate`` runs on ``device``."""
    train = _training_config(run_dir)
    if train is None:
        return
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    try:
        peak = max(plan.peak_gib for plan in plan_generate(train, config, vocab, images, dtype)) * 2**30
    except ConfigError:
        return
    resolution = config.resolution or train.resolution
    require_fits(int(peak), device, f"generating {images} image(s) at {resolution}² in one call",
                 "lower --resolution, or the images per call ([generate] batch_size)")


def _training_config(run_dir: Path) -> GenTrainConfig | None:
    """The generator run's training config (what made its branch), from its ``run.json``."""
    try:
        recorded = run_of(run_dir).summary()["config"]
        known = {field.name for field in dataclasses.fields(GenTrainConfig)}
        return build(GenTrainConfig, {k: v for k, v in recorded.items() if k in known and v is not None})
    except (KeyError, TypeError, AttributeError, PerfusionError):
        return None

