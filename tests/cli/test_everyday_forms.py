"""DESIGN §2: the everyday forms work verbatim inside a workspace, with no paths and no recipe."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.config import TINY_RECIPE
from tests.helpers import tiny_recipe, write_recipe

runner = CliRunner()


def _run_here(folder, commands):
    cwd = os.getcwd()
    os.chdir(folder)  # the workspace is the current directory
    try:
        for args in commands:
            result = runner.invoke(app, args)
            assert result.exit_code == 0, f"perfusion {' '.join(args)}\n{result.output}"
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_the_embedded_default_works_verbatim_in_an_empty_folder(tmp_path):
    _run_here(tmp_path, [["prepare", "--synthetic"]])
    # prepare --synthetic wrote the tiny recipe as the workspace recipe: every later command reads it
    assert (tmp_path / "perfusion.toml").read_text() == TINY_RECIPE.read_text()
    write_recipe(tmp_path / "perfusion.toml", tiny_recipe())  # shrink steps through the workspace
    _run_here(tmp_path, [["train-rm"], ["train-gen", "--group-size", "5"],
                         ["generate", "--merchant", "123", "linen dress"]])  # the mission's form, verbatim
    folder = tmp_path / "outputs" / "123" / "linen-dress-seed0"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert len(list(folder.glob("*.png"))) == 2 and metadata["reward_model"]


def _logs_with_merchant_123(raw, logs):
    """The synthetic logs, with one merchant renamed to 123 (a numeric id, as marketplaces use)."""
    shutil.copytree(raw, logs)
    for name in ("merchants.jsonl", "sessions.jsonl"):
        rows = [json.loads(line) for line in (logs / name).read_text().splitlines()]
        for row in rows:
            if row["merchant_id"] == "101":
                row["merchant_id"] = 123
        (logs / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_prepare_train_rm_train_gen_generate_verbatim(tmp_path, market):
    data_dir, _ = market
    _logs_with_merchant_123(data_dir / "raw", tmp_path / "logs")
    write_recipe(tmp_path / "perfusion.toml", tiny_recipe())
    _run_here(tmp_path, [["prepare", "logs/"], ["train-rm"], ["train-gen", "--group-size", "5"],
                         ["generate", "--merchant", "123", "linen dress"]])
    assert (tmp_path / "data" / "manifest.json").is_file()
    assert (tmp_path / "runs" / "rm" / "model" / "config.json").is_file()
    assert (tmp_path / "runs" / "gen" / "model" / "config.json").is_file()
    folder = tmp_path / "outputs" / "123" / "linen-dress-seed0"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert len(list(folder.glob("*.png"))) == 2 and metadata["merchant"] == "123"
    assert metadata["reward_model"], "the workspace's reward model scores the images"
    assert all(image["reward"] is not None for image in metadata["images"])
