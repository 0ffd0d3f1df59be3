"""The third hostile pass on trained workspaces (classes 3, 5, 7): damaged model folders, empty splits, sizes that
cannot fit, escapes in what reaches the terminal, and requests written as they finish. Each case is one line
and exit 1, never a traceback, and leaves the workspace as it was."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from perfusion_cli.cli.main import app

runner = CliRunner()


def _invoke(workspace, *args):
    result = runner.invoke(app, ["--workdir", str(workspace), *map(str, args)])
    return result, " ".join(result.output.split())


@pytest.fixture
def damaged(trained_workspace, tmp_path):
    """A copy of the trained workspace whose generator a test may break."""
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, ignore=shutil.ignore_patterns("outputs"))
    return root


def _truncate(model):
    weights = model / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _another_layout(model):
    config = json.loads((model / "config.json").read_text())
    config["tokens"] = config["tokens"] * 2  # what the weights were not trained with
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage", [_truncate, _another_layout], ids=["truncated weights", "config not the weights'"])
def test_a_damaged_generator_is_one_line(damaged, tmp_path, damage):
    damage(damaged / "runs" / "gen" / "model")
    result, text = _invoke(damaged, "generate", "--merchant", "102", "linen dress", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert f"cannot load the generator in {damaged / 'runs' / 'gen' / 'model'}" in text, text
    assert "the folder is damaged or was changed since training" in text and not (tmp_path / "o").exists()


def test_a_truncated_reward_model_is_one_line(damaged):
    _truncate(damaged / "runs" / "rm" / "model")
    result, text = _invoke(damaged, "eval", "rm")
    assert result.exit_code == 1 and "cannot load the reward model in" in text and "Traceback" not in text, text


@pytest.mark.parametrize("command", [["eval", "rm"], ["eval", "gen"]])
def test_an_empty_split_is_one_line(trained_workspace, market, tmp_path, command):
    from tests.helpers import prepare_logs

    prepare_logs(market[0] / "raw", tmp_path / "data", cold_start_fraction=0.0)  # no cold-start merchants
    result, text = _invoke(trained_workspace, *command, "--data", tmp_path / "data", "--split", "cold_start")
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert f"split 'cold_start' of {tmp_path / 'data'} holds no groups (groups per split: test 7, train 70, val 7) — pass --split with one that does" in text


def test_a_generation_that_cannot_fit_is_refused_before_it_starts(trained_workspace, tmp_path):
    recipe = tmp_path / "huge.toml"
    recipe.write_text((trained_workspace / "perfusion.toml").read_text().replace("[generate]",
                                                                                    "[generate]\nbatch_size = 256"))
    result, text = _invoke(trained_workspace, "generate", "--recipe", recipe, "--merchant", "102", "linen dress",
                           "--resolution", 4096, "--n", 256, "--out", tmp_path / "o")
    assert result.exit_code == 1 and "generating 256 image(s) at 4096² in one call needs about" in text, text
    assert "lower --resolution, or the images per call ([generate] batch_size)" in text
    assert not (tmp_path / "o").exists()


def test_a_training_step_that_cannot_fit_is_refused_before_it_starts(trained_workspace, tmp_path):
    result, text = _invoke(trained_workspace, "train-gen", "--batch-size", 4096, "--out", tmp_path / "gen")
    assert result.exit_code == 1 and "one training step of 4096 groups × 5 needs about" in text, text
    assert not (tmp_path / "gen").exists()


def test_escapes_in_a_prompt_never_reach_the_terminal(trained_workspace, tmp_path):
    result, text = _invoke(trained_workspace, "generate", "--merchant", "102", "\x1b[2J\x1b[31mlinen dress\x07",
                           "--n", 1, "--out", tmp_path / "o")
    assert result.exit_code == 0, text
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b[31mlinen dress\\x07" in text  # shown, as text


def test_requests_are_written_as_they_finish(trained_workspace, tmp_path):
    """Memory holds one wave of requests: after the first request's folder is written the last is not yet made."""
    from perfusion_cli.data.requests import Request
    from perfusion_cli.designer import Designer
    from tests.helpers import tiny_config

    config = tiny_config("generate", batch_size=2, n=2)
    designer = Designer(trained_workspace / "runs" / "gen", trained_workspace / "data", config)
    requests = [Request("102", "linen dress", 2, seed) for seed in range(3)]
    written = designer.serve(requests, tmp_path / "o")
    first = next(written)
    assert (tmp_path / "o" / "102" / "linen-dress-seed0" / "metadata.json").is_file() and first["seed"] == 0
    assert not (tmp_path / "o" / "102" / "linen-dress-seed2").exists()
    assert [metadata["seed"] for metadata in written] == [1, 2]
    metadata = json.loads((tmp_path / "o" / "102" / "linen-dress-seed2" / "metadata.json").read_text())
    assert metadata["base_model"] == "tiny" and metadata["resolution"] == 64 and metadata["steps"] == config.steps
    assert len(metadata["run_code"]) >= 40  # the commit that trained the generator


def test_weights_are_written_with_the_run_s_permissions(trained_workspace):
    """safetensors creates its files 0600: a run's weights were unreadable beside its readable run.json."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    files = [p for run in ("gen", "rm") for p in (trained_workspace / "runs" / run).rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~mask)}
