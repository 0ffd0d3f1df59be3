"""``perfusion export``: a stock diffusers pipeline with the exported adapter and a merchant's exported embedding
draws what ``perfusion generate`` draws (same seed, sampler and steps), on the tiny SD and SDXL bases — by
running the model card's own snippet; other branch kinds are refused in one line."""

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.config import TINY_RECIPE, GenTrainConfig, build, load_recipe
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.training.gen import train_generator
from tests.helpers import tiny_config

runner = CliRunner()
SDXL_RECIPE = TINY_RECIPE.parent / "tiny-sdxl-cpu.toml"


def _perfusion(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"perfusion {' '.join(map(str, args))}\n{result.output}"
    return result.output


def _trained_adapter(recipe, data_dir, out):
    """One training step of the recipe's adapter, then its weights pushed far from zero: an adapter this short
    would barely move the image, and the comparison must be able to fail."""
    config = build(GenTrainConfig, load_recipe(recipe)["train-gen"], {"max_steps": 1, "batch_size": 2})
    train_generator(config, data_dir, out)
    weights = out / "model" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if name.endswith(("to_v.weight", "to_k.weight", "to_tokens.weight")):
            tensors[name] = tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, weights)
    return out


def _snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def _png(folder) -> np.ndarray:
    [path] = folder.rglob("*.png")
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("recipe", [TINY_RECIPE, SDXL_RECIPE], ids=["sd", "sdxl"])
def test_the_stock_pipeline_with_the_export_draws_what_perfusion_generate_draws(market, tmp_path, recipe):
    data_dir, _ = market
    run = _trained_adapter(recipe, data_dir, tmp_path / "gen")
    output = _perfusion("export", "--model", run, "--data", data_dir, "--out", tmp_path / "export")
    assert "merchant embeddings" in output
    export = tmp_path / "export"
    embeddings = load_file(export / "merchant_embeddings.safetensors")
    assert set(embeddings) == set(read_merchants(data_dir)), "one embedding per merchant of the prepared data"
    card = (export / "README.md").read_text()
    merchant = re.search(r"\[(['\"])([^'\"]+)\1\]\.view", card).group(2)

    namespace: dict = {}
    exec(_snippet(card), namespace)  # the model card's snippet, as written: a stock AutoPipelineForText2Image
    stock = np.asarray(namespace["image"], dtype=np.int16)
    assert type(namespace["pipe"]).__name__ == ("StableDiffusionXLPipeline" if recipe == SDXL_RECIPE
                                                else "StableDiffusionPipeline")
    common = ("--model", run, "--data", data_dir, "--merchant", merchant, "linen dress", "--steps", "30",
              "--guidance", "7.5", "--seed", "0", "--n", "1", "--no-rerank")
    _perfusion("generate", *common, "--out", tmp_path / "ours")
    _perfusion("generate", *common, "--no-personalization", "--out", tmp_path / "base")
    ours, base = _png(tmp_path / "ours"), _png(tmp_path / "base")
    assert np.abs(stock - ours).max() <= 1, "the stock pipeline and perfusion generate differ beyond rounding"
    assert np.abs(ours - base).mean() > 5, "the adapter must change the picture, or this comparison proves nothing"


def test_the_merchant_encoder_export_gives_the_embeddings_for_a_profile(trained_workspace, tmp_path):
    from perfusion_cli.api import load_merchant_encoder

    _perfusion("--workdir", trained_workspace, "export", "--out", tmp_path / "export")
    embeddings = load_file(tmp_path / "export" / "merchant_embeddings.safetensors")
    encoder = load_merchant_encoder(tmp_path / "export" / "merchant_encoder")
    merchants = read_merchants(trained_workspace / "data")
    ids = sorted(merchants)[:3]
    profiles = [{"merchant_id": m, **merchants[m]["features"]} for m in ids]
    assert torch.allclose(encoder.embed(profiles), torch.stack([embeddings[m] for m in ids]), atol=1e-6)
    # a merchant that arrives later: its id is unknown, its profile still places it
    newcomer = encoder.embed([{**profiles[0], "merchant_id": "new-shop"}])
    assert newcomer.shape == (1, embeddings[ids[0]].shape[0]) and not torch.allclose(newcomer[0], embeddings[ids[0]])


def test_export_refuses_a_controlnet_run_in_one_line_and_leaves_out_alone(market, tmp_path):
    data_dir, _ = market
    train_generator(tiny_config("train-gen", branch="controlnet", max_steps=1), data_dir, tmp_path / "gen")
    result = runner.invoke(app, ["export", "--model", str(tmp_path / "gen"), "--data", str(data_dir),
                                 "--out", str(tmp_path / "export")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "writes the adapter branch" in lines[0] and "controlnet branch" in lines[0], lines
    assert not (tmp_path / "export").exists()


def test_export_will_not_replace_a_folder_of_other_files(trained_workspace, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["--workdir", str(trained_workspace), "export", "--out", str(tmp_path / "mine")])
    assert result.exit_code != 0 and "holds other files than an export" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    shutil.rmtree(tmp_path / "mine")
