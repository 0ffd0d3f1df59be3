"""``perfusion train-rm`` and ``perfusion eval rm`` through the CLI, in a workspace."""

import importlib.metadata
import json
import shutil

from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.environment import code_revision
from tests.helpers import tiny_recipe, write_recipe

runner = CliRunner()


def _workspace(tmp_path, market):
    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    write_recipe(tmp_path / "perfusion.toml", tiny_recipe())
    return tmp_path


def test_train_rm_then_eval_rm_with_workspace_defaults(tmp_path, market):
    ws = _workspace(tmp_path, market)
    result = runner.invoke(app, ["--workdir", str(ws), "train-rm"])
    assert result.exit_code == 0, result.output
    assert json.loads((ws / "runs" / "rm" / "model" / "config.json").read_text())["_class_name"] == "PerFusionRM"
    summary = json.loads((ws / "runs" / "rm" / "run.json").read_text())
    assert summary["steps"] == 2
    # what made the weights: the code's commit and the libraries' versions
    assert summary["machine"]["perfusion code"] == code_revision()
    assert summary["machine"]["torch"] == importlib.metadata.version("torch")
    rows = [json.loads(line) for line in (ws / "runs" / "rm" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == [1, 2], "every step is logged"
    assert all(row["grad_norm"] > 0 and row["lr"] > 0 for row in train_rows)
    result = runner.invoke(app, ["--workdir", str(ws), "eval", "rm", "--split", "val", "--json", str(ws / "e.json")])
    assert result.exit_code == 0, result.output
    assert "GAUC" in result.output
    report = json.loads((ws / "e.json").read_text())
    assert report["split"] == "val" and [row["model"] for row in report["ceilings"]] == [
        "oracle", "population taste", "profile taste", "records ceiling", "perfect eyes"], \
        "synthetic data: the ceilings beside the model"
    (model,) = report["models"]
    assert set(model) >= {"map", "gauc", "n_groups", "n_merchants"} and model["split"] == "val"
    val_groups = json.loads((ws / "data" / "manifest.json").read_text())["splits"]["val"]["groups"]
    assert model["n_groups"] == report["ceilings"][0]["n_groups"] == val_groups
    # every row carries its merchant-bootstrap interval and its shares of the oracle, the records ceiling and
    # perfect eyes
    for row in report["models"] + report["ceilings"]:
        low, high = row["gauc_interval"]
        assert low <= row["gauc"] <= high and "merchant_auc" not in row
        assert set(row["shares"]) == {"oracle", "records ceiling", "perfect eyes"}
        share = row["shares"]["oracle"]
        assert share["share"] == row["gauc"] / report["ceilings"][0]["gauc"]
        assert share["interval"][0] <= share["share"] <= share["interval"][1]
    assert report["ceilings"][0]["shares"]["oracle"] == {"share": 1.0, "interval": [1.0, 1.0]}
    assert report["ceilings"][4]["shares"]["perfect eyes"] == {"share": 1.0, "interval": [1.0, 1.0]}
    assert "perfect eyes: a taste learned from the training picks" in " ".join(result.output.split())
    assert "95 % intervals, merchants resampled" in result.output
    low, high = model["gauc_interval"]
    assert f"({low:.3f} –" in result.output and f"{high:.3f})" in result.output  # beside the GAUC, as printed


def test_a_second_run_into_the_same_folder_needs_resume_or_overwrite(tmp_path, market):
    ws = _workspace(tmp_path, market)
    assert runner.invoke(app, ["--workdir", str(ws), "train-rm"]).exit_code == 0
    result = runner.invoke(app, ["--workdir", str(ws), "train-rm"])
    assert result.exit_code == 1 and "already holds a run: pass --resume latest" in result.output
    result = runner.invoke(app, ["--workdir", str(ws), "train-rm", "--overwrite", "--no-plugin"])
    assert result.exit_code == 0, result.output
    assert json.loads((ws / "runs" / "rm" / "model" / "config.json").read_text())["plugin"] is False


def test_missing_inputs_name_the_command_that_makes_them(tmp_path):
    result = runner.invoke(app, ["--workdir", str(tmp_path), "train-rm"])
    assert result.exit_code == 1
    assert "no prepared data in" in result.output and "run `perfusion prepare LOGS_DIR`" in result.output
    (tmp_path / "data").mkdir()
    result = runner.invoke(app, ["--workdir", str(tmp_path), "eval", "rm"])
    assert result.exit_code == 1 and "perfusion prepare" in result.output


def test_eval_rm_without_a_trained_model_names_train_rm(tmp_path, market):
    ws = _workspace(tmp_path, market)
    result = runner.invoke(app, ["--workdir", str(ws), "eval", "rm"])
    assert result.exit_code == 1 and "run `perfusion train-rm` first" in result.output


def test_nothing_to_train_is_a_clear_error(tmp_path, market):
    ws = _workspace(tmp_path, market)
    result = runner.invoke(app, ["--workdir", str(ws), "train-rm", "--no-plugin", "--freeze-backbone"])
    assert result.exit_code == 1 and "leaves nothing to train" in result.output


def test_train_rm_on_the_tiny_siglip_then_eval_rm_reports(tmp_path, market):
    ws = _workspace(tmp_path, market)
    result = runner.invoke(app, ["--workdir", str(ws), "train-rm", "--base-model", "tiny-siglip"])
    assert result.exit_code == 0, result.output
    config = json.loads((ws / "runs" / "rm" / "model" / "config.json").read_text())
    assert config["clip_config"]["model_type"] == "siglip"
    result = runner.invoke(app, ["--workdir", str(ws), "eval", "rm", "--checkpoint", str(ws / "runs" / "rm"),
                                 "--checkpoint", "zero-shot:tiny-siglip", "--json", str(ws / "e.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((ws / "e.json").read_text())["models"]
    assert [row["model"] for row in rows] == [str(ws / "runs" / "rm"), "zero-shot:tiny-siglip"]
    assert all(0 <= row["gauc"] <= 1 and row["n_groups"] > 0 for row in rows)
    # a SigLIP is no diffusion base: train-gen says so in one line
    result = runner.invoke(app, ["--workdir", str(ws), "train-gen", "--base-model", "tiny-siglip"])
    assert result.exit_code != 0 and "reward-model base (SigLIP), not a diffusion base" in result.output
