"""Training PerFusion for a couple of steps on tiny models, then generating with what was saved."""

import json

import numpy as np
import pytest
import torch

from perfusion_cli.config import GenerateConfig, GenTrainConfig, MerchantEncoderConfig
from perfusion_cli.errors import DataError
from perfusion_cli.generation import generate
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.gen import train_generator

GEN = dict(resolution=64, batch_size=2, lr=1e-3, beta=500.0, grid_size=4, grid_channels=8, log_every=1,
           merchant=MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8))


@pytest.fixture(scope="module")
def gen_run(market, tiny_sd_dir, tmp_path_factory):
    data_dir, _ = market
    run = tmp_path_factory.mktemp("gen")
    summary = train_generator(GenTrainConfig(base_model=str(tiny_sd_dir), max_steps=2, **GEN), data_dir, run)
    return run, summary


def test_training_writes_a_run_with_its_log(gen_run):
    run, summary = gen_run
    assert summary["steps"] == 2 and summary["shared_encoder"] is True
    assert (run / "model" / "branch" / "diffusion_pytorch_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "model_err", "ref_err", "pair_accuracy"} <= set(rows[0])


@torch.no_grad()
def test_pipeline_save_then_load_gives_identical_images(gen_run, tmp_path):
    run, _ = gen_run
    pipeline = PerFusionPipeline.from_run(run)
    features = torch.tensor([[1] * len(pipeline.branch.config.features)] * 2)
    kwargs = dict(features=features, num_inference_steps=4, output_type="np")
    first = pipeline(["linen dress"] * 2, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs)
    pipeline.save_pretrained(tmp_path / "pipe")
    again = PerFusionPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    second = again(["linen dress"] * 2, generator=[torch.Generator().manual_seed(i) for i in range(2)],
                   height=64, width=64, **kwargs)
    assert np.array_equal(first.images, second.images)
    assert first.images.shape == (2, 64, 64, 3)


def test_generate_writes_pngs_and_metadata(gen_run, market, tmp_path):
    run, _ = gen_run
    data_dir, _ = market
    merchant = next(json.loads(l)["merchant_id"] for l in (data_dir / "merchants.jsonl").read_text().splitlines()
                    if json.loads(l)["role"] == "train")
    config = GenerateConfig(n=3, seed=5, steps=3, guidance=2.0)
    metadata = generate(run, data_dir, merchant, "linen dress", config, tmp_path)
    folder = tmp_path / merchant / "linen-dress-seed5"
    assert sorted(p.name for p in folder.glob("*.png")) == ["00-seed5.png", "01-seed6.png", "02-seed7.png"]
    written = json.loads((folder / "metadata.json").read_text())
    assert written["merchant"] == merchant and written["prompt"] == "linen dress" and written["seed"] == 5
    assert [image["seed"] for image in written["images"]] == [5, 6, 7]
    assert all(image["oracle"] is not None for image in written["images"]), "synthetic data: oracle scores"
    assert metadata["merchant_source"]["role"] == "train"


def test_unknown_merchant_needs_a_cold_start(gen_run, market, tmp_path):
    run, _ = gen_run
    data_dir, _ = market
    with pytest.raises(DataError, match=r"unknown merchant 'newcomer'.*--cold-start mean"):
        generate(run, data_dir, "newcomer", "linen dress", GenerateConfig(n=1, steps=2), tmp_path)
    mean = generate(run, data_dir, "newcomer", "linen dress", GenerateConfig(n=1, steps=2, cold_start="mean"),
                    tmp_path)
    assert mean["merchant_source"]["source"].startswith("cold start: mean")
    profile = generate(run, data_dir, "newcomer", "wool hoodie",
                       GenerateConfig(n=1, steps=2, cold_start="features"), tmp_path,
                       profile_pairs=["style=bohemian region=coastal", "price_level=35"])
    assert profile["merchant_source"]["profile"] == {"style": "bohemian", "region": "coastal", "price_level": 35.0}
