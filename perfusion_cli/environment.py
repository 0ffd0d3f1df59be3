"""The machine and library versions, for bug reports and benchmark records."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from perfusion_cli import __version__

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "webdataset", "safetensors",
            "clean-fid", "torchmetrics", "xformers")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, str]:
    import torch

    info = {"perfusion": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_model(), "cpu cores": str(os.cpu_count()), "cuda": "no"}
    if torch.cuda.is_available():
        info["cuda"] = f"{torch.version.cuda}: " + ", ".join(
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    for package in PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info
