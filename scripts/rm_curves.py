"""PerFusionRM learning curves on harder draws of the marketplace (docs/benchmarks.md).

    .venv/bin/python scripts/rm_curves.py [--workdir /tmp/curves] [--seed 3] [--recipe tiny-cpu]
        [--merchants 160] [--sessions 5 10 20 40] [--tastes colour mixed subtle] [--taste-sessions 12]
        [--train-flag=--max-steps=800]

For every draw (a taste mix and a number of sessions per merchant) it prepares a fresh synthetic marketplace,
trains PerFusionRM and the same CLIP without plug-ins (`--no-plugin`) with the recipe, and evaluates both on
the test split (known merchants, later sessions) and the cold-start split (merchants never trained on), beside
the oracle's own GAUC (the ceiling the pick noise allows), the records ceiling's (the merchant's profile and
training picks with everything else known: the best a model can do with its data), perfect eyes' (a taste
learned from the same picks over the oracle's own image attributes), the profile taste's (the merchant's
profile alone: the cold-start ceiling) and the population taste's; each share with its 95 % interval
(merchants resampled, paired). Prints two markdown tables: against sessions per merchant (taste "mixed"), and
against the taste mix (at --taste-sessions sessions). Models an earlier call trained are only evaluated again
(--fresh retrains them), and only when they were trained by the code running now (their run.json's clean git
commit holds this working tree's perfusion_cli/ and recipes/; any other is retrained). Raw results stay as
JSON in the workspace.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import run, trained_by_this_code


def draw(root: Path, taste: str, sessions: int, merchants: int, seed: str, recipe: str,
         train_flags: list[str], fresh: bool) -> dict:
    """One draw: prepare, train both models, evaluate; returns {split: {model: gauc}}."""
    workdir = root / f"{taste}-{sessions}"
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "data" / "manifest.json").is_file():
        # merchants below 10 records are held out by default; the 5-session draw lowers the floor
        floor = ["--min-records", str(min(10, max(3, sessions - 2)))]
        run(workdir, "prepare", "--synthetic", "--taste", taste, "--sessions-per-merchant", str(sessions),
            "--merchants", str(merchants), "--seed", seed, "--recipe", recipe, *floor)
    result = {}
    for name, flags in (("perfusionrm", []), ("no_plugin", ["--no-plugin"])):
        if trained_by_this_code(workdir / "runs" / name) and not fresh:
            continue  # trained by an earlier call of this code: only evaluate again
        run(workdir, "train-rm", "--recipe", recipe, "--out", f"runs/{name}", "--overwrite", *flags, *train_flags)
    for split in ("test", "cold_start"):
        report = workdir / f"eval-{split}.json"
        run(workdir, "eval", "rm", "--recipe", recipe, "--split", split, "--checkpoint", "runs/perfusionrm",
            "--checkpoint", "runs/no_plugin", "--json", str(report))
        report = json.loads(report.read_text())
        rows = report["models"] + report["ceilings"]
        result[split] = {"perfusionrm": rows[0]["gauc"], "no_plugin": rows[1]["gauc"], "oracle": rows[2]["gauc"],
                         "population": rows[3]["gauc"], "profile": rows[4]["gauc"], "records": rows[5]["gauc"],
                         "eyes": rows[6]["gauc"], "groups": rows[0]["n_groups"],
                         # shares with their paired 95 % intervals (eval rm resamples merchants alike for every row)
                         "rm_of_oracle": rows[0]["shares"]["oracle"],
                         "rm_of_records": rows[0]["shares"]["records ceiling"],
                         "rm_of_eyes": rows[0]["shares"]["perfect eyes"],
                         "records_of_oracle": rows[5]["shares"]["oracle"]}
    return result


def share(value: dict) -> str:
    """'88% (82–94%)': a share and its 95 % interval, from eval rm's JSON."""
    low, high = value["interval"]
    return f"{value['share']:.0%} ({low:.0%}–{high:.0%})".replace("%–", "–")


def table(title: str, column: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}\n")
    print(f"| {column} | PerFusionRM | no plug-in | oracle | records ceiling | perfect eyes | profile taste | "
          f"population taste | PerFusionRM / oracle | / records ceiling | / perfect eyes | records ceiling / oracle | "
          f"cold start: PerFusionRM | no plug-in | oracle | perfect eyes | profile taste |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, result in rows:
        test, cold = result["test"], result["cold_start"]
        print(f"| {label} | {test['perfusionrm']:.3f} | {test['no_plugin']:.3f} | {test['oracle']:.3f} | "
              f"{test['records']:.3f} | {test['eyes']:.3f} | {test['profile']:.3f} | {test['population']:.3f} | "
              f"{share(test['rm_of_oracle'])} | {share(test['rm_of_records'])} | {share(test['rm_of_eyes'])} | "
              f"{share(test['records_of_oracle'])} | {cold['perfusionrm']:.3f} | {cold['no_plugin']:.3f} | "
              f"{cold['oracle']:.3f} | {cold['eyes']:.3f} | {cold['profile']:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/curves"))
    parser.add_argument("--seed", default="3")
    parser.add_argument("--recipe", default="tiny-cpu")
    parser.add_argument("--merchants", type=int, default=160, help="Merchants per draw (test groups grow with them)")
    parser.add_argument("--sessions", type=int, nargs="*", default=[5, 10, 20, 40])
    parser.add_argument("--tastes", nargs="*", default=["colour", "mixed", "subtle"])
    parser.add_argument("--taste-sessions", type=int, default=12)
    parser.add_argument("--fresh", action="store_true", help="retrain models an earlier call trained")
    parser.add_argument("--train-flag", action="append", default=[], help="Extra train-rm flag, e.g. --max-steps=800")
    args = parser.parse_args()
    root = args.workdir.resolve()
    flags = [part for flag in args.train_flag for part in flag.split("=", 1)]
    settings = (args.merchants, args.seed, args.recipe, flags, args.fresh)
    by_sessions = [(str(n), draw(root, "mixed", n, *settings)) for n in args.sessions]
    table("Test GAUC against sessions per merchant (taste mix 'mixed')", "sessions per merchant", by_sessions)
    by_taste = [(taste, draw(root, taste, args.taste_sessions, *settings)) for taste in args.tastes]
    table(f"Test GAUC against taste complexity ({args.taste_sessions} sessions per merchant)", "taste mix", by_taste)


if __name__ == "__main__":
    main()
