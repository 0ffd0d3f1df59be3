"""The Python API as the README shows it, and the model cards every run carries."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from perfusion_cli.api import load_generator, load_reward
from perfusion_cli.cli.main import app
from perfusion_cli.data.merchants import read_merchants

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
runner = CliRunner()


def _readme_python(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_readme_python_api_example_runs_as_written(trained_workspace, monkeypatch):
    monkeypatch.chdir(trained_workspace)  # the example's paths are a workspace's
    namespace: dict = {}
    exec(_readme_python("In Python, and in your own diffusers stack"), namespace)
    images, scores = namespace["images"], namespace["scores"]
    assert len(images) == 4 and all(isinstance(image, Image.Image) for image in images)
    assert len(scores) == 4 and all(isinstance(s, float) and np.isfinite(s) for s in scores)
    assert namespace["best"] is images[int(np.argmax(scores))]


def test_the_api_draws_what_perfusion_generate_draws_for_a_profile(trained_workspace, tmp_path):
    merchants = read_merchants(trained_workspace / "data")
    merchant = sorted(merchants)[0]
    profile = {"merchant_id": merchant, **merchants[merchant]["features"]}
    result = runner.invoke(app, ["--workdir", str(trained_workspace), "generate", "--merchant", merchant, "linen dress",
                                 "--n", "1", "--seed", "5", "--steps", "4", "--no-rerank", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [png] = tmp_path.rglob("*.png")
    metadata = json.loads((png.parent / "metadata.json").read_text())
    pipe = load_generator(trained_workspace / "runs" / "gen")
    [image] = pipe("linen dress", merchant=profile, num_inference_steps=4, guidance_scale=metadata["guidance"],
                   generator=torch.Generator().manual_seed(5)).images
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(png)))
    # the reward through the API is the score generate wrote for that image
    reward = load_reward(trained_workspace / "runs" / "rm")
    [score] = reward.score(profile, "linen dress", [png])
    assert score == pytest.approx(metadata["images"][0]["reward"], abs=2e-2)


def test_the_api_says_what_is_wrong_with_a_merchant(trained_workspace):
    from perfusion_cli.errors import ConfigError

    reward = load_reward(trained_workspace / "runs" / "rm")
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    with pytest.raises(ConfigError, match="unknown feature 'colour'"):
        reward.score({"merchant_id": "101", "colour": "red"}, "linen dress", [image])
    with pytest.raises(ConfigError, match="merchant_id"):
        reward.score({"style": "bohemian"}, "linen dress", [image])
    # an id the model never saw: a cold start from the rest of the profile, not an error
    assert len(reward.score({"merchant_id": "never-seen", "style": "bohemian"}, "linen dress", [image])) == 1


def test_a_run_carries_a_model_card_and_eval_adds_its_numbers(trained_workspace, tmp_path):
    from perfusion_cli.model_card import write_card

    run = tmp_path / "rm"
    shutil.copytree(trained_workspace / "runs" / "rm", run)
    write_card(run, new_weights=True)  # as training leaves it (other tests may have evaluated the shared run)
    summary = json.loads((run / "run.json").read_text())
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: \"tiny\"\n")
    assert summary["data"]["fingerprint"] in card and f"| command | {summary['command'] or 'the Python API'}" in card
    assert "Not evaluated on held-out data yet" in card
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["--workdir", str(trained_workspace), "eval", "rm", "--checkpoint", str(run),
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    [measured] = json.loads(out.read_text())["models"]
    card = (run / "README.md").read_text()
    assert "Not evaluated" not in card
    assert f"MAP {measured['map']:.4g}, GAUC {measured['gauc']:.4g}" in card
    assert (run / "evaluation.json").is_file()


def test_eval_gen_puts_its_table_in_the_generator_card(trained_workspace, tmp_path):
    from perfusion_cli.evaluation.gen import evaluate_generator
    from tests.helpers import tiny_config

    run = tmp_path / "gen"
    shutil.copytree(trained_workspace / "runs" / "gen", run)
    summary = evaluate_generator(run, trained_workspace / "data", tiny_config("eval-gen"))
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")
    oracle = summary["models"]["perfusion"]["oracle"]
    lines = card.splitlines()
    header = next(line for line in lines if "held-out pairs" in line).split("|")
    row = next(line for line in lines if line.startswith("| perfusion |")).split("|")
    assert row[[cell.strip() for cell in header].index("oracle")].strip() == f"{oracle:.4g}"
    assert f"| {summary['pairs']} held-out pairs (test) |" in card
