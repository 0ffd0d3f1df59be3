"""``eval gen`` with every scorer, its HTML report (opened in headless Chromium), and ``bench``."""

import json
import re
import shutil
import subprocess

import pytest
import torch

from perfusion_cli.bench import run_bench
from perfusion_cli.config import EvalGenConfig, MerchantEncoderConfig, RMTrainConfig
from perfusion_cli.evaluation.generation import evaluate_generator
from perfusion_cli.evaluation.scores import AestheticHead
from perfusion_cli.training.rm import train_reward_model
from tests.smoke.test_generator_training import gen_run  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def rm_run(market, tmp_path_factory):
    data_dir, _ = market
    run = tmp_path_factory.mktemp("rm")
    train_reward_model(RMTrainConfig(base_model="tiny", batch_size=4, max_steps=2, plugin_hidden=8,
                                     merchant=MerchantEncoderConfig(embed_dim=4, mlp_dims=[8], user_dim=8)),
                       data_dir, run)
    return run


@pytest.fixture(scope="module")
def evaluation(gen_run, rm_run, market, tmp_path_factory):  # noqa: F811
    run, _ = gen_run
    data_dir, _ = market
    folder = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    torch.save(AestheticHead(64).state_dict(), folder / "aesthetic.pth")
    config = EvalGenConfig(max_pairs=4, n_per_prompt=2, steps=3, guidance=2.0, clip_model="tiny",
                           aesthetic_weights=str(folder / "aesthetic.pth"))
    summary = evaluate_generator(run, data_dir, config, folder / "report", str(rm_run))
    return summary, folder / "report"


def test_every_metric_is_reported_for_both_models(evaluation):
    summary, _ = evaluation
    assert summary["pairs"] == 4 and summary["images_per_pair"] == 2
    for model in ("base", "perfusion"):
        assert set(summary["models"][model]) == {"clip", "aesthetic", "perfusionrm", "oracle"}
        assert all(isinstance(v, float) for v in summary["models"][model].values()), summary["models"][model]
    assert all(0.0 <= v <= 1.0 for v in summary["win_rate"].values())
    assert summary["unavailable"] == {}
    fid = summary["fid"]
    assert fid["features"].startswith("clip image features of tiny") and fid["base"] >= 0 and fid["perfusion"] >= 0
    assert fid["generated_images"] == 8


def test_report_references_images_and_plots_that_exist(evaluation):
    _, report = evaluation
    page = (report / "index.html").read_text()
    sources = re.findall(r"src='([^']+)'", page)
    assert any(s.startswith("curves/") for s in sources) and sum(s.startswith("images/") for s in sources) == 16
    for source in sources:
        assert (report / source).is_file(), source
    assert "http://" not in page and "https://" not in page, "no network at view time"
    assert "win rate" in page and "PerFusion" in page


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


def test_bench_json_holds_the_ratios(gen_run, rm_run, market, tmp_path):  # noqa: F811
    run, _ = gen_run
    data_dir, _ = market
    result = run_bench(run, data_dir, "cpu", str(rm_run), steps=2, repeats=1, batch_size=2)
    assert result["generation"]["backends"]["sdpa"]["latency_ratio"] > 0
    assert result["generation"]["backends"]["eager"]["memory_ratio"] > 0
    assert len(result["generation"]["backends"]["sdpa"]["base"]["seconds_per_image"]) == 1
    step = result["train_step"]
    assert step["ratio_perfusion_vs_dpo"] > 0 and step["ratio_two_passes_vs_shared"] > 0
    assert result["reward"]["throughput_ratio"] > 0
    assert result["loader"]["loader_headroom"] > 0
    json.dumps(result)  # serializable as is
