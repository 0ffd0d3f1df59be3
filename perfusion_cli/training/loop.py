"""The training loop both trainers share, on Hugging Face Accelerate (DESIGN §8, §9).

A trainer supplies a ``TrainTask`` (model, parameter groups, a loss on one batch, what to checkpoint,
how to evaluate and save); this module runs it: one process on a CPU, or ``accelerate launch`` /
``torchrun`` across processes (DDP; gloo on CPU, NCCL on GPU). It also owns the contracts:

- resume: ``--resume`` restores weights, optimizer, scheduler, every process's RNG and the data
  position (the stream is a function of the step), so a resumed run repeats the uninterrupted one;
- SIGTERM/SIGINT: the current step finishes, a checkpoint is written, the run exits cleanly;
- a non-finite loss stops the run at once, keeping the last good checkpoint;
- metrics are averaged across processes and only process 0 writes (``metrics.jsonl``, checkpoints'
  shared parts, the final model).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch import nn

from perfusion_cli import __version__
from perfusion_cli.config import TrainLoopConfig
from perfusion_cli.data.loader import GroupBatch, StreamSpec, count_groups, train_batches
from perfusion_cli.errors import ConfigError, PerfusionError, TrainingError
from perfusion_cli.io import atomic_write_json, atomic_write_text
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.training.checkpoint import CHECKPOINTS, find_checkpoint, load_checkpoint, save_checkpoint
from perfusion_cli.training.state import rng_state, set_rng_state

METRICS = "metrics.jsonl"
RUN = "run.json"


class Interrupted(PerfusionError):
    """The run was stopped by a signal after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainTask:
    """What a trainer plugs into the loop. ``model`` holds every trainable parameter."""

    model: nn.Module
    param_groups: list[dict]
    loss: Callable[[nn.Module, GroupBatch], tuple[torch.Tensor, dict[str, float]]]
    trainable_state: Callable[[], dict[str, torch.Tensor]]
    load_trainable_state: Callable[[dict[str, torch.Tensor]], None]
    save_final: Callable[[Path], None]
    evaluate: Callable[[], dict[str, float]] | None = None


class StopSignals:
    """SIGTERM and SIGINT set a flag that the loop reads between steps."""

    NAMES = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("SIGINT", 130)}

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.NAMES:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        self.received = number

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def create_accelerator(config: TrainLoopConfig) -> Accelerator:
    """The Accelerator for a run; also seeds every RNG, so models built next are initialized identically."""
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA device; use bf16 or no on a CPU")
    set_seed(config.seed)
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=not torch.cuda.is_available())


class MetricsLog:
    """``metrics.jsonl``, written by process 0 only, one flushed line per row."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def keep_until(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the log matches an uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(row + "\n" for row in rows))

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, sort_keys=True) + "\n")


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to mix a new run into a folder that holds one, unless asked to resume or replace it."""
    run_dir = Path(run_dir)
    occupied = (run_dir / RUN).exists() or (run_dir / METRICS).exists() or (run_dir / CHECKPOINTS).exists()
    if resume or not occupied:
        return
    if not overwrite:
        raise ConfigError(f"{run_dir} already holds a run: pass --resume latest to continue it, --overwrite to "
                          f"replace it, or --out for another folder")
    for name in (RUN, METRICS):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (CHECKPOINTS, "model"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def steps_per_epoch(config: TrainLoopConfig, data_dir: Path, world_size: int) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    groups = count_groups(data_dir, "train")
    return max(1, math.ceil(groups / (config.batch_size * world_size * config.grad_accum)))


def _resume(task: TrainTask, optimizer, scheduler, run_dir: Path, resume: str, accelerator: Accelerator,
            log: MetricsLog, config: TrainLoopConfig, progress: Progress) -> int:
    """Restore weights, optimizer, scheduler and this process's RNG; returns the step to continue from."""
    checkpoint = load_checkpoint(find_checkpoint(run_dir, resume), accelerator.process_index)
    if checkpoint.step >= config.max_steps:
        raise ConfigError(f"{checkpoint.path} is at step {checkpoint.step}, already at --max-steps "
                          f"{config.max_steps}: raise --max-steps to train further")
    task.load_trainable_state(checkpoint.model)
    optimizer.optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    set_rng_state(checkpoint.rng)
    log.keep_until(checkpoint.step)
    progress.log(f"resumed from {checkpoint.path} at step {checkpoint.step}")
    return checkpoint.step


class _Counted:
    """An iterator that counts what it hands out (the batches this process actually consumed)."""

    def __init__(self, iterator):
        self.iterator = iterator
        self.count = 0

    def __next__(self):
        item = next(self.iterator)
        self.count += 1
        return item


def _optimizer_step(task: TrainTask, model, optimizer, stream, accelerator: Accelerator, config: TrainLoopConfig,
                    trainable: list) -> tuple[torch.Tensor, dict[str, float]]:
    """``grad_accum`` micro-batches, then one optimizer update; returns (mean loss, last logs)."""
    total = torch.zeros((), device=accelerator.device)
    logs: dict[str, float] = {}
    for _ in range(config.grad_accum):
        batch = next(stream).to(accelerator.device)
        with accelerator.accumulate(model):
            loss, logs = task.loss(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float() / config.grad_accum
    return total, logs


def run_training(task: TrainTask, config: TrainLoopConfig, spec: StreamSpec, run_dir: Path, resume: str | None,
                 meta: dict, accelerator: Accelerator, progress: Progress | None = None) -> dict:
    """Train ``task`` for ``config.max_steps`` optimizer steps; returns the run summary (also ``run.json``)."""
    main = accelerator.is_main_process
    progress = progress if (progress and main) else NullProgress()
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed + accelerator.process_index)
    optimizer = torch.optim.AdamW(task.param_groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer = accelerator.prepare(task.model, optimizer)
    log = MetricsLog(run_dir / METRICS, main)
    start = _resume(task, optimizer, scheduler, run_dir, resume, accelerator, log, config, progress) if resume else 0
    per_epoch = steps_per_epoch(config, spec.data_dir, accelerator.num_processes)
    stream = _Counted(train_batches(spec, per_epoch * config.grad_accum, start=start * config.grad_accum))
    trainable = [p for group in task.param_groups for p in group["params"]]
    last_checkpoint: Path | None = None
    evaluation: dict[str, float] = {}
    started = time.perf_counter()

    def checkpoint(step: int) -> Path:
        return save_checkpoint(run_dir, step, task.trainable_state(), optimizer.optimizer.state_dict(),
                               scheduler.state_dict(), rng_state(), {"version": __version__}, accelerator.process_index,
                               accelerator.num_processes, accelerator.wait_for_everyone, config.keep_last)

    progress.start(f"training {meta.get('kind', '')}".strip(), config.max_steps)
    progress.advance(start)
    with StopSignals() as signals:
        for step in range(start + 1, config.max_steps + 1):
            model.train()
            total, logs = _optimizer_step(task, model, optimizer, stream, accelerator, config, trainable)
            scheduler.step()
            flags = accelerator.reduce(torch.tensor([0.0 if torch.isfinite(total) else 1.0,
                                                     1.0 if signals.received else 0.0], device=accelerator.device), "max")
            if flags[0] > 0:
                where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
                raise TrainingError(f"the loss became {total.item()} at step {step}: training stopped, nothing after "
                                    f"the last checkpoint was saved{where} (try a lower --lr, or --resume)")
            row = {"step": step, "loss": accelerator.reduce(total, "mean").item(), "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - started, 3), **logs}
            if step % max(1, config.log_every) == 0 or step == config.max_steps:
                log.write(row)
            if task.evaluate and config.eval_every and (step % config.eval_every == 0 or step == config.max_steps):
                evaluation = task.evaluate()
                log.write({"step": step, "split": "val", **evaluation})
            progress.advance(1, loss=row["loss"], **{k: v for k, v in evaluation.items() if isinstance(v, float)})
            if flags[1] > 0 or (config.checkpoint_every and step % config.checkpoint_every == 0):
                last_checkpoint = checkpoint(step)
            if flags[1] > 0:
                name, code = StopSignals.NAMES.get(signals.received or signal.SIGTERM, ("a signal", 143))
                progress.stop()
                raise Interrupted(f"stopped by {name} at step {step}; checkpoint saved to {last_checkpoint} — "
                                  f"continue with --resume latest", code)
    progress.stop()
    counts = [int(c) for c in accelerator.gather(torch.tensor([stream.count], device=accelerator.device)).tolist()]
    summary = {**meta, "version": __version__, "steps": config.max_steps, "resumed_from": start or None,
               "seconds": round(time.perf_counter() - started, 2), "final": {**row, **evaluation},
               "batches_per_process": counts, "processes": accelerator.num_processes}
    if main:
        task.save_final(run_dir / "model")
        atomic_write_json(run_dir / RUN, summary)
    accelerator.wait_for_everyone()
    return summary
