"""Hostile use of the CLI (DESIGN §9): one red line and exit 1 for every error a user can cause, and no
run or data a user had is lost to a bad command."""

import json
import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from tests.helpers import prepare_logs, tiny_recipe, write_recipe

runner = CliRunner()


def _invoke(workspace, *args):
    result = runner.invoke(app, ["--workdir", str(workspace), *map(str, args)])
    return result, " ".join(result.output.split())


def _one_line_error(result, text, message):
    """Exit 1 and one 'error:' line holding ``message`` (progress bars drawn before it may precede it)."""
    assert result.exit_code == 1, text
    errors = [line for line in result.output.splitlines() if "error: " in line]
    assert len(errors) == 1 and message in " ".join(result.output.split("error: ", 1)[1].split()), result.output
    assert "Traceback" not in text


@pytest.fixture
def workspace(tmp_path, market):
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    write_recipe(tmp_path / "perfusion.toml", tiny_recipe())
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["train-rm", "--max-steps", "0"], "--max-steps must be ≥ 1, got 0"),
    (["train-rm", "--batch-size", "-1"], "--batch-size must be ≥ 1, got -1"),
    (["train-rm", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["train-rm", "--lr", "-1e-3"], "--lr must be > 0, got -0.001"),
    (["train-gen", "--grad-accum", "-2"], "--grad-accum must be ≥ 1, got -2"),
    (["train-gen", "--group-size", "1"], "--group-size must be ≥ 2, got 1"),
    (["train-gen", "--beta", "inf"], "--beta must be a finite number, got inf"),
    (["train-gen", "--resolution", "0"], "--resolution must be ≥ 8, got 0"),
    (["train-gen", "--checkpoint-every", "0"], "--checkpoint-every must be ≥ 1, got 0"),
    (["generate", "--merchant", "102", "linen dress", "--n", "0"], "--n must be ≥ 1, got 0"),
    (["generate", "--merchant", "102", "linen dress", "--steps", "-3"], "--steps must be ≥ 1, got -3"),
    (["generate", "--merchant", "102", "linen dress", "--guidance", "nan"], "--guidance must be a finite number"),
    (["eval", "gen", "--n-per-prompt", "0"], "--n-per-prompt must be ≥ 1, got 0"),
    (["eval", "gen", "--max-pairs", "-1"], "--max-pairs must be ≥ 1, got -1"),
    (["eval", "rm", "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["bench", "--repeats", "0"], "--repeats must be ≥ 1, got 0"),
    (["train-rm", "--device", "tpu"], "No such option"),
])
def test_bad_values_are_one_line_naming_the_flag(workspace, args, message):
    result, text = _invoke(workspace, *args)
    if message == "No such option":  # a usage error: typer's exit 2
        assert result.exit_code == 2 and "Traceback" not in text
        return
    _one_line_error(result, text, message)


@pytest.mark.parametrize("recipe, message", [
    ("[train-rm.merchant]\nuser_dim = 0\n", "key 'merchant': key 'user_dim' must be ≥ 1, got 0"),
    ("[train-gen]\ngrid_size = -4\n", "key 'grid_size' must be ≥ 1, got -4"),
    ("[train-rm]\nmax_grad_norm = 0.0\n", "key 'max_grad_norm' must be > 0, got 0.0"),
    ("[prepare]\nval_fraction = 1.5\n", "key 'val_fraction' must be < 1, got 1.5"),
    ("[train-rm.merchant]\nmlp_dims = []\n", "key 'mlp_dims' must not be empty"),
])
def test_bad_recipe_values_name_the_key(workspace, recipe, message):
    (workspace / "bad.toml").write_text(recipe)
    result, text = _invoke(workspace, "train-rm", "--recipe", workspace / "bad.toml")
    _one_line_error(result, text, message)


def test_an_output_path_that_is_a_file_is_refused(workspace, market):
    (workspace / "file").write_text("x")
    result, text = _invoke(workspace, "prepare", market[0] / "raw", "--out", workspace / "file")
    _one_line_error(result, text, "the prepared data folder")
    assert "is a file, not a folder" in text
    result, text = _invoke(workspace, "train-rm", "--out", workspace / "file")
    _one_line_error(result, text, "is a file, not a folder")


def test_prepare_data_when_data_holds_the_logs_refuses_and_keeps_them(tmp_path, market):
    shutil.copytree(market[0] / "raw", tmp_path / "data")  # the logs sit where the prepared data defaults to
    before = (tmp_path / "data" / "merchants.jsonl").read_bytes()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, ["prepare", "data"])
    finally:
        os.chdir(cwd)
    _one_line_error(result, " ".join(result.output.split()), "prepare would write into its own input")
    assert (tmp_path / "data" / "merchants.jsonl").read_bytes() == before


@contextmanager
def _mounted(folder, options):
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_output_folder_is_one_line(tmp_path, market):
    with _mounted(tmp_path / "ro", "ro,size=1m") as folder:
        result, text = _invoke(tmp_path, "prepare", market[0] / "raw", "--out", folder / "data")
        _one_line_error(result, text, f"cannot write the prepared data folder {folder / 'data'}: "
                                      f"Read-only file system")


def test_a_full_disk_is_one_line_and_keeps_the_earlier_data(tmp_path, market):
    with _mounted(tmp_path / "small", "size=256k") as folder:
        prepare_logs(*_tiny_logs(tmp_path), folder / "data", min_records=1, cold_start_fraction=0.0)
        before = (folder / "data" / "manifest.json").read_bytes()
        result, text = _invoke(tmp_path, "prepare", market[0] / "raw", "--out", folder / "data")
        _one_line_error(result, text, "No space left on device")
        assert "free some space" in text
        assert (folder / "data" / "manifest.json").read_bytes() == before, "the earlier data is still there"


def _tiny_logs(tmp_path):
    from tests.helpers import session, write_logs

    return (write_logs(tmp_path / "tiny-logs", [{"merchant_id": "m1"}], [session(f"s{i}", timestamp=i)
                                                                          for i in range(3)]),)


def _train_rm(workspace, *args):
    result, text = _invoke(workspace, "train-rm", *args)
    assert result.exit_code == 0, text
    return result


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(workspace):
    _train_rm(workspace)
    run = workspace / "runs" / "rm"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result, text = _invoke(workspace, "train-rm", "--overwrite", "--base-model", workspace / "no-such-model")
    _one_line_error(result, text, "cannot load CLIP or SigLIP")
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before, "a failed --overwrite left the old run as it was"
    _train_rm(workspace, "--overwrite", "--no-plugin")
    assert json.loads((run / "model" / "config.json").read_text())["plugin"] is False
    assert not (workspace / "runs" / "rm.overwrite").exists()


def test_resume_skips_a_torn_last_metrics_line(workspace):
    _train_rm(workspace, "--checkpoint-every", "1")
    metrics = workspace / "runs" / "rm" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 3, "loss": 0.')  # a killed writer's last line
    _train_rm(workspace, "--max-steps", "4", "--resume", "latest")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_data_it_was_not_trained_on(workspace, tmp_path_factory):
    from tests.helpers import tiny_market

    _train_rm(workspace, "--checkpoint-every", "1")
    other = tmp_path_factory.mktemp("other")
    tiny_market(other, merchants=8, sessions=12, seed=7)  # same shape of vocabulary, other merchants and files
    result, text = _invoke(workspace, "train-rm", "--max-steps", "4", "--resume", "latest", other)
    _one_line_error(result, text, f"was trained on other data than {other}")
    assert "resume on the data the run started with" in text


def test_eval_rm_says_what_it_skipped_and_fails_when_nothing_is_left(workspace):
    _train_rm(workspace)
    manifest = json.loads((workspace / "data" / "manifest.json").read_text())
    for shard in manifest["splits"]["test"]["shards"]:
        path = workspace / "data" / "shards" / shard["name"]
        path.write_bytes(b"\0" * path.stat().st_size)  # same size, nothing readable
    result, text = _invoke(workspace, "eval", "rm", "--skip-bad-shards")
    _one_line_error(result, text, "no group of split 'test'")


def test_skip_bad_shards_stops_instead_of_spinning_when_nothing_decodes(workspace):
    manifest = json.loads((workspace / "data" / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        path = workspace / "data" / "shards" / shard["name"]
        path.write_bytes(b"\0" * path.stat().st_size)
    result, text = _invoke(workspace, "train-rm", "--skip-bad-shards", "--max-steps", "3")
    _one_line_error(result, text, "no sample could be decoded in 1000 tries in a row")
    assert "re-run `perfusion prepare`" in text
