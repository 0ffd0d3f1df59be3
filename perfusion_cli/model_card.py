"""Model cards: a run's ``README.md``, in the Hugging Face hub's convention (YAML front matter, then prose).

A card says what made the weights (base model, data and its fingerprint, the recipe's settings, the
code) and what they measured: the training's last logged values, and the ``perfusion eval`` numbers
once an evaluation has run (``record_evaluation`` keeps them in ``<run>/evaluation.json`` and renders
the card again). ``train-rm`` and ``train-gen`` write the card when a run ends; ``perfusion export``
writes its own, built from the same sections.
"""

from __future__ import annotations

import json
from pathlib import Path

from perfusion_cli.io import atomic_write_json, atomic_write_text, read_json
from perfusion_cli.runs import RunDir, run_of

CARD = "README.md"
EVALUATION = "evaluation.json"

# the settings a reader asks about first (all of them are in run.json)
SETTINGS = ("branch", "resolution", "group_size", "beta", "lr", "batch_size", "grad_accum", "max_steps",
            "mixed_precision", "plugin", "seed")
TITLES = {"reward": "PerFusionRM: a merchant-personalized reward model",
          "generator": "PerFusion: a merchant-personalized generator"}
TAGS = {"reward": ["perfusion", "reward-model", "personalization"],
        "generator": ["perfusion", "text-to-image", "personalization", "diffusers"]}


def front_matter(kind: str, base_model: str, extra_tags: tuple[str, ...] = ()) -> str:
    tags = "\n".join(f"- {tag}" for tag in [*TAGS[kind], *extra_tags])
    library = "diffusers" if kind == "generator" else "transformers"
    return f"---\nlibrary_name: {library}\nbase_model: {json.dumps(base_model)}\ntags:\n{tags}\n---\n"


def provenance(summary: dict) -> str:
    """## What made these weights: base, data, command, steps, settings, code."""
    config, data, machine = summary.get("config", {}), summary.get("data", {}), summary.get("machine", {})
    rows = [("base model", f"`{summary.get('base_model', config.get('base_model', '?'))}`"),
            ("data", f"`{data.get('path', '?')}` (fingerprint `{data.get('fingerprint', '?')}`)"),
            ("command", f"`{summary['command']}`" if summary.get("command") else "the Python API"),
            ("steps", f"{summary.get('steps', '?')} ({summary.get('processes', 1)} process(es), "
                      f"{summary.get('seconds', '?')} s)"),
            ("settings", ", ".join(f"{key} {config[key]}" for key in SETTINGS if key in config)),
            ("code", f"perfusion {summary.get('version', '?')}, commit `{machine.get('perfusion code') or 'unknown'}`")]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## What made these weights\n\n| | |\n|---|---|\n{table}\n\nEvery setting is in `run.json`.\n"


def measurements(summary: dict, evaluation: dict) -> str:
    """## What they measured: the training's last values, then each recorded ``perfusion eval``."""
    final = {k: v for k, v in summary.get("final", {}).items() if isinstance(v, (int, float)) and k != "step"}
    lines = ["## What they measured", "",
             "At the last training step: " + (", ".join(f"{k} {_number(v)}" for k, v in sorted(final.items()))
                                              or "nothing logged") + "."]
    for name, entry in sorted(evaluation.items()):
        lines += ["", f"`{entry['command']}`:", "", *_result_lines(entry["result"])]
    if not evaluation:
        command = "perfusion eval rm" if summary.get("kind") == "reward" else "perfusion eval gen"
        lines += ["", f"Not evaluated on held-out data yet: `{command}` adds its numbers here."]
    return "\n".join(lines) + "\n"


def _result_lines(result: dict) -> list[str]:
    if "models" in result:  # eval gen: base vs personalized on held-out pairs, same seeds
        metrics = list(result.get("win_rate", {}))
        rows = [f"| {model} | " + " | ".join(_number(values.get(m)) for m in metrics) + " |"
                for model, values in result["models"].items()]
        rows.append("| win rate | " + " | ".join(_number(result["win_rate"][m]) for m in metrics) + " |")
        pairs = f"{result.get('pairs', '?')} held-out pairs ({result.get('split', '?')})"
        head = f"| {pairs} | " + " | ".join(metrics) + " |"
        return [head, "|---" * (len(metrics) + 1) + "|", *rows]
    return [f"- split {result.get('split', '?')}: MAP {_number(result.get('map'))}, GAUC {_number(result.get('gauc'))} "
            f"({result.get('n_groups', '?')} groups, {result.get('n_merchants', '?')} merchants)"]


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def render(run: RunDir) -> str:
    summary = run.summary()
    kind = summary.get("kind", "generator")
    evaluation = evaluations(run)
    return "\n".join([front_matter(kind, str(summary.get("base_model", "?"))), f"# {TITLES[kind]}\n",
                      provenance(summary), measurements(summary, evaluation), _usage(kind, run.root)])


def _usage(kind: str, root: Path) -> str:
    if kind == "reward":
        return (f"## Use\n\n`perfusion eval rm --checkpoint {root}`, `perfusion generate --reward {root} --rerank`, "
                f"or in Python `perfusion_cli.api.load_reward({str(root)!r})` (README: Python API).\n")
    return (f"## Use\n\n`perfusion generate --model {root} --merchant ID \"PROMPT\"`, in Python "
            f"`perfusion_cli.api.load_generator({str(root)!r})`, or `perfusion export --model {root}` for a stock "
            f"diffusers pipeline (adapter branch).\n")


def write_card(run_dir: str | Path, new_weights: bool = False) -> Path:
    """Render ``<run>/README.md``; ``new_weights``: training just wrote the model, so earlier evaluations (of the
    weights a resumed run had before) no longer describe it and are dropped."""
    run = RunDir(Path(run_dir))
    if new_weights:
        (run.root / EVALUATION).unlink(missing_ok=True)
    path = run.root / CARD
    atomic_write_text(path, render(run))
    return path


def evaluations(run: RunDir) -> dict:
    try:
        recorded = read_json(run.root / EVALUATION)
    except (OSError, ValueError):  # none yet, or damaged: the card goes without eval numbers
        return {}
    return recorded if isinstance(recorded, dict) else {}


def record_evaluation(source: str | Path, what: str, split: str, data_dir: str | Path, result: dict) -> None:
    """Keep an evaluation's result (``what``: ``eval rm`` or ``eval gen``) with the run it measured and render the
    run's card again; a source that is not a finished run (``zero-shot:…``, a bare model folder) is left alone."""
    run = run_of(source)
    if not run.finished():
        return
    recorded = evaluations(run)
    command = f"perfusion {what} --split {split} --data {Path(data_dir).resolve()}"
    recorded[f"{what} {split}"] = {"command": command, "result": result}
    atomic_write_json(run.root / EVALUATION, recorded)
    write_card(run.root)
