"""Crash safety (DESIGN §9): kill and resume, SIGTERM, NaN, unsafe checkpoints. Real processes, real signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from perfusion_cli.errors import CheckpointError, ConfigError, TrainingError
from perfusion_cli.training import rm as rm_module
from perfusion_cli.training.checkpoint import checkpoint_dirs, find_checkpoint, load_checkpoint
from perfusion_cli.training.rm import train_reward_model
from tests.helpers import tiny_config, tiny_recipe, write_recipe

def workspace_recipe(path):
    """The shipped tiny recipe, shrunk for tests, with checkpoints only when a test asks for them."""
    return write_recipe(path, tiny_recipe(train_rm={"checkpoint_every": 1000}, train_gen={"checkpoint_every": 1000}))


@pytest.fixture
def workspace(tmp_path, market):
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    workspace_recipe(tmp_path / "perfusion.toml")
    return tmp_path


def _command(workspace, *args):
    return [sys.executable, "-m", "perfusion_cli", "--workdir", str(workspace), *map(str, args)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(workspace, *args):
    result = subprocess.run(_command(workspace, *args), capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _wait_for(predicate, process, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def _weights(run):
    files = sorted((run / "model").rglob("*.safetensors"))
    return {f"{f.relative_to(run)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("command, steps, every", [("train-rm", 24, 6), ("train-gen", 10, 4)])
def test_sigkill_then_resume_repeats_the_uninterrupted_run_step_for_step(workspace, command, steps, every):
    common = ["--max-steps", steps, "--checkpoint-every", every]
    _run(workspace, command, "--out", workspace / "straight", *common)

    killed = workspace / "killed"
    process = subprocess.Popen(_command(workspace, command, "--out", killed, *common), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = _wait_for(lambda: (killed / "checkpoints" / f"step-{every:08d}").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached and process.returncode == -signal.SIGKILL, "killed after its first checkpoint"
    assert not (killed / "run.json").exists(), "the run was killed before it finished"

    _run(workspace, command, "--out", killed, *common, "--resume", "latest")
    assert _losses(killed) == _losses(workspace / "straight")
    assert [step for step, _ in _losses(killed)] == list(range(1, steps + 1))
    straight, resumed = _weights(workspace / "straight"), _weights(killed)
    assert straight.keys() == resumed.keys() and straight
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert json.loads((killed / "run.json").read_text())["resumed_from"] >= every


@pytest.mark.slow
def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(workspace):
    run = workspace / "runs" / "rm"
    process = subprocess.Popen(_command(workspace, "train-rm", "--max-steps", 100000), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM at step" in stderr and "continue with --resume latest" in stderr
    assert "Traceback" not in stderr
    checkpoint = load_checkpoint(find_checkpoint(run, "latest"), rank=0)
    assert checkpoint.step >= 1 and checkpoint.model and checkpoint.optimizer["state"]
    _run(workspace, "train-rm", "--max-steps", checkpoint.step + 2, "--resume", "latest")
    assert json.loads((run / "run.json").read_text())["steps"] == checkpoint.step + 2


def test_a_nan_loss_stops_the_run_and_keeps_the_previous_checkpoint(market, tmp_path, monkeypatch):
    data_dir, _ = market
    calls = {"n": 0}
    real = rm_module.LOSSES["pl"]

    def poisoned(scores, positive, valid=None):
        calls["n"] += 1
        loss = real(scores, positive, valid)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setitem(rm_module.LOSSES, "pl", poisoned)
    config = tiny_config("train-rm", max_steps=10, checkpoint_every=3)
    with pytest.raises(TrainingError, match=r"the loss became nan at step 5.*the last good checkpoint is .*step-00000003"):
        train_reward_model(config, data_dir, tmp_path / "rm")
    assert [p.name for p in checkpoint_dirs(tmp_path / "rm")] == ["step-00000003"]
    assert load_checkpoint(checkpoint_dirs(tmp_path / "rm")[0], 0).step == 3
    assert not (tmp_path / "rm" / "run.json").exists() and not (tmp_path / "rm" / "model").exists()


def test_checkpoints_that_are_not_safetensors_are_refused(tmp_path):
    folder = tmp_path / "step-00000010"
    folder.mkdir()
    torch.save({"weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"holds pickle files \(pytorch_model.bin\); perfusion only loads "
                                              r"safetensors"):
        load_checkpoint(folder, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a perfusion checkpoint"):
        load_checkpoint(tmp_path / "empty", 0)


def test_resuming_a_finished_run_asks_for_more_steps(market, tmp_path):
    data_dir, _ = market
    config = tiny_config("train-rm", max_steps=2, checkpoint_every=2)
    train_reward_model(config, data_dir, tmp_path / "rm")
    with pytest.raises(ConfigError, match="is at step 2, already at --max-steps 2: raise --max-steps"):
        train_reward_model(config, data_dir, tmp_path / "rm", resume="latest")


@pytest.mark.slow
def test_sigterm_while_waiting_for_data_checkpoints_and_exits(workspace):
    """A data-loader worker that stops answering (stuck storage) must not hold the run hostage."""
    import psutil

    write_recipe(workspace / "perfusion.toml", tiny_recipe(train_rm={"num_workers": 1, "checkpoint_every": 1000}))
    run = workspace / "runs" / "rm"
    process = subprocess.Popen(_command(workspace, "train-rm", "--max-steps", 100000), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        assert _wait_for(lambda: run.joinpath("metrics.jsonl").is_file(), process)
        worker = psutil.Process(process.pid).children()[0]
        worker.suspend()  # SIGSTOP: the main process now waits for batches that never come
        time.sleep(3)
        steps_before = _losses(run)[-1][0]
        time.sleep(2)
        assert _losses(run)[-1][0] == steps_before, "it is waiting"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if worker is not None and worker.is_running():
            worker.kill()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "(while waiting for data)" in stderr and "Traceback" not in stderr
    checkpoint = load_checkpoint(find_checkpoint(run, "latest"), rank=0)
    assert checkpoint.step == steps_before, "the last completed step is what was saved"


def test_generate_output_folders_never_collide(tmp_path):
    from perfusion_cli.designer import output_folder

    first = output_folder(tmp_path, "M1", "linen dress", 0, True)
    first.mkdir(parents=True)
    (first / "metadata.json").write_text(json.dumps({"prompt": "linen dress"}))
    (first.parent / ".merchant").write_text("M1")
    assert output_folder(tmp_path, "M1", "linen dress", 0, True) == first, "the same request replaces its own"
    other_merchant = output_folder(tmp_path, "m1", "linen dress", 0, True)
    other_prompt = output_folder(tmp_path, "M1", "Linen Dress", 0, True)
    assert len({first, other_merchant, other_prompt}) == 3
    assert output_folder(tmp_path, "M1", "linen dress", 0, False) != first, "base images have their own folder"
