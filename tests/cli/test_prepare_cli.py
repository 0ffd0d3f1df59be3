"""``perfusion prepare`` through the CLI: workspace defaults, summary, one-line errors."""

from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.data.manifest import load_manifest

runner = CliRunner()


def invoke(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result, result.output


def test_prepare_synthetic_writes_the_workspace_data_folder(tmp_path, monkeypatch):
    args = ["--workdir", str(tmp_path), "prepare", "--synthetic", "--merchants", "8",
            "--sessions-per-merchant", "12"]
    monkeypatch.setattr("sys.argv", ["/venv/bin/perfusion", *args])  # as the console script sees it
    result, out = invoke(*args)
    assert result.exit_code == 0, out
    assert "balanced" in out and "prepared groups" in out
    manifest = load_manifest(tmp_path / "data")
    assert manifest.raw["created_by"]["command"] == "perfusion " + " ".join(args)
    assert (tmp_path / "data" / "raw" / "truth.json").is_file()


def test_perfusion_home_moves_the_workspace_and_logs_dir_is_positional(tmp_path, market):
    data_dir, _ = market
    result, out = invoke("prepare", data_dir / "raw", env={"PERFUSION_HOME": str(tmp_path)})
    assert result.exit_code == 0, out
    assert (tmp_path / "data" / "manifest.json").is_file()


def test_recipe_values_apply_and_flags_override_them(tmp_path, market):
    data_dir, _ = market
    (tmp_path / "perfusion.toml").write_text("[prepare]\nmin_records = 100\n")
    result, out = invoke("--workdir", tmp_path, "prepare", data_dir / "raw")
    assert result.exit_code == 1
    assert "error: no merchant has --min-records 100 valid groups or more" in out
    result, out = invoke("--workdir", tmp_path, "prepare", data_dir / "raw", "--min-records", 5)
    assert result.exit_code == 0, out


def test_bad_recipe_key_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "r.toml").write_text("[prepare]\nmin_recods = 3\n")
    result, out = invoke("--workdir", tmp_path, "prepare", "--synthetic", "--recipe", tmp_path / "r.toml")
    assert result.exit_code == 1
    assert "unknown key 'min_recods'" in out and "Traceback" not in out


def test_errors_are_one_red_line_and_exit_1(tmp_path):
    result, out = invoke("--workdir", tmp_path, "prepare", tmp_path / "missing")
    assert result.exit_code == 1 and out.strip().startswith("error: logs folder not found")
    result, out = invoke("--workdir", tmp_path, "prepare")
    assert result.exit_code == 1 and "give either LOGS_DIR or --synthetic" in out
