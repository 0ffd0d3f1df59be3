"""Training PerFusion for a couple of steps on tiny models, then generating with what was saved."""

import json

import numpy as np
import pytest
import torch

from perfusion_cli.config import GenerateConfig
from perfusion_cli.errors import DataError
from perfusion_cli.designer import generate
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.gen import train_generator
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def gen_run(market, tmp_path_factory):
    data_dir, _ = market
    run = tmp_path_factory.mktemp("gen") / "run"  # PerFusion's ControlNet branch (the default is the adapter)
    summary = train_generator(tiny_config("train-gen", branch="controlnet"), data_dir, run)
    return run, summary


def test_training_writes_a_run_with_its_log(gen_run):
    run, summary = gen_run
    assert summary["steps"] == 2 and summary["shared_encoder"] is True
    assert (run / "model" / "diffusion_pytorch_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert {"loss", "lr", "grad_norm", "model_err", "ref_err", "err_gap", "err_ratio", "pair_accuracy",
                "reward_margin"} <= set(row)
        assert row["err_gap"] == pytest.approx(row["model_err"] - row["ref_err"])
        assert row["err_ratio"] == pytest.approx(row["model_err"] / row["ref_err"])


@torch.no_grad()
def test_pipeline_save_then_load_gives_identical_images(gen_run, tmp_path):
    run, _ = gen_run
    pipeline = PerFusionPipeline.from_run(run)
    features = torch.tensor([[1] * len(pipeline.branch.vocab.features)] * 2)
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
    merchant = next(json.loads(l)["merchant_id"] for l in (data_dir / "merchant_table.jsonl").read_text().splitlines()
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


@torch.no_grad()
def _images_the_old_way(pipeline, prompt, features, steps, guidance, seed):
    """Sampling with the ControlNet branch on every step, written out as before branch reuse existed."""
    text = pipeline.text_encoder(pipeline.tokenizer([prompt, ""][::-1], padding="max_length", truncation=True,
                                                    max_length=pipeline.tokenizer.model_max_length,
                                                    return_tensors="pt").input_ids)[0]
    pipeline.scheduler.set_timesteps(steps)
    size = pipeline.default_resolution // pipeline.vae_scale_factor
    latents = torch.randn((4, size, size), generator=torch.Generator().manual_seed(seed))[None]
    latents = latents * pipeline.scheduler.init_noise_sigma
    cond = pipeline.branch.condition(features, (size, size)).repeat(2, 1, 1, 1)
    for t in pipeline.scheduler.timesteps:
        model_input = pipeline.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        down, mid = pipeline.branch.controlnet(model_input, t, text, controlnet_cond=cond, return_dict=False)
        noise = pipeline.unet(model_input, t, text, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample
        unconditional, conditional = noise.chunk(2)
        latents = pipeline.scheduler.step(unconditional + guidance * (conditional - unconditional), t, latents).prev_sample
    return (pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


def test_branch_every_1_until_1_draws_exactly_the_images_of_the_full_schedule(gen_run):
    run, _ = gen_run
    pipeline = PerFusionPipeline.from_run(run)
    features = torch.tensor([[1] * len(pipeline.branch.vocab.features)])
    kwargs = dict(features=features, num_inference_steps=4, guidance_scale=3.0, output_type="pt")
    ours = pipeline(["linen dress"], generator=[torch.Generator().manual_seed(7)], branch_every=1, branch_until=1.0,
                    **kwargs).images
    assert torch.equal(ours, _images_the_old_way(pipeline, "linen dress", features, 4, 3.0, 7))
    cheaper = pipeline(["linen dress"], generator=[torch.Generator().manual_seed(7)], branch_every=2, **kwargs).images
    base = pipeline(["linen dress"], generator=[torch.Generator().manual_seed(7)], num_inference_steps=4,
                    guidance_scale=3.0, output_type="pt").images
    assert not torch.equal(cheaper, ours) and not torch.equal(cheaper, base)


@pytest.mark.parametrize("kind, saved_class, shared", [("adapter", "MerchantAdapter", False),
                                                        ("xs", "PersonalizedBranch", True)])
def test_each_light_branch_trains_saves_reloads_and_generates(market, tmp_path, kind, saved_class, shared):
    data_dir, _ = market
    summary = train_generator(tiny_config("train-gen", branch=kind), data_dir, tmp_path / kind)
    assert summary["branch"] == kind and summary["shared_encoder"] is shared
    assert json.loads((tmp_path / kind / "model" / "config.json").read_text())["_class_name"] == saved_class
    pipeline = PerFusionPipeline.from_run(tmp_path / kind)
    assert type(pipeline.branch).__name__ == saved_class
    merchant = next(json.loads(l)["merchant_id"] for l in (data_dir / "merchant_table.jsonl").read_text().splitlines()
                    if json.loads(l)["role"] == "train")
    metadata = generate(tmp_path / kind, data_dir, merchant, "linen dress", GenerateConfig(n=2, steps=3),
                        tmp_path / "out")
    assert len(metadata["images"]) == 2 and all(image["oracle"] is not None for image in metadata["images"])
