"""The synthetic marketplace is imported only where synthetic data is asked for: a workspace of real data
(here the tiny workspace with its manifest saying so) never loads it, and a truth.json of the user's beside
real data is a file like any other, not a crash (prepare reads one to tell it from the marketplace's)."""

import json
import shutil
import subprocess
import sys

SCRIPT = ("import sys\nfrom perfusion_cli.cli.main import main\nsys.argv = ['perfusion', *sys.argv[1:]]\n"
          "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
          "print('MARKETPLACE:', sorted(m for m in sys.modules if m.startswith('perfusion_cli.marketplace')), "
          "'CODE:', code)\n")
FOREIGN_TRUTH = '{"merchants": [1, 2, 3], "note": "our own truth.json: ground truth of a labelling job"}'


def _perfusion(*args):
    result = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    return " ".join((result.stdout + result.stderr).split())


def _real_workspace(trained_workspace, root):
    """The trained tiny workspace, its data marked real, with a foreign truth.json beside the shards."""
    shutil.copytree(trained_workspace / "data", root / "data")
    (root / "runs").symlink_to(trained_workspace / "runs")
    shutil.copy(trained_workspace / "perfusion.toml", root / "perfusion.toml")
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    manifest["synthetic"] = False
    (root / "data" / "manifest.json").write_text(json.dumps(manifest))
    (root / "data" / "truth.json").write_text(FOREIGN_TRUTH)
    return root


def test_generate_on_real_data_imports_no_marketplace_module(trained_workspace, tmp_path):
    real = _real_workspace(trained_workspace, tmp_path / "real")
    text = _perfusion("--workdir", real, "generate", "--merchant", "102", "linen dress", "--n", "1", "--steps", "2",
                      "--out", tmp_path / "out")
    assert "MARKETPLACE: [] CODE: 0" in text and "Traceback" not in text, text
    metadata = json.loads(next((tmp_path / "out").rglob("metadata.json")).read_text())
    assert metadata["images"][0]["oracle"] is None  # no hidden taste on real data
    # the same command on the synthetic workspace scores the oracle, so it does load the marketplace
    text = _perfusion("--workdir", trained_workspace, "generate", "--merchant", "102", "linen dress", "--n", "1",
                      "--steps", "2", "--out", tmp_path / "synthetic")
    assert "perfusion_cli.marketplace.synthetic" in text and "CODE: 0" in text, text


def test_prepare_and_eval_rm_on_real_logs_with_a_foreign_truth_json(market, trained_workspace, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(market[0] / "raw", logs)  # the marketplace's raw logs without their truth.json: real logs
    (logs / "truth.json").unlink()
    text = _perfusion("prepare", logs, "--out", tmp_path / "data", "--min-records", "1")
    assert "MARKETPLACE: [] CODE: 0" in text, text
    (logs / "truth.json").write_text(FOREIGN_TRUTH)  # the user's own truth.json: read to tell, never copied
    text = _perfusion("prepare", logs, "--out", tmp_path / "data2", "--min-records", "1")
    assert "CODE: 0" in text and "Traceback" not in text, text
    assert json.loads((tmp_path / "data2" / "manifest.json").read_text())["synthetic"] is False
    assert not (tmp_path / "data2" / "truth.json").exists()
    real = _real_workspace(trained_workspace, tmp_path / "real")
    text = _perfusion("--workdir", real, "eval", "rm", "--checkpoint", trained_workspace / "runs" / "rm")
    assert "MARKETPLACE: [] CODE: 0" in text and "Traceback" not in text and "GAUC" in text, text
