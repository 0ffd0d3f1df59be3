"""What ``train-rm`` and ``train-gen`` share at the command line: running a trainer and reporting it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from perfusion_cli.cli.console import RichProgress, console, err_console, say, table


def run_trainer(train: Callable, config, data_dir: Path, run_dir: Path, resume: str | None, overwrite: bool,
                command: str) -> dict:
    from accelerate import PartialState

    from perfusion_cli.data.manifest import load_manifest
    from perfusion_cli.preflight import check_training, precision_note, process_device

    device = process_device()
    check_training(config, load_manifest(data_dir).vocab, device)  # before any weight loads
    if note := precision_note(config.mixed_precision, device):
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    with RichProgress() as progress:
        summary = train(config, data_dir, run_dir, resume=resume, progress=progress, command=command,
                        overwrite=overwrite)
    if not PartialState().is_main_process:
        return summary
    final = summary["final"]
    rows = [[key, value] for key, value in final.items() if key not in ("seconds", "lr", "warnings")]
    rows += [["steps", summary["steps"]], ["seconds", summary["seconds"]], ["warnings", summary["warnings"]],
             ["batches per process", ", ".join(map(str, summary["batches_per_process"]))]]
    console.print(table(f"{summary['kind']} training", ["", "value"], rows))
    say(f"saved {Path(run_dir) / 'model'} (log: {Path(run_dir) / 'metrics.jsonl'})")
    return summary
