"""A run folder: what ``train-rm`` and ``train-gen`` write, and the one place that reads its layout.

    <run>/run.json          the run's summary (kind, command, config, data, steps, final metrics)
    <run>/metrics.jsonl     one row per logged step (and per validation)
    <run>/checkpoints/      resumable checkpoints (``training/checkpoint.py`` writes them)
    <run>/model/            the trained model: ``save_pretrained`` of PerFusionRM or of the branch
    <run>/trackers/         TensorBoard / W&B files when ``--report-to`` asks for them

Commands take "a run" as the run folder or its ``model/`` folder; ``model_folder`` resolves either.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from perfusion_cli.errors import CheckpointError, PerfusionError

RUN = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
TRACKERS = "trackers"

# kind → (the model classes that save_pretrained records, the command that makes it)
# the model classes a run's model/config.json may name (branch_kinds.LOADABLE's, for the generator)
KINDS = {"reward": (("PerFusionRM",), "train-rm"),
         "generator": (("PersonalizedBranch", "MerchantAdapter", "FluxMerchantAdapter", "SD3MerchantAdapter"),
                       "train-gen")}


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_file(self) -> Path:
        return self.root / RUN

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def trackers(self) -> Path:
        return self.root / TRACKERS

    def occupied(self) -> bool:
        return self.run_file.exists() or self.metrics.exists() or self.checkpoints.exists()

    def finished(self) -> bool:
        return self.run_file.is_file()

    def metric_rows(self) -> list[dict]:
        """The rows of ``metrics.jsonl``; a torn line (a killed run's last) is skipped."""
        try:
            lines = self.metrics.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows

    def code(self) -> str | None:
        """The code that trained this run, as its ``run.json`` recorded it (the git commit), or None."""
        try:
            return self.summary().get("machine", {}).get("perfusion code")
        except (CheckpointError, AttributeError):
            return None

    def summary(self) -> dict:
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.run_file} is unreadable: {exc}") from None


def run_of(path: str | Path) -> RunDir:
    """The run folder of ``path``, given as the run or as its ``model/`` folder."""
    path = Path(path)
    return RunDir(path.parent if path.name == MODEL and not (path / RUN).exists() else path)


def model_class(folder: Path) -> str | None:
    """The class name that ``save_pretrained`` recorded in ``folder/config.json``, or None."""
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def model_folder(path: str | Path, kind: str) -> Path:
    """The saved model of ``kind`` in ``path`` (a run folder or its ``model/``), or an error naming the
    command that makes it."""
    class_names, command = KINDS[kind]
    path = Path(path)
    for candidate in (path / MODEL, path):
        if model_class(candidate) in class_names:
            return candidate
    found = (model_class(path / MODEL), model_class(path))
    other = next((k for k, (names, _) in KINDS.items() if any(name in names for name in found)), None)
    if other:
        raise CheckpointError(f"{path} holds a {other} model, not a {kind} model — pass the run `perfusion "
                              f"{command}` wrote")
    raise CheckpointError(f"no trained {kind} model in {path} — run `perfusion {command}` first")


def has_model(path: str | Path, kind: str) -> bool:
    try:
        model_folder(path, kind)
    except CheckpointError:
        return False
    return True


@contextlib.contextmanager
def loading(folder: Path, what: str) -> Iterator[None]:
    """Loading a saved model: whatever the libraries raise on a damaged folder (truncated safetensors, a
    ``config.json`` that no longer matches its weights, a missing tokenizer file) becomes one CheckpointError
    naming the folder. The folder is the user's: anything may be wrong with it."""
    try:
        yield
    except PerfusionError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library error on a user's folder is the same verdict
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"cannot load the {what} in {folder}: {type(exc).__name__}: {first} — the folder is "
                              f"damaged or was changed since training; train again or restore it") from None
