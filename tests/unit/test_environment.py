"""``environment.code_revision``: the commit a run's code came from, in real git checkouts made here."""

import importlib.util
import os
import shutil
import sys
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


def test_an_avx2_only_cpu_is_told_that_bf16_is_emulated():
    """Under ATEN_CPU_CAPABILITY=avx2 torch runs as on a CPU without AVX-512 (as CI's AMD machine had): no bf16
    instructions, whatever this CPU's flags say; the note names the way out. The GPU path never gets it."""
    import torch

    from perfusion_cli.preflight import precision_note

    code = ("from perfusion_cli.environment import cpu_runs_bf16; from perfusion_cli.preflight import precision_note;"
            "import torch; print(cpu_runs_bf16(), precision_note('bf16', torch.device('cpu')))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    printed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert printed.startswith("False this CPU has no bf16 instructions") and "--mixed-precision no" in printed
    assert precision_note("no", torch.device("cpu")) is None
    assert precision_note("bf16", torch.device("cuda")) is None
    if "avx512_bf16" in environment.cpu_flags() and torch.backends.cpu.get_cpu_capability() != "AVX2":
        assert environment.cpu_runs_bf16() and precision_note("bf16", torch.device("cpu")) is None
