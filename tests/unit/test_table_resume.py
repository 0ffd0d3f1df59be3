"""The table scripts resume only on what the code here made (scripts/tables.py), in real git checkouts made
here: a run whose package or recipes differ from the working tree's is trained again, a docs-only commit
leaves runs current, and a result older than one of its runs is measured again."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)
    return _git(root, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """(tables module reading ROOT, ROOT): a git checkout holding a package, a recipe and docs."""
    root = tmp_path / "repo"
    for path, text in {"perfusion_cli/model.py": "WIDTH = 8\n", "recipes/tiny.toml": "steps = 10\n",
                       "docs/notes.md": "numbers\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    _git(root, "init", "-q")
    spec = importlib.util.spec_from_file_location("tables_under_test", SCRIPTS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", root)
    return module, root


def _run(path: Path, revision: str | None, mtime: float = 1000) -> Path:
    path.mkdir(parents=True)
    summary = {"seconds": 1.0} if revision is None else {"seconds": 1.0, "machine": {"perfusion code": revision}}
    (path / "run.json").write_text(json.dumps(summary))
    os.utime(path / "run.json", (mtime, mtime))
    return path


def test_a_run_is_reused_while_the_package_and_recipes_are_the_ones_that_trained_it(checkout, tmp_path):
    tables, root = checkout
    first = _commit(root, "one")
    run = _run(tmp_path / "run", first)
    assert tables.trained_by_this_code(run)
    assert not tables.trained_by_this_code(tmp_path / "missing")
    assert not tables.trained_by_this_code(_run(tmp_path / "before-records", None))
    assert not tables.trained_by_this_code(_run(tmp_path / "dirty", first + "+dirty"))
    assert not tables.trained_by_this_code(_run(tmp_path / "unknown", "f" * 40))
    (root / "docs" / "notes.md").write_text("new numbers\n")
    _commit(root, "docs only")
    assert tables.trained_by_this_code(run)
    (root / "recipes" / "tiny.toml").write_text("steps = 20\n")  # uncommitted
    assert not tables.trained_by_this_code(run)
    second = _commit(root, "recipe")
    assert not tables.trained_by_this_code(run)
    assert tables.trained_by_this_code(_run(tmp_path / "second", second))
    (root / "perfusion_cli" / "new_head.py").write_text("DEPTH = 2\n")  # untracked, but code
    assert not tables.trained_by_this_code(tmp_path / "second")


def test_a_result_is_reused_only_when_written_after_every_run_it_measured(checkout, tmp_path):
    tables, root = checkout
    head = _commit(root, "one")
    generator, reward = _run(tmp_path / "gen", head, 1000), _run(tmp_path / "rm", head, 2000)
    result = tmp_path / "eval.json"
    assert not tables.measured_by_this_code(result, generator, reward)  # not measured yet
    result.write_text("{}")
    os.utime(result, (1500, 1500))  # after the generator, before the reward model was retrained
    assert tables.measured_by_this_code(result, generator)
    assert not tables.measured_by_this_code(result, generator, reward)
    os.utime(result, (2500, 2500))
    assert tables.measured_by_this_code(result, generator, reward)
    assert not tables.measured_by_this_code(result, generator, _run(tmp_path / "stale", "f" * 40, 10))
