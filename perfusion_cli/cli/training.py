"""What ``train-rm`` and ``train-gen`` share at the command line: running a trainer and reporting it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from accelerate import PartialState

from perfusion_cli.cli.console import RichProgress, console, say, table
from perfusion_cli.training.loop import prepare_run_dir


def run_trainer(train: Callable, config, data_dir: Path, run_dir: Path, resume: str | None, overwrite: bool,
                command: str) -> dict:
    prepare_run_dir(run_dir, resume, overwrite)
    progress = RichProgress()
    try:
        summary = train(config, data_dir, run_dir, resume=resume, progress=progress, command=command)
    finally:
        progress.stop()
    if not PartialState().is_main_process:
        return summary
    final = summary["final"]
    rows = [[key, value] for key, value in final.items() if key not in ("seconds", "lr")]
    rows += [["steps", summary["steps"]], ["seconds", summary["seconds"]],
             ["batches per process", ", ".join(map(str, summary["batches_per_process"]))]]
    console.print(table(f"{summary['kind']} training", ["", "value"], rows))
    say(f"saved {run_dir / 'model'} (log: {run_dir / 'metrics.jsonl'})")
    return summary
