"""The HTML report of ``perfusion eval gen --report DIR``: one self-contained folder.

    DIR/index.html      metrics table, training curves, per-merchant grids (base | PerFusion, same seed)
    DIR/curves/*.png    plots of the runs' metrics.jsonl
    DIR/images/*.png    every generated image

Everything is referenced by relative path; there are no scripts, fonts or styles from the network,
so the page opens from disk in any browser. Every value from the data (merchant ids, prompts, file names) is
written through ``html.escape``, attributes included: a merchant id is data, never markup.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from perfusion_cli.io import atomic_write_text  # noqa: E402
from perfusion_cli.runs import RunDir  # noqa: E402

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.note{color:#666;font-size:90%}
.grid td,.grid th{text-align:center}.grid img{width:128px;height:128px;image-rendering:pixelated;display:block;margin:auto}
h2{margin-top:2em}.curves img{width:380px;margin-right:1em}
"""


def _plot(rows: list[dict], keys: list[str], title: str, path: Path) -> bool:
    series = {key: [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))] for key in keys}
    series = {key: points for key, points in series.items() if points}
    if not series:
        return False
    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
    for key, points in series.items():
        steps, values = zip(*points)
        axis.plot(steps, values, marker="." if len(points) < 30 else None, label=key)
    axis.set_xlabel("step")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def training_curves(folder: Path, runs: dict[str, Path]) -> list[str]:
    """Plot each run's metrics.jsonl; returns the PNG paths relative to the report folder."""
    (folder / "curves").mkdir(parents=True, exist_ok=True)
    made = []
    plots = {"generator": [(["loss"], "loss"), (["pair_accuracy"], "implicit pair accuracy"),
                           (["reward_margin"], "implicit reward margin"),
                           (["model_err", "ref_err"], "denoising error: PerFusion vs reference"),
                           (["err_ratio"], "denoising error ratio (KL price)"), (["kl"], "KL to the reference"),
                           (["grad_norm"], "gradient norm"),
                           (["reward", "reward_best"], "online: reward of the drawn groups"),
                           (["sample_seconds", "loss_seconds"], "online: seconds per step"),
                           (["reward", "oracle", "judge_reward"], "guard: reward and judges on the probe set", "probe"),
                           (["clip"], "guard: prompt CLIP score on the probe set", "probe"),
                           (["clean_background", "intact"], "guard: product integrity on the probe set", "probe")],
             "reward model": [(["loss"], "loss"), (["map", "gauc"], "validation", "val"),
                              (["grad_norm"], "gradient norm")]}
    for name, run in runs.items():
        rows = RunDir(run).metric_rows()
        for keys, title, *split in plots.get(name, []):
            wanted = split[0] if split else None  # None: the training rows (they carry no split)
            relative = f"curves/{name.replace(' ', '-')}-{wanted + '-' if wanted else ''}{'-'.join(keys)}.png"
            if _plot([row for row in rows if row.get("split") == wanted], keys, f"{name}: {title}",
                     folder / relative):
                made.append(relative)
    return made


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _metrics_table(summary: dict) -> str:
    metrics = list(summary["win_rate"])
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = [f"<tr><td>{model}</td>" + "".join(f"<td>{_cell(values[m])}</td>" for m in metrics) + "</tr>"
            for model, values in summary["models"].items()]
    rows.append("<tr><td>win rate (PerFusion &gt; base)</td>" +
                "".join(f"<td>{_cell(summary['win_rate'][m])}</td>" for m in metrics) + "</tr>")
    spans = summary.get("intervals", {})
    for label, key, form in (("gain, 95 % interval", "gain_interval", "{:+.3f}"),
                             ("win rate, 95 % interval", "win_rate_interval", "{:.2f}")):
        cells = ["–" if key not in spans.get(m, {}) else " – ".join(form.format(v) for v in spans[m][key])
                 for m in metrics]
        rows.append(f"<tr><td>{label} (merchants resampled)</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    reasons = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary["unavailable"].items())
    fid = summary.get("fid", {})
    fid_text = (f"FID ({html.escape(fid.get('features', ''))}; reference: {html.escape(fid.get('reference', ''))}): "
                f"base {_cell(fid.get('base'))}, PerFusion {_cell(fid.get('perfusion'))}"
                if "base" in fid else f"FID unavailable: {html.escape(fid.get('unavailable', ''))}")
    return (f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table><p>{fid_text}</p>"
            + (f"<p class='note'>Not computed:</p><ul class='note'>{reasons}</ul>" if reasons else ""))


KEPT = [("oracle_gain", "oracle utility gain (PerFusion − base)"), ("oracle_win_rate", "oracle win rate"),
        ("perfusionrm_win_rate", "PerFusionRM win rate"),
        ("clean_background_kept", "clean-background share, PerFusion / base"),
        ("intact_kept", "intact-product share, PerFusion / base"), ("clip_score_delta", "CLIP score, PerFusion − base"),
        ("fid_ratio", "CLIP-feature FID, PerFusion / base"),
        ("denoising_error_ratio", "denoising error on held-out groups, PerFusion / reference")]


def _kept_quality(summary: dict) -> str:
    kept = summary.get("kept_quality", {})
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_cell(kept.get(key))}</td></tr>" for key, label in KEPT)
    return f"<table>{rows}</table>"


def _montage(pairs, files: dict, merchants: int = 3, per_merchant: int = 6) -> str:
    """For a few merchants, their base images in one row and PerFusion's from the same seeds below."""
    by_merchant = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_merchant[pair.merchant_id] += [(index, j) for j in range(len(files["base"][index]))]
    blocks = []
    for merchant, cells in sorted(by_merchant.items())[:merchants]:
        rows = []
        for model, label in (("base", "base"), ("perfusion", "PerFusion")):
            images = "".join(f"<td><img src='images/{html.escape(files[model][p][j])}' alt='{label}'></td>"
                             for p, j in cells[:per_merchant])
            rows.append(f"<tr><th>{label}</th>{images}</tr>")
        prompts = "".join(f"<td class='note'>{html.escape(pairs[p].prompt)}</td>" for p, _ in cells[:per_merchant])
        blocks.append(f"<h3>merchant {html.escape(merchant)}</h3><table class='grid'>{''.join(rows)}"
                      f"<tr><th></th>{prompts}</tr></table>")
    return "".join(blocks)


def _grids(pairs, files: dict, result, summary: dict) -> str:
    by_merchant = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_merchant[pair.merchant_id].append(index)
    scored = [m for m in ("oracle", "perfusionrm", "clip") if m in result.scores]
    sections = []
    for merchant, indices in sorted(by_merchant.items()):
        rows = []
        for index in indices:
            for j in range(len(files["base"][index])):
                cells = []
                for model in ("base", "perfusion"):
                    notes = " ".join(f"{m} {result.scores[m][model][index, j]:.3f}" for m in scored)
                    cells.append(f"<td><img src='images/{html.escape(files[model][index][j])}' alt='{model}'>"
                                 f"<span class='note'>{html.escape(notes)}</span></td>")
                prompt = html.escape(pairs[index].prompt)
                rows.append(f"<tr><td>{prompt}<br><span class='note'>seed {summary['seed'] + j}</span></td>"
                            + "".join(cells) + "</tr>")
        sections.append(f"<h3>merchant {html.escape(merchant)}</h3><table class='grid'>"
                        f"<tr><th>prompt</th><th>base</th><th>PerFusion</th></tr>{''.join(rows)}</table>")
    return "".join(sections)


def write_report(folder: Path, summary: dict, pairs, files: dict, result, gen_run: Path,
                 reward_run: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    runs = {"generator": Path(gen_run)}
    if reward_run and Path(reward_run).is_dir():
        runs["reward model"] = Path(reward_run)
    curves = training_curves(folder, runs)
    curve_html = "".join(f"<img src='{html.escape(c)}' alt='{html.escape(c)}'>" for c in curves) or "<p class='note'>no metrics.jsonl</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PerFusion evaluation</title><style>{STYLE}</style></head>
<body>
<h1>PerFusion evaluation</h1>
<p>{summary['pairs']} held-out (merchant, prompt) pairs from split <b>{html.escape(summary['split'])}</b>,
{summary['merchants']} merchants, {summary['images_per_pair']} image(s) per pair and model, {summary['steps']}
denoising steps, guidance {summary['guidance']}. Base and PerFusion images of a row share their seed.</p>
<h2>Taste gain at kept quality</h2>{_kept_quality(summary)}
<h2>Base above PerFusion, same seeds</h2>{_montage(pairs, files)}
<h2>Metrics</h2>{_metrics_table(summary)}
<h2>Training curves</h2><div class="curves">{curve_html}</div>
<h2>Images per merchant</h2>{_grids(pairs, files, result, summary)}
</body></html>
"""
    atomic_write_text(folder / "index.html", page)
    return folder / "index.html"
