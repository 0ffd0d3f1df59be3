"""SDXL through every command, on the bundled tiny SDXL-architecture base (``tiny-sdxl``: two text encoders,
pooled text and size conditions, ``force_zeros_for_empty_prompt``). PerFusion's taste gain on it is
``test_personalization.py``'s, parametrized over both bases."""

import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.latents import store_latents
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.training.gen import train_generator
from tests.helpers import tiny_config, tiny_recipe, write_recipe

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
SDXL_RECIPE = ROOT / "recipes" / "tiny-sdxl-cpu.toml"
runner = CliRunner()


def _perfusion(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"perfusion {' '.join(args)}\n{result.output}"
    return result.output


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_tiny_sdxl_base_loads_with_both_encoders_and_its_added_conditions():
    frozen = FrozenSD.load("tiny-sdxl", torch.device("cpu"), mixed_precision="fp16", share_encoder=True)
    sd = frozen.sd
    assert sd.is_sdxl and sd.zero_empty_prompt and sd.unet.config.addition_embed_type == "text_time"
    text = frozen.text(["linen dress", "wool hoodie"])
    widths = [encoder.config.hidden_size for encoder in sd.text_encoders]
    assert text.hidden.shape[-1] == sum(widths) == sd.unet.config.cross_attention_dim and len(set(widths)) == 2
    assert text.pooled.shape == (2, sd.text_encoder_2.config.projection_dim)
    assert text.sized(64, 48).time_ids.tolist() == [[64, 48, 0, 0, 64, 48]] * 2
    assert frozen.share_encoder, "SDXL's U-Net splits into encoder and decoder halves too"
    # fp16 asked for: the U-Net and encoders run in it, the VAE (force_upcast) in fp32, as diffusers' SDXL does
    assert sd.unet.dtype == torch.float16 and sd.vae.dtype == torch.float32


def test_pretrain_base_sdxl_writes_an_sdxl_folder_that_loads_as_a_base(tmp_path):
    """The documented command (a few steps): an SDXL layout, warm-started from the tiny SD U-Net."""
    output = _perfusion("pretrain-base", "--sdxl", "--out", str(tmp_path), "--clip-steps", "2", "--unet-steps", "2",
                        "--images", "200")
    assert "warm_started_tensors" in output
    index = json.loads((tmp_path / "tiny-sdxl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    sd = FrozenSD.load(str(tmp_path / "tiny-sdxl"), torch.device("cpu")).sd
    assert sd.is_sdxl and sd.text_encoder_2.config.hidden_size != sd.text_encoder.config.hidden_size
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))


@pytest.mark.slow
def test_every_command_runs_on_the_tiny_sdxl_base(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a workspace, as a user's
    try:
        _perfusion("prepare", "--synthetic", "--merchants", "8", "--sessions-per-merchant", "12")
        write_recipe(tmp_path / "perfusion.toml", tiny_recipe(train_gen={"base_model": "tiny-sdxl"}))
        _perfusion("train-rm")
        _perfusion("train-gen", "--group-size", "5")
        assert json.loads((tmp_path / "runs/gen/model/config.json").read_text())["base_model"] == "tiny-sdxl"
        _perfusion("generate", "--merchant", "102", "linen dress")
        assert len(list((tmp_path / "outputs/102/linen-dress-seed0").glob("*.png"))) == 2
        _perfusion("eval", "gen", "--json", "outputs/eval-gen.json")
        report = json.loads((tmp_path / "outputs/eval-gen.json").read_text())
        assert report["models"]["perfusion"]["clip"] is not None  # the tiny CLIP scores tiny-sdxl's images
        # on-policy: candidates drawn by the SDXL pipeline (size conditions, two encoders), ranked, trained on
        _perfusion("train-gen", "--online", "--out", "runs/gen-online", "--probe-every", "1")
        online = [json.loads(line) for line in (tmp_path / "runs/gen-online/metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in online if row.get("split") == "probe"] == [0, 1, 2]
        assert [row["online"] for row in online if "loss" in row] == [1.0, 0.0]  # the recipe mixes the logs in
        assert next(row for row in online if "loss" in row)["sample_seconds"] > 0
        assert "train step" in _perfusion("bench")
        plan = _perfusion("bench", "--plan", "--recipe", str(SDXL_RECIPE))
        assert "generate" in plan and "train-gen" in plan
        # latents stored by the SDXL base (both encoders' text and the pooled embedding), then trained on
        _perfusion("prepare", "data/raw", "--out", "data-latents", "--latents", "--base-model", "tiny-sdxl")
        _perfusion("train-gen", "data-latents", "--out", "runs/gen-latents")
        assert json.loads((tmp_path / "runs/gen-latents/run.json").read_text())["stored_latents"] is True
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_stored_sdxl_latents_take_the_same_first_step(market, tmp_path):
    data_dir, _ = market
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder, ignore=shutil.ignore_patterns("raw"))
    tag = store_latents(folder, "tiny-sdxl", 64, torch.device("cpu"), batch_size=16)
    assert tag["base_model"] == "tiny-sdxl"
    runs = {}
    for name, stored in (("with", True), ("without", False)):
        config = tiny_config("train-gen", base_model="tiny-sdxl", max_steps=1, cache_latents=False,
                             stored_latents=stored)
        assert train_generator(config, folder, tmp_path / name)["stored_latents"] is stored
        runs[name] = next(r for r in _rows(tmp_path / name) if r.get("step") == 1)
    assert runs["with"]["loss"] == pytest.approx(runs["without"]["loss"], rel=1e-5, abs=1e-6)
    assert runs["with"]["model_err"] == pytest.approx(runs["without"]["model_err"], rel=1e-3)


def test_generation_on_sdxl_passes_the_size_conditions_and_zero_unconditional(tmp_path, market):
    """The pipeline's U-Net calls carry SDXL's added conditions for the asked size, and guidance's unconditional
    half is zeros (force_zeros_for_empty_prompt), as diffusers' SDXL pipeline does."""
    data_dir, _ = market
    train_generator(tiny_config("train-gen", base_model="tiny-sdxl", max_steps=1), data_dir, tmp_path / "gen")
    pipeline = PerFusionPipeline.from_run(tmp_path / "gen")
    seen = []
    hook = pipeline.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        pipeline(["linen dress"], num_inference_steps=2, guidance_scale=3.0, height=64, width=48,
                 generator=torch.Generator().manual_seed(0), output_type="pt")
    finally:
        hook.remove()
    assert len(seen) == 2
    added = seen[0]["added_cond_kwargs"]
    assert added["time_ids"].tolist() == [[64, 48, 0, 0, 64, 48]] * 2
    assert (added["text_embeds"][0] == 0).all() and (added["text_embeds"][1] != 0).any()
    assert (seen[0]["encoder_hidden_states"][0] == 0).all()
