"""``eval gen`` with every scorer, its HTML report (opened in headless Chromium), and ``bench``."""

import json
import re
import shutil
import subprocess

import pytest
import torch

from perfusion_cli.benchmark import run_bench
from perfusion_cli.evaluation.gen import evaluate_generator
from perfusion_cli.evaluation.scores import AestheticHead
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.rm import train_reward_model
from tests.helpers import tiny_config
from tests.smoke.test_generator_training import gen_run  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def rm_run(market, tmp_path_factory):
    data_dir, _ = market
    run = tmp_path_factory.mktemp("rm") / "run"
    train_reward_model(tiny_config("train-rm"), data_dir, run)
    return run


@pytest.fixture(scope="module")
def evaluation(gen_run, rm_run, market, tmp_path_factory):  # noqa: F811
    run, _ = gen_run
    data_dir, _ = market
    folder = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    torch.save(AestheticHead(64).state_dict(), folder / "aesthetic.pth")
    config = tiny_config("eval-gen", n_per_prompt=2, clip_model="tiny", aesthetic_weights=str(folder / "aesthetic.pth"),
                         reward=str(rm_run))
    summary = evaluate_generator(run, data_dir, config, folder / "report")
    return summary, folder / "report"


def test_every_metric_is_reported_for_both_models(evaluation):
    summary, _ = evaluation
    assert summary["pairs"] == 4 and summary["images_per_pair"] == 2
    for model in ("base", "perfusion"):
        assert set(summary["models"][model]) == {"clip", "aesthetic", "perfusionrm", "oracle", "clean_background",
                                                 "intact"}
        assert all(isinstance(v, float) for v in summary["models"][model].values()), summary["models"][model]
        assert 0.0 <= summary["models"][model]["clean_background"] <= 1.0
    assert all(0.0 <= v <= 1.0 for m, v in summary["win_rate"].items() if m not in ("clean_background", "intact"))
    # every metric's per-pair gain and win rate with a merchant-bootstrap interval
    assert set(summary["intervals"]) == set(summary["models"]["base"])
    for metric, span in summary["intervals"].items():
        low, high = span["gain_interval"]
        assert low <= span["gain"] <= high
        assert ("win_rate_interval" in span) == (summary["win_rate"][metric] is not None)
    denoising = summary["denoising"]
    assert denoising["ratio"] == pytest.approx(denoising["model_err"] / denoising["ref_err"]) and denoising["groups"] > 0
    kept = summary["kept_quality"]
    assert kept["oracle_gain"] == pytest.approx(summary["models"]["perfusion"]["oracle"] - summary["models"]["base"]["oracle"])
    assert kept["fid_ratio"] == pytest.approx(summary["fid"]["perfusion"] / summary["fid"]["base"])
    assert summary["unavailable"] == {}
    fid = summary["fid"]
    assert fid["features"].startswith("clip image features of tiny") and fid["base"] >= 0 and fid["perfusion"] >= 0
    assert fid["generated_images"] == 8


def test_report_references_images_and_plots_that_exist(evaluation):
    _, report = evaluation
    page = (report / "index.html").read_text()
    sources = re.findall(r"src='([^']+)'", page)
    # 16 images in the per-merchant grids, and the montage (base above PerFusion) repeats those of 3 merchants
    assert any(s.startswith("curves/") for s in sources) and sum(s.startswith("images/") for s in sources) == 16 + 12
    for source in sources:
        assert (report / source).is_file(), source
    assert "http://" not in page and "https://" not in page, "no network at view time"
    assert "win rate" in page and "PerFusion" in page and "win rate, 95 % interval" in page


def test_every_image_has_its_own_seed_shared_by_base_and_perfusion(evaluation):
    """With image j of every pair drawn from seed + j, 48 pairs × 2 images measured two backgrounds."""
    _, report = evaluation
    seeds = {model: sorted(int(re.search(r"-seed(\d+)-", path.name).group(1))
                           for path in (report / "images").glob(f"*-{model}.png")) for model in ("base", "perfusion")}
    assert seeds["base"] == seeds["perfusion"] == list(range(8))  # 4 pairs × 2 images, seed 0 onwards


@pytest.mark.browser
def test_report_renders_in_headless_chromium(evaluation, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed")
    _, report = evaluation
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                    (report / "index.html").as_uri()], check=True, timeout=120, capture_output=True)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.resize((60, 100)).getcolors(10000)
    assert colours is not None and len(colours) > 20, "the page rendered tables and images, not a blank page"


def test_bench_measures_what_it_names(gen_run, rm_run, market):  # noqa: F811
    run, _ = gen_run
    data_dir, _ = market
    config, train = tiny_config("bench", repeats=2, device="cpu"), tiny_config("train-gen")
    result = run_bench(run, data_dir, config, train, str(rm_run))
    for backend, entry in result["generation"]["backends"].items():
        for mode in ("base", "personalized"):
            assert len(entry[mode]["seconds_per_image"]) == 2, (backend, mode)  # every repeat is kept
            assert entry[mode]["median"] == pytest.approx(sorted(entry[mode]["seconds_per_image"])[0] / 2
                                                          + sorted(entry[mode]["seconds_per_image"])[1] / 2)
        assert entry["latency_ratio"] == pytest.approx(entry["personalized"]["median"] / entry["base"]["median"])
    step = result["train_step"]
    pipeline = PerFusionPipeline.from_run(run)
    # the Diffusion-DPO baseline trains the whole U-Net, PerFusion only its branch, through one objective
    assert step["diffusion_dpo"]["trainable_parameters"] == sum(p.numel() for p in pipeline.unet.parameters())
    assert step["perfusion_shared_encoder"]["trainable_parameters"] == sum(p.numel() for p in pipeline.branch.parameters())
    assert step["beta"] == train.beta and step["groups"] == config.batch_size
    assert step["ratio_perfusion_vs_dpo"] == pytest.approx(step["perfusion_shared_encoder"]["median"]
                                                           / step["diffusion_dpo"]["median"])
    assert result["reward"]["perfusionrm"]["candidates_per_second"] == pytest.approx(
        result["reward"]["candidates_per_call"] / sorted(result["reward"]["perfusionrm"]["seconds"])[0], rel=0.5)
    json.dumps(result)  # serializable as is
