"""``perfusion prepare --exclude-token ID``: the sessions ``serve`` recorded under a token are held out with
reason ``excluded_token`` and counted; every other row lands as before, and the identity balances."""

import json

from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.data.manifest import load_manifest
from tests.helpers import many_sessions, read_jsonl, write_logs

runner = CliRunner()


def logs_with_tokens(root):
    """Two merchants, 12 sessions each: m1's recorded by token aaa (even ones) and the operator (odd), m2's
    by token bbb, plus one of m1's that is invalid (no candidates) though recorded by aaa."""
    sessions = many_sessions("m1", 12) + many_sessions("m2", 12)
    for row in sessions:
        index = int(row["session_id"].split("-")[1])
        row["recorded_by"] = ("aaa" if index % 2 == 0 else "operator") if row["merchant_id"] == "m1" else "bbb"
    bad = {"session_id": "m1-bad", "merchant_id": "m1", "prompt": "x", "timestamp": 99.0, "candidates": [],
           "recorded_by": "aaa"}
    return write_logs(root, [{"merchant_id": "m1"}, {"merchant_id": "m2"}], sessions + [bad])


def test_prepare_holds_out_the_sessions_of_an_excluded_token(tmp_path):
    logs = logs_with_tokens(tmp_path / "logs")
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", str(logs), "--min-records", "1",
                                 "--exclude-token", "aaa", "--exclude-token", "nobody"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "data").raw
    accounting = manifest["accounting"]
    assert accounting["session_rows"] == 25 and accounting["balanced"] is True
    assert accounting["excluded_by_token"] == 6 and manifest["held_out"]["reasons"]["excluded_token"] == 6
    assert accounting["quarantined"] == 1  # the invalid row keeps its own reason, whoever recorded it
    held = [h for h in read_jsonl(tmp_path / "data" / "held_out.jsonl") if h["reason"] == "excluded_token"]
    assert sorted(h["session_id"] for h in held) == sorted(f"m1-{i}" for i in range(0, 12, 2))
    assert accounting["in_shards"] == 24 - 6 - sum(
        n for reason, n in manifest["held_out"]["reasons"].items() if reason != "excluded_token")
    assert "held out: excluded_token" in result.output and "6" in result.output


def test_without_the_flag_every_session_is_kept_whoever_recorded_it(tmp_path):
    logs = logs_with_tokens(tmp_path / "logs")
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", str(logs), "--min-records", "1"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "data").raw
    assert manifest["accounting"]["excluded_by_token"] == 0 and "excluded_token" not in manifest["held_out"]["reasons"]
    assert json.loads((logs / "sessions.jsonl").read_text().splitlines()[0])["recorded_by"] == "aaa"  # input untouched


def test_exclude_token_applies_to_logs_only(tmp_path):
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", "--synthetic", "--exclude-token", "aaa"])
    assert result.exit_code == 1
    assert "--vocab, --engine and --exclude-token apply to logs you prepare, not to --synthetic" in " ".join(
        result.output.split())
