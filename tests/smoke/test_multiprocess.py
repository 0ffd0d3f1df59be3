"""Two processes on one CPU machine (torchrun → Accelerate over gloo): equal batches, rank 0 writes."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.smoke.test_crash_safety import _env, workspace_recipe


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train-rm", "train-gen", "train-gen --online"])
def test_two_processes_train_with_equal_batches_and_one_writer(tmp_path, market, trained_workspace, command):
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    workspace_recipe(tmp_path / "perfusion.toml")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "perfusion_cli", "--workdir", str(tmp_path), *command.split(), "--out", str(out), "--max-steps", "4",
            "--checkpoint-every", "2"]
    if command == "train-rm":
        args += ["--eval-every", "2"]
    if command == "train-gen --online":  # each process draws and scores its own pairs; the guard probes on both
        args += ["--reward", str(trained_workspace / "runs" / "rm"), "--sample-steps", "2", "--probe-every", "2",
                 "--probe-pairs", "2"]
    result = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-30000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["processes"] == 2
    assert summary["batches_per_process"] == [4, 4]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == [1, 2, 3, 4], "each step logged once, by rank 0 only"
    assert result.stdout.count("training") == 1, "one summary table, from rank 0"
    checkpoint = out / "checkpoints" / "step-00000004"
    assert (checkpoint / "rng-0.json").is_file() and (checkpoint / "rng-1.json").is_file()
    if command == "train-rm":
        assert sum(1 for row in rows if row.get("split") == "val") == 2
    if command == "train-gen --online":
        assert [row["step"] for row in rows if row.get("split") == "probe"] == [0, 2, 4], "probed once per step due"
        steps = [row for row in rows if "loss" in row]  # the recipe's online_mix 0.8 (no warm-up in the shrunk one)
        assert [row["online"] for row in steps] == [1.0, 0.0, 0.0, 0.0]
        assert all("reward" in row for row in steps if row["online"]) and not any("reward" in row for row in steps
                                                                                    if not row["online"])
