"""A run's training log: ``metrics.jsonl`` (always) and Accelerate's trackers (``--report-to``).

Only process 0 writes. Each row is one flushed JSON line, so a killed run leaves at most a torn last
line, which ``--resume`` drops along with every row after the checkpoint it resumes from.

``SpikeWatch`` turns rows into warnings: a loss far above its recent values, and whatever the task's
own ``diagnose`` reports (train-gen: the branch's denoising error climbing above the reference's).
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Callable

from perfusion_cli.io import atomic_write_text


class MetricsLog:
    def __init__(self, folder, enabled: bool, accelerator=None):
        self.folder = folder  # a TrainingFolder: the path moves when a staged run replaces an old one
        self.enabled = enabled
        self.accelerator = accelerator

    @property
    def path(self):
        return self.folder.current.metrics

    def keep_until(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (and a torn line) so the log matches an
        uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        kept = [row for row in self.folder.current.metric_rows() if row["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))

    def write(self, row: dict) -> None:
        if self.accelerator is not None and self.accelerator.trackers:
            prefix = f"{row['split']}/" if "split" in row else "train/"
            numbers = {prefix + key: value for key, value in row.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
            self.accelerator.log(numbers, step=row["step"])
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, sort_keys=True) + "\n")

    @staticmethod
    def tracker_config(config: dict) -> dict:
        """Trackers take flat scalars as hyper-parameters."""
        flat = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}{key}.", item)
            elif isinstance(value, (int, float, str, bool)):
                flat[prefix[:-1]] = value
            elif value is not None:
                flat[prefix[:-1]] = str(value)

        walk("", config)
        return flat


class SpikeWatch:
    """Warnings for one row: the loss more than ``sigmas`` standard deviations above its last ``window``
    values, and the task's own diagnostics. Each kind is reported once until it recovers."""

    def __init__(self, diagnose: Callable[[dict], list[str]] | None = None, window: int = 50, sigmas: float = 6.0):
        self.diagnose = diagnose
        self.losses: deque[float] = deque(maxlen=window)
        self.sigmas = sigmas
        self.active: set[str] = set()
        self.total = 0

    def __call__(self, row: dict) -> list[str]:
        found = {}
        loss = row["loss"]
        if len(self.losses) >= 10:
            mean = sum(self.losses) / len(self.losses)
            spread = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / len(self.losses))
            if loss > mean + self.sigmas * max(spread, 1e-3 * abs(mean), 1e-8):
                found["loss_spike"] = (f"loss spiked to {loss:.4g} (recent mean {mean:.4g}, sd {spread:.3g}): "
                                       f"check the learning rate and the data")
        self.losses.append(loss)
        for message in self.diagnose(row) if self.diagnose else []:
            found[message.split(":", 1)[0]] = message
        fresh = [message for kind, message in found.items() if kind not in self.active]
        self.active = set(found)
        self.total += len(fresh)
        return fresh
