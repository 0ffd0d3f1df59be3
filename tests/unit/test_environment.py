"""``environment.code_revision``: the commit a run's code came from, in real git checkouts made here."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import perfusion_cli.environment as environment


def _load_copy(root: Path):
    """environment.py copied to ROOT/pkg/ and imported from there: its checkout is ROOT."""
    (root / "pkg").mkdir(parents=True)
    shutil.copy(environment.__file__, root / "pkg" / "environment.py")
    spec = importlib.util.spec_from_file_location("environment_copy", root / "pkg" / "environment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_clean_checkout_gives_its_commit_and_a_changed_tracked_file_marks_it_dirty(tmp_path):
    module = _load_copy(tmp_path)
    assert module.code_revision() == "not a git checkout"
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "pkg")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert module.code_revision() == head and len(head) == 40
    (tmp_path / "notes.txt").write_text("untracked files are not the code\n")
    assert module.code_revision() == head
    with open(tmp_path / "pkg" / "environment.py", "a") as handle:
        handle.write("\n# changed\n")
    assert module.code_revision() == head + "+dirty"


def test_this_checkout_and_describe_name_the_same_revision():
    revision = environment.code_revision()
    assert environment.describe()["perfusion code"] == revision
    root = Path(environment.__file__).resolve().parents[1]
    if (root / ".git").exists():  # CI runs a clean clone
        assert revision.split("+")[0] == _git(root, "rev-parse", "HEAD")
