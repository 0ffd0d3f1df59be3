"""``perfusion generate`` errors through the CLI (the happy path is in tests/smoke)."""

from typer.testing import CliRunner

from perfusion_cli.cli.main import app

runner = CliRunner()


def test_generate_without_a_trained_generator_names_train_gen(tmp_path, market):
    import shutil

    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    result = runner.invoke(app, ["--workdir", str(tmp_path), "generate", "--merchant", "123", "linen dress"])
    assert result.exit_code == 1
    assert "no trained generator model in" in result.output and "run `perfusion train-gen` first" in result.output


def test_generate_without_data_names_prepare(tmp_path):
    result = runner.invoke(app, ["--workdir", str(tmp_path), "generate", "--merchant", "123", "linen dress"])
    assert result.exit_code == 1 and "perfusion prepare" in result.output
