"""DESIGN §2: the everyday forms work verbatim inside a workspace, with no paths."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from perfusion_cli.cli.main import app

runner = CliRunner()
TINY = """
[train-rm]
base_model = "tiny"
batch_size = 4
max_steps = 2
plugin_hidden = 8
[train-rm.merchant]
embed_dim = 4
mlp_dims = [8]
user_dim = 8

[train-gen]
base_model = "tiny"
resolution = 64
batch_size = 2
max_steps = 2
grid_size = 4
grid_channels = 8
[train-gen.merchant]
embed_dim = 4
mlp_dims = [8]
user_dim = 8

[generate]
n = 2
steps = 3
"""


def _logs_with_merchant_123(raw, logs):
    """The synthetic logs, with one merchant renamed to 123 (a numeric id, as marketplaces use)."""
    shutil.copytree(raw, logs)
    for name in ("merchants.jsonl", "sessions.jsonl"):
        rows = [json.loads(line) for line in (logs / name).read_text().splitlines()]
        for row in rows:
            if row["merchant_id"] == "m0000":
                row["merchant_id"] = 123
        (logs / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_prepare_train_rm_train_gen_generate_verbatim(tmp_path, market):
    data_dir, _ = market
    _logs_with_merchant_123(data_dir / "raw", tmp_path / "logs")
    (tmp_path / "perfusion.toml").write_text(TINY)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the workspace is the current directory
    try:
        for args in (["prepare", "logs/"], ["train-rm"], ["train-gen", "--group-size", "5"],
                     ["generate", "--merchant", "123", "linen dress"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, f"perfusion {' '.join(args)}\n{result.output}"
    finally:
        os.chdir(cwd)
    assert (tmp_path / "data" / "manifest.json").is_file()
    assert (tmp_path / "runs" / "rm" / "model" / "reward.json").is_file()
    assert (tmp_path / "runs" / "gen" / "model" / "branch" / "config.json").is_file()
    folder = tmp_path / "outputs" / "123" / "linen-dress-seed0"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert len(list(folder.glob("*.png"))) == 2 and metadata["merchant"] == "123"
    assert metadata["reward_model"], "the workspace's reward model scores the images"
    assert all(image["reward"] is not None for image in metadata["images"])
