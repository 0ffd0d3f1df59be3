"""The package's shape: a fast CLI that imports no heavy library, and imports that never run back up."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "perfusion_cli"
HEAVY = ("torch", "diffusers", "transformers", "webdataset", "accelerate", "numpy", "PIL")

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _documented_layers() -> list[set[str]]:
    """docs/architecture.md's layer table (``| 0. foundations | `errors`, `config`, … |``), top layer first: the
    test reads the page, so the page and the rule cannot disagree."""
    layers = []
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\d+)\. [^|]+\| (.+) \|$", line)
        if match:
            assert int(match.group(1)) == len(layers), f"layer numbers out of order: {line}"
            layers.append({name.strip("/") for name in re.findall(r"`([^`]+)`", match.group(2))
                           if re.fullmatch(r"[a-z_]+/?", name)})
    return layers


LAYERS = _documented_layers()
LAYERS[0].add("__init__")  # the package itself (its version)


def test_every_module_of_the_package_is_in_one_documented_layer():
    modules = {path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
               for path in PACKAGE.rglob("*.py")}
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed)), "a module in two layers"
    assert modules == set(placed), (modules - set(placed), set(placed) - modules)


def _layer(module: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if module in names)


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perfusion_cli"):
            yield node.module.split(".")[1] if "." in node.module else "__init__", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("perfusion_cli."):
                    yield alias.name.split(".")[1], node.lineno


def test_no_import_runs_back_up_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for imported, line in _imports(path):
            if _layer(imported) > _layer(own):
                wrong.append(f"{relative}:{line} imports perfusion_cli.{imported}")
    assert not wrong, "\n".join(wrong)


def _run(*args: str) -> subprocess.CompletedProcess:
    script = ("import sys\nfrom perfusion_cli.cli.main import main\nsys.argv = ['perfusion', *sys.argv[1:]]\n"
              "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
              f"print('HEAVY:', sorted(m for m in {HEAVY!r} if m in sys.modules), 'CODE:', code)\n")
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["train-gen", "--help"], 0), (["env"], 0),
                                        (["train-rm", "--no-such-flag"], 2), (["prepare"], 1)])
def test_help_usage_errors_and_env_import_no_heavy_library(args, code, tmp_path):
    result = _run("--workdir", str(tmp_path), *args)
    assert f"HEAVY: [] CODE: {code}" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_report_to_a_tracker_that_is_not_installed_names_the_extra(tmp_path, market):
    import importlib.util

    from perfusion_cli.errors import ConfigError
    from perfusion_cli.training.rm import train_reward_model
    from tests.helpers import tiny_config

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=r"--report-to wandb needs the wandb package: pip install 'perfusion\[wandb\]'"):
        train_reward_model(tiny_config("train-rm", report_to="wandb"), market[0], tmp_path / "rm")
    assert not (tmp_path / "rm").exists(), "nothing is written before the run can start"


def test_tensorboard_receives_every_logged_curve(tmp_path, market):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from perfusion_cli.training.gen import train_generator
    from tests.helpers import tiny_config

    train_generator(tiny_config("train-gen", max_steps=3, report_to="tensorboard"), market[0], tmp_path / "gen")
    events = sorted((tmp_path / "gen" / "trackers").rglob("events.out.tfevents.*"))
    scalars = {}
    for event in events:
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    for curve in ("loss", "lr", "grad_norm", "reward_margin", "pair_accuracy", "err_gap", "err_ratio"):
        assert [step for step, _ in scalars[f"train/{curve}"]] == [1, 2, 3], curve
    logged = [__import__("json").loads(line) for line in (tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([row["loss"] for row in logged], rel=1e-6)


def test_help_texts_keep_the_extras_they_name():
    """Rich reads ``[remote]`` in a help text as markup and drops it: "pip install 'perfusion'" helps nobody."""
    import re

    from typer.testing import CliRunner

    from perfusion_cli.cli.main import app

    named = set()
    for command in ("prepare", "serve", "train-rm", "train-gen", "eval", "generate", "bench"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert "'perfusion'" not in text, f"{command} --help lost an extra's name: {text}"
        named |= set(re.findall(r"perfusion\[(\w+)\]", text))
    assert {"remote", "distributed", "serve"} <= named


def _help(args, cwd):
    from typer.testing import CliRunner

    from perfusion_cli.cli.main import app

    result = CliRunner().invoke(app, ["--workdir", str(cwd), *args, "--help"],
                                env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    rows = [line.strip("│ ") for line in result.output.splitlines()]
    return {row.split()[0]: " ".join(row.split()) for row in rows if row.startswith("--")}


COMMANDS = [["prepare"], ["train-rm"], ["train-gen"], ["generate"], ["eval", "rm"], ["eval", "gen"], ["bench"],
            ["serve"], ["pretrain-base"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_switches_as_switches_and_every_option_has_a_help_text(command, tmp_path):
    for line in _help(command, tmp_path).values():
        assert "<bool>" not in line, line
    from typer.main import get_command

    from perfusion_cli.cli.main import app

    group = get_command(app)
    leaf = group.commands[command[0]]
    for name in command[1:]:
        leaf = leaf.commands[name]
    missing = [p.opts[0] for p in leaf.params if p.param_type_name == "option" and not p.help]
    assert not missing, f"{' '.join(command)}: options without help: {missing}"


def test_help_shows_the_defaults_the_recipe_sets(tmp_path):
    shown = _help(["train-gen"], tmp_path)
    assert "(default: 1000)" in shown["--max-steps"] and "(default: 5000.0)" in shown["--beta"]
    (tmp_path / "perfusion.toml").write_text("[train-gen]\nmax_steps = 400\nbeta = 500.0\n")
    shown = _help(["train-gen"], tmp_path)
    assert "(default from recipe: 400)" in shown["--max-steps"] and "(default from recipe: 500.0)" in shown["--beta"]
    assert "(default: off)" in _help(["generate"], tmp_path / "elsewhere")["--rerank"]
