"""The loop closes: picks recorded by ``serve`` → ``perfusion prepare logs/ --vocab data`` (shards with the
accounting identity) → ``perfusion train-rm --init-from runs/rm`` continues the trained reward model on them."""

import httpx
import torch
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.models.reward import load_reward_model
from tests.helpers import read_jsonl
from tests.serve.conftest import Server

runner = CliRunner()


def _invoke(workspace, *args):
    result = runner.invoke(app, ["--workdir", str(workspace), *map(str, args)])
    return result, " ".join(result.output.split())


def _session(server, merchant, number, features=None):
    answer = httpx.post(server.url("/v1/generate"), json={"merchant_id": merchant, "prompt": "linen dress", "n": 3,
                                                          "seed": number, **({"features": features} if features else {})},
                        timeout=120).json()
    ids = [c["id"] for c in answer["candidates"]]
    response = httpx.post(server.url("/v1/sessions"), json={
        "session_id": f"{merchant}-{number}", "merchant_id": merchant, "prompt": "linen dress", "candidates": ids,
        "selected": ids[:1]})
    assert response.status_code == 200, response.text


def test_recorded_picks_prepare_and_continue_the_reward_model(serve_workspace, tmp_path):
    workspace = serve_workspace
    logs = tmp_path / "logs"
    with Server(workspace, logs) as server:
        for merchant in ("102", "103", "105"):
            for number in range(4):
                _session(server, merchant, number)
        _session(server, "newshop", 0, features={"category": "dress", "style": "bohemian"})
    assert len(read_jsonl(logs / "sessions.jsonl")) == 13

    result, text = _invoke(workspace, "prepare", logs, "--vocab", workspace / "data", "--out", tmp_path / "data2",
                           "--min-records", 3)
    assert result.exit_code == 0, text
    assert "input rows 13 = in shards 12 + quarantined 0 + held out 1 (balanced)" in text
    manifest = load_manifest(tmp_path / "data2")
    assert manifest.vocab == load_manifest(workspace / "data").vocab
    assert sum(split["groups"] for split in manifest.raw["splits"].values()) == 12

    # without --vocab the new logs get their own vocabulary, which the trained model cannot read
    assert _invoke(workspace, "prepare", logs, "--out", tmp_path / "own", "--min-records", 3)[0].exit_code == 0
    result, text = _invoke(workspace, "train-rm", tmp_path / "own", "--init-from", workspace / "runs" / "rm",
                           "--out", tmp_path / "no")
    assert result.exit_code == 1 and "different merchant feature vocabulary" in text, text

    result, text = _invoke(workspace, "train-rm", tmp_path / "data2", "--init-from", workspace / "runs" / "rm",
                           "--out", tmp_path / "rm2", "--max-steps", 1, "--lr", 1e-6, "--backbone-lr", 1e-7)
    assert result.exit_code == 0, text
    before = load_reward_model(workspace / "runs" / "rm").module.state_dict()
    after = load_reward_model(tmp_path / "rm2").module.state_dict()
    fresh = [name for name, tensor in before.items() if "plugin" in name and tensor.abs().sum() > 0]
    assert fresh, "the trained model's plug-ins should not be at their zero initialization"
    # one tiny step from the trained weights: still the trained model, not a fresh one
    assert all(torch.allclose(before[name], after[name], atol=1e-3) for name in fresh)
