"""The training loop both trainers share, on Hugging Face Accelerate (DESIGN §8, §9).

A trainer supplies a ``TrainTask`` (model, parameter groups, a loss on one batch, what to checkpoint,
how to evaluate and save); this module runs it: one process on a CPU, or ``accelerate launch`` /
``torchrun`` across processes (DDP; gloo on CPU, NCCL on GPU). It also owns the contracts:

- resume: ``--resume`` restores weights, optimizer, scheduler, every process's RNG and the data
  position (the stream is a function of the step), so a resumed run repeats the uninterrupted one;
  it refuses data whose vocabulary or source files differ from the run's;
- SIGTERM/SIGINT: the current step finishes (a wait for data is interrupted), a checkpoint is written,
  the run exits cleanly;
- a non-finite loss stops the run at once, keeping the last good checkpoint;
- a task's ``guard`` (online train-gen: the reward-hacking guard) probes the model at step 0 and every
  few steps; its rows go to the log as split "probe", its warnings to the screen, and with
  ``stop_on_hacking`` a probe that finds hacking ends the run with the weights of the last probe that
  passed (each passing probe writes a checkpoint);
- every step logs loss, learning rate and gradient norm (plus the task's diagnostics) to
  ``metrics.jsonl`` and to the trackers of ``--report-to``; spikes are warned about;
- metrics are averaged across processes and only process 0 writes.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch import nn

from perfusion_cli import __version__
from perfusion_cli.config import TrainLoopConfig
from perfusion_cli.environment import describe
from perfusion_cli.data.loader import GroupBatch, StreamSpec, train_batches
from perfusion_cli.data.manifest import Manifest
from perfusion_cli.errors import CheckpointError, ConfigError, PerfusionError, TrainingError
from perfusion_cli.io import atomic_write_json
from perfusion_cli.model_card import write_card
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from perfusion_cli.training.folder import TrainingFolder
from perfusion_cli.training.metrics_log import MetricsLog, SpikeWatch
from perfusion_cli.training.signals import StopRequested, StopSignals
from perfusion_cli.training.state import rng_state, set_rng_state


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
    diagnose: Callable[[dict], list[str]] | None = None  # warnings about one logged row
    # JSON state beyond the weights that a checkpoint keeps (online train-gen: its call count, the guard's history)
    extra_state: Callable[[], dict] | None = None
    load_extra_state: Callable[[dict], None] | None = None
    guard: "Guard | None" = None
    stop_on_hacking: bool = False


@dataclass
class ProbeResult:
    """What one probe of a guard found."""

    row: dict  # what metrics.jsonl records (split "probe")
    warnings: list[str] = field(default_factory=list)
    hacking: bool = False


class Guard(Protocol):
    """Probes the model between steps (``online/hacking_guard.py``)."""

    def due(self, step: int, last: int) -> bool: ...

    def __call__(self, step: int) -> "ProbeResult": ...


class RewardHackingStopped(TrainingError):
    """--stop-on-hacking ended the run; its model/ holds the last good probe's weights."""

    exit_code = 3


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def create_accelerator(config: TrainLoopConfig, folder: TrainingFolder | None = None) -> Accelerator:
    """The Accelerator for a run; also seeds every RNG, so models built next are initialized identically."""
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA device; use bf16 or no on a CPU")
    log_with = None
    if config.report_to != "none":
        import importlib.util

        if importlib.util.find_spec(TRACKERS[config.report_to]) is None:
            raise ConfigError(f"--report-to {config.report_to} needs the {config.report_to} package: "
                              f"pip install 'perfusion[{config.report_to}]'")
        log_with = config.report_to
    set_seed(config.seed)
    project = str(folder.current.trackers) if folder else None
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=not torch.cuda.is_available(), log_with=log_with, project_dir=project)


def start_run(config: TrainLoopConfig, run_dir: Path, resume: str | None,
              overwrite: bool) -> tuple[TrainingFolder, Accelerator]:
    """Check the run folder (before anything heavy loads), then create the Accelerator."""
    state = PartialState(cpu=not torch.cuda.is_available())  # the same process group the Accelerator joins
    folder = TrainingFolder(run_dir, resume, overwrite, state.is_main_process)
    return folder, create_accelerator(config, folder)


def steps_per_epoch(config: TrainLoopConfig, manifest: Manifest, world_size: int) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    return max(1, math.ceil(manifest.groups("train") / (config.batch_size * world_size * config.grad_accum)))


def data_identity(manifest: Manifest) -> dict:
    """What a checkpoint records about its data, so that --resume can refuse other data."""
    return {"vocab": manifest.raw["features"], "fingerprint": manifest.fingerprint}


def _resume(task: TrainTask, optimizer, scheduler, folder: TrainingFolder, resume: str, accelerator: Accelerator,
            log: MetricsLog, config: TrainLoopConfig, manifest: Manifest, progress: Progress) -> int:
    """Restore weights, optimizer, scheduler and this process's RNG; returns the step to continue from."""
    checkpoint = load_checkpoint(find_checkpoint(folder.current.root, resume), accelerator.process_index)
    if checkpoint.step >= config.max_steps:
        raise ConfigError(f"{checkpoint.path} is at step {checkpoint.step}, already at --max-steps "
                          f"{config.max_steps}: raise --max-steps to train further")
    recorded = checkpoint.extra.get("data")
    if recorded is not None and recorded != data_identity(manifest):
        what = "merchant feature vocabulary" if recorded["vocab"] != manifest.raw["features"] else "source files"
        raise CheckpointError(f"{checkpoint.path} was trained on other data than {manifest.data_dir} (its "
                              f"{what} differ): resume on the data the run started with, or start a new run")
    task.load_trainable_state(checkpoint.model)
    if task.load_extra_state is not None:
        task.load_extra_state(checkpoint.extra.get("task", {}))
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




def _grad_norm(parameters: list[torch.Tensor]) -> torch.Tensor:
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def _optimizer_step(task: TrainTask, model, optimizer, stream, accelerator: Accelerator, config: TrainLoopConfig,
                    trainable: list, signals: StopSignals) -> tuple[torch.Tensor, dict[str, float]]:
    """``grad_accum`` micro-batches, then one optimizer update; returns (mean loss, last logs + grad norm)."""
    total = torch.zeros((), device=accelerator.device)
    logs: dict[str, float] = {}
    for _ in range(config.grad_accum):
        with signals.interruptible():
            batch = next(stream)
        batch = batch.to(accelerator.device)
        with accelerator.accumulate(model):
            loss, logs = task.loss(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = (accelerator.clip_grad_norm_(trainable, config.max_grad_norm) if config.max_grad_norm
                        else _grad_norm(trainable))
                logs = {**logs, "grad_norm": float(norm)}
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float() / config.grad_accum
    return total, logs


def _averaged(accelerator: Accelerator, logs: dict) -> dict:
    """A step's diagnostics as the mean over processes (each measured its own groups; online: its own draws)."""
    if accelerator.num_processes == 1:
        return logs
    keys = sorted(key for key, value in logs.items() if isinstance(value, (int, float)) and not isinstance(value, bool))
    means = accelerator.reduce(torch.tensor([float(logs[key]) for key in keys], device=accelerator.device), "mean")
    return {**logs, **dict(zip(keys, means.tolist()))}


def _kill_data_workers() -> None:
    """A data worker that stopped answering would block the exit (its join never returns): kill it. The
    DataLoader's SIGCHLD handler would report that death as a crash, so it is removed first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in multiprocessing.active_children():
        worker.kill()
        worker.join(timeout=5)


def _interrupted(signals: StopSignals, step: int, checkpoint: Path, why: str = "") -> Interrupted:
    name, code = StopSignals.NAMES.get(signals.received or signal.SIGTERM, ("a signal", 143))
    return Interrupted(f"stopped by {name} at step {step}{why}; checkpoint saved to {checkpoint} — continue with "
                       f"--resume latest", code)


def run_training(task: TrainTask, config: TrainLoopConfig, spec: StreamSpec, folder: TrainingFolder,
                 resume: str | None, meta: dict, accelerator: Accelerator, manifest: Manifest,
                 progress: Progress | None = None) -> dict:
    """Train ``task`` for ``config.max_steps`` optimizer steps; returns the run summary (also ``run.json``)."""
    main = accelerator.is_main_process
    progress = progress if (progress and main) else NullProgress()
    if main:
        folder.current.root.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed + accelerator.process_index)
    optimizer = torch.optim.AdamW(task.param_groups, lr=config.lr, weight_decay=config.weight_decay)
    schedule = "cosine" if config.lr_schedule == "cosine" else "constant_with_warmup"
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer = accelerator.prepare(task.model, optimizer)
    log = MetricsLog(folder, main, accelerator)
    start = (_resume(task, optimizer, scheduler, folder, resume, accelerator, log, config, manifest, progress)
             if resume else 0)
    if config.report_to != "none":
        accelerator.init_trackers(meta.get("kind", "run"), config=log.tracker_config(meta.get("config", {})))
    per_epoch = steps_per_epoch(config, manifest, accelerator.num_processes)
    trainable = [p for group in task.param_groups for p in group["params"]]
    last_checkpoint: Path | None = None
    evaluation: dict[str, float] = {}
    validate = task.evaluate if manifest.raw["splits"].get("val", {}).get("groups", 0) else None
    if task.evaluate and not validate and config.eval_every:
        progress.log("the data has no validation groups (split val is empty): validation is skipped")
    watch = SpikeWatch(task.diagnose)
    started = time.perf_counter()
    extra = {"version": __version__, "data": data_identity(manifest)}

    saved: dict[int, Path] = {}

    def checkpoint(step: int) -> Path:
        if step in saved:  # a passing probe already wrote this step
            return saved[step]
        state = {**extra, "task": task.extra_state()} if task.extra_state else extra
        path = save_checkpoint(folder.current.root, step, task.trainable_state(), optimizer.optimizer.state_dict(),
                               scheduler.state_dict(), rng_state(), state, accelerator.process_index,
                               accelerator.num_processes, accelerator.wait_for_everyone, config.keep_last)
        if folder.staging is not None:
            folder.promote()
            accelerator.wait_for_everyone()
            path = folder.final.checkpoints / path.name
        saved[step] = path
        return path

    def probe(step: int) -> ProbeResult:
        result = task.guard(step)
        for warning in result.warnings:
            progress.log(f"warning at step {step}: {warning}")
        watch.total += len(result.warnings)
        log.write({"step": step, "split": "probe", **result.row,
                   **({"warnings": result.warnings} if result.warnings else {})})
        return result

    def finish(row: dict, steps: int, stopped: dict | None = None) -> dict:
        counts = [int(c) for c in accelerator.gather(torch.tensor([stream.count], device=accelerator.device)).tolist()]
        summary = {**meta, "version": __version__, "steps": steps, "resumed_from": start or None,
                   "seconds": round(time.perf_counter() - started, 2), "final": {**row, **evaluation},
                   "batches_per_process": counts, "processes": accelerator.num_processes,
                   "warnings": watch.total, "data": {**meta.get("data", {}), **data_identity(manifest)},
                   "machine": describe(),  # the code's commit and the libraries' versions: what made these weights
                   **({"stopped": stopped} if stopped else {})}
        if main:
            task.save_final(folder.current.model)
            atomic_write_json(folder.current.run_file, summary)
            write_card(folder.current.root, new_weights=True)  # README.md: what made the weights, what they measured
        accelerator.wait_for_everyone()
        folder.promote()
        accelerator.end_training()
        return summary

    stream = _Counted(iter(()))
    last_good: Path | None = None
    if task.guard is not None and start == 0:
        probe(0)  # the base: an untrained branch draws what the frozen model draws
        if task.stop_on_hacking:
            last_good = checkpoint(0)
    elif task.guard is not None and task.stop_on_hacking:
        last_good = saved.setdefault(start, find_checkpoint(folder.current.root, resume))
    progress.start(f"training {meta.get('kind', '')}".strip(), config.max_steps)
    progress.advance(start)
    with StopSignals() as signals:
        stream.iterator = train_batches(spec, per_epoch * config.grad_accum, start=start * config.grad_accum)
        for step in range(start + 1, config.max_steps + 1):
            model.train()
            try:
                total, logs = _optimizer_step(task, model, optimizer, stream, accelerator, config, trainable, signals)
            except StopRequested:  # the signal came while waiting for data: the last complete step is step - 1
                optimizer.zero_grad(set_to_none=True)
                progress.stop()
                saved = checkpoint(step - 1)
                _kill_data_workers()
                raise _interrupted(signals, step - 1, saved, " (while waiting for data)")
            scheduler.step()
            flags = accelerator.reduce(torch.tensor([0.0 if torch.isfinite(total) else 1.0,
                                                     1.0 if signals.received else 0.0], device=accelerator.device), "max")
            if flags[0] > 0:
                where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
                raise TrainingError(f"the loss became {total.item()} at step {step}: training stopped, nothing after "
                                    f"the last checkpoint was saved{where} (try a lower --lr, or --resume)")
            row = {"step": step, "loss": accelerator.reduce(total, "mean").item(), "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - started, 3), **_averaged(accelerator, logs)}
            warnings = watch(row)
            for warning in warnings:
                progress.log(f"warning at step {step}: {warning}")
            if warnings:
                row["warnings"] = warnings
            if step % config.log_every == 0 or step == config.max_steps or warnings:
                log.write(row)
            if validate and config.eval_every and (step % config.eval_every == 0 or step == config.max_steps):
                evaluation = validate()
                log.write({"step": step, "split": "val", **evaluation})
            if task.guard is not None and task.guard.due(step, config.max_steps):
                result = probe(step)
                if result.hacking and task.stop_on_hacking:
                    progress.stop()
                    good = load_checkpoint(last_good, accelerator.process_index)
                    task.load_trainable_state(good.model)
                    finish(row, step, {"step": step, "reason": "reward hacking", "warnings": result.warnings,
                                       "weights_from_step": good.step})
                    raise RewardHackingStopped(
                        f"stopped at step {step} by --stop-on-hacking: {result.warnings[0]}. "
                        f"{folder.current.model} holds the weights of step {good.step}, the last probe the judges "
                        f"passed ({last_good})")
                if task.stop_on_hacking and not result.hacking:
                    last_good = checkpoint(step)
            progress.advance(1, loss=row["loss"], **{k: v for k, v in evaluation.items() if isinstance(v, float)})
            if flags[1] > 0 or (config.checkpoint_every and step % config.checkpoint_every == 0):
                last_checkpoint = checkpoint(step)
            if flags[1] > 0:
                progress.stop()
                raise _interrupted(signals, step, last_checkpoint)
    progress.stop()
    return finish(row, config.max_steps)
