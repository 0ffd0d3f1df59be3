"""The machine: library versions and hardware (for bug reports and benchmark records), device choice.

``describe()`` reads versions from package metadata, GPUs from ``nvidia-smi`` and the code's own git
commit (``code_revision``), so ``perfusion env`` answers without importing torch;
``describe(torch_runtime=True)`` adds what torch itself sees. Every run's ``run.json`` keeps it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from perfusion_cli import __version__
from perfusion_cli.errors import ConfigError

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "webdataset", "safetensors",
            "clean-fid", "torchmetrics", "xformers", "tensorboard", "wandb")


def available_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_runs_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16, AMX, or Arm's BF16) and torch uses it.
    Without them oneDNN emulates bf16: on a 2-core AVX2 machine a bf16 matmul ran 70× and a convolution 200×
    slower than in fp32 (docs/notes/benchmarks-history.md)."""
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):  # ATEN_CPU_CAPABILITY may lower it
        return platform.machine() in ("aarch64", "arm64") and "bf16" in cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def gpus() -> str:
    if not shutil.which("nvidia-smi"):
        return "none (no nvidia-smi)"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nvidia-smi failed"
    return "; ".join(listed.splitlines()) or "none"


def code_revision() -> str:
    """The commit of the git checkout this package runs from, ``+dirty`` when tracked files differ from it
    (untracked ones are not looked at); ``not a git checkout`` for an installed wheel. Two runs with the same
    clean revision ran the same code."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # a folder, or a file in a worktree
        return "not a git checkout"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git failed)"
    if head.returncode or changed.returncode:
        return "unknown (git failed)"
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


def describe(torch_runtime: bool = False) -> dict[str, str]:
    info = {"perfusion": __version__, "perfusion code": code_revision(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_model(), "cpu cores": str(os.cpu_count()), "gpus": gpus()}
    for package in PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    if torch_runtime:
        import torch

        info["torch cuda"] = "no" if not torch.cuda.is_available() else f"{torch.version.cuda}: " + ", ".join(
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["torch threads"] = str(torch.get_num_threads())
    return info


def pick_device(name: str = "auto"):
    """``auto`` → CUDA when available, else the CPU; ``cuda`` without a GPU is a ConfigError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
