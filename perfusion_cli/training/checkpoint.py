"""Checkpoints: trainable weights, optimizer, scheduler and per-process RNG, written atomically.

    <run>/checkpoints/step-00000040/
        model.safetensors          trainable weights only (a frozen backbone is not repeated)
        optimizer.safetensors + optimizer.json
        rng-<rank>.safetensors + rng-<rank>.json      one pair per process
        state.json                 step, scheduler state, world size, extra fields

The folder is assembled under a temporary name and renamed when complete, so ``latest`` never
points at a torn checkpoint. Only safetensors and JSON are read back: a folder of pickle files
(``.bin``, ``.pt``, ``.pkl``, ``.ckpt``) is refused with a message (DESIGN §9).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from perfusion_cli.errors import CheckpointError
from perfusion_cli.io import plain_modes
from perfusion_cli.training.state import flatten, unflatten

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict
    extra: dict


def _save_tree(folder: Path, name: str, obj: Any) -> None:
    tensors, skeleton = flatten(obj)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def _load_tree(folder: Path, name: str) -> Any:
    return unflatten(json.loads((folder / f"{name}.json").read_text()), load_file(str(folder / f"{name}.safetensors")))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)), key=lambda p: p.name)


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer: dict, scheduler: dict,
                    rng: dict, extra: dict, rank: int, world_size: int, barrier, keep_last: int) -> Path:
    """Every process calls this (each writes its RNG); process 0 writes the rest and renames."""
    final = Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _save_tree(tmp, f"rng-{rank}", rng)
    if rank == 0:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        _save_tree(tmp, "optimizer", optimizer)
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": world_size, "scheduler": scheduler,
                                                    "extra": extra}, indent=2))
    barrier()
    if rank == 0:
        plain_modes(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """``latest`` → the newest checkpoint of ``run_dir``; anything else is a checkpoint folder path."""
    if resume == "latest":
        found = checkpoint_dirs(run_dir)
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {Path(run_dir) / CHECKPOINTS}")
        return found[-1]
    path = Path(resume)
    if path.is_dir() and not (path / "state.json").exists() and checkpoint_dirs(path):
        return checkpoint_dirs(path)[-1]  # a run folder was given
    return path


def load_checkpoint(path: Path, rank: int) -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (path / "model.safetensors").is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{path} holds pickle files ({', '.join(pickles[:3])}); perfusion only loads "
                                  f"safetensors checkpoints that it wrote itself")
        raise CheckpointError(f"{path} is not a perfusion checkpoint (no model.safetensors)")
    try:
        state = json.loads((path / "state.json").read_text())
        if not (path / f"rng-{rank}.json").is_file():
            raise CheckpointError(f"{path} was written by {state['world_size']} process(es) and has no RNG state for "
                                  f"process {rank}: resume with the same number of processes")
        return Checkpoint(path=path, step=int(state["step"]), model=load_file(str(path / "model.safetensors")),
                          optimizer=_load_tree(path, "optimizer"), scheduler=state["scheduler"],
                          rng=_load_tree(path, f"rng-{rank}"), extra=state.get("extra", {}))
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated or edited file
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from None
