"""The table scripts resume only on what the code running now made (scripts/tables.py): a run from another
commit, or from uncommitted code, is trained again, and a result older than its run is measured again."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
HEAD = "0123456789abcdef" * 2 + "01234567"


@pytest.fixture
def tables(monkeypatch):
    spec = importlib.util.spec_from_file_location("tables_under_test", SCRIPTS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "code_revision", lambda: HEAD)
    return module


def _run(path: Path, revision: str | None, mtime: float) -> Path:
    path.mkdir(parents=True)
    summary = {"seconds": 1.0} if revision is None else {"seconds": 1.0, "machine": {"perfusion code": revision}}
    (path / "run.json").write_text(json.dumps(summary))
    os.utime(path / "run.json", (mtime, mtime))
    return path


def test_only_a_run_from_the_same_clean_commit_is_reused(tables, tmp_path):
    assert not tables.trained_by_this_code(tmp_path / "missing")
    assert not tables.trained_by_this_code(_run(tmp_path / "before-records", None, 1000))
    assert not tables.trained_by_this_code(_run(tmp_path / "other", "f" * 40, 1000))
    assert not tables.trained_by_this_code(_run(tmp_path / "dirty", HEAD + "+dirty", 1000))
    assert tables.trained_by_this_code(_run(tmp_path / "same", HEAD, 1000))


def test_a_result_is_reused_only_when_written_after_every_run_it_measured(tables, tmp_path):
    generator, reward = _run(tmp_path / "gen", HEAD, 1000), _run(tmp_path / "rm", HEAD, 2000)
    result = tmp_path / "eval.json"
    assert not tables.measured_by_this_code(result, generator, reward)  # not measured yet
    result.write_text("{}")
    os.utime(result, (1500, 1500))  # after the generator, before the reward model was retrained
    assert tables.measured_by_this_code(result, generator)
    assert not tables.measured_by_this_code(result, generator, reward)
    os.utime(result, (2500, 2500))
    assert tables.measured_by_this_code(result, generator, reward)
    stale = _run(tmp_path / "stale", "f" * 40, 10)
    assert not tables.measured_by_this_code(result, generator, stale)
