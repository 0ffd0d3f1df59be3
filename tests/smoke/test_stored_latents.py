"""``prepare --latents``: VAE latents and text embeddings stored in the shards; train-gen on them computes
the same step as encoding on the fly, and refuses latents another VAE, text encoder or resolution made; the same for
the flow transformers (their T5 tokens stored too)."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.data.loader import StreamSpec, train_batches
from perfusion_cli.data.manifest import SHARD_DIR, load_manifest, shard_problem
from perfusion_cli.errors import ConfigError
from perfusion_cli.latents import store_latents
from perfusion_cli.models.families import load_frozen
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.training.gen import train_generator
from tests.helpers import TOY_FLOW, tiny_config


@pytest.fixture(scope="module")
def stored(tmp_path_factory, market):
    data_dir, _ = market
    folder = tmp_path_factory.mktemp("latents") / "data"
    shutil.copytree(data_dir, folder, ignore=shutil.ignore_patterns("raw"))
    tag = store_latents(folder, "tiny", 64, torch.device("cpu"), batch_size=16)
    return folder, tag


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_shards_change_only_by_the_latents_and_the_manifest_says_what_made_them(stored, market):
    folder, tag = stored
    before, after = load_manifest(market[0]).raw, load_manifest(folder).raw
    assert after["latents"] == tag and tag["base_model"] == "tiny" and tag["resolution"] == 64
    assert after["accounting"] == before["accounting"] and after["features"] == before["features"]
    names = sorted(p.name for p in (folder / SHARD_DIR).iterdir())
    assert names == sorted(s["name"] for info in after["splits"].values() for s in info["shards"])  # old ones gone
    assert all(".latents-" in name for name in names)
    for split, info in after["splits"].items():
        assert info["groups"] == before["splits"][split]["groups"]
        assert all(shard_problem(folder, shard) is None for shard in info["shards"])


def test_stored_latents_are_what_the_vae_and_text_encoder_give(stored):
    folder, _ = stored
    spec = StreamSpec(folder, "train", 4, 5, 64, stored_latents=True)
    batch = next(train_batches(spec, steps_per_epoch=1))
    frozen = FrozenSD.load("tiny", torch.device("cpu"), share_encoder=False, resolution=64)
    valid = batch.valid
    fresh = frozen.latents(batch.images[valid], [("", i) for i in range(int(valid.sum()))])
    assert batch.latents.dtype == torch.float16 and batch.latents.shape[:2] == valid.shape
    torch.testing.assert_close(batch.latents[valid].float(), fresh, rtol=2e-3, atol=2e-3)  # fp16 storage
    assert (batch.latents[~valid] == 0).all()
    torch.testing.assert_close(batch.text.float(), frozen.text(batch.prompts).hidden, rtol=2e-3, atol=2e-3)


def test_train_gen_on_stored_latents_takes_the_same_first_step(stored, tmp_path):
    folder, _ = stored
    config = tiny_config("train-gen", max_steps=2, cache_latents=False)
    with_latents = train_generator(config, folder, tmp_path / "with")
    assert with_latents["stored_latents"] is True
    without = train_generator(tiny_config("train-gen", max_steps=2, cache_latents=False, stored_latents=False), folder,
                              tmp_path / "without")
    assert without["stored_latents"] is False
    first = [next(r for r in _rows(tmp_path / run) if r.get("step") == 1) for run in ("with", "without")]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-5, abs=1e-6)
    assert first[0]["model_err"] == pytest.approx(first[1]["model_err"], rel=1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"resolution": 32}, "made by another resolution (tiny at 64 px) than this run's (tiny at 32 px)"),
    ("other base", "made by another vae and text_encoder"),
])
def test_latents_from_another_model_or_size_are_refused(stored, tmp_path, tiny_sd_dir, overrides, message):
    folder, _ = stored
    if overrides == "other base":
        overrides = {"base_model": str(tiny_sd_dir)}
    with pytest.raises(ConfigError, match="re-run `perfusion prepare … --latents") as caught:
        train_generator(tiny_config("train-gen", max_steps=1, **overrides), folder, tmp_path / "run")
    assert message in str(caught.value) and "--no-stored-latents" in str(caught.value)


def test_the_cli_stores_latents_and_refuses_their_flags_without_latents(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--workdir", str(tmp_path), "prepare", "--synthetic", "--merchants", "4",
                                 "--sessions-per-merchant", "12", "--latents", "--workers", "1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "stored latents: tiny at 64 px (VAE " in text and load_manifest(tmp_path / "data").raw["latents"]
    result = runner.invoke(app, ["--workdir", str(tmp_path / "b"), "prepare", "--synthetic", "--base-model", "tiny"])
    assert result.exit_code == 1 and "--base-model, --resolution and --device apply with --latents" in result.output


@pytest.mark.parametrize("family", TOY_FLOW)
def test_a_flow_transformer_stores_its_text_encoders_output_and_trains_the_same_first_step(family, market, tmp_path):
    """FLUX's T5 tokens and CLIP pooled embedding (SD 3.5's joint CLIP + T5 tokens and pooled pair) are stored once
    per group: what the frozen parts give, read back as their own text, and the step on them (the text encoders freed)
    is the step on the fly."""
    write, base, _, overrides = TOY_FLOW[family]
    model = str(write(base, tmp_path / family, overrides, dtype=torch.float32))
    folder = tmp_path / "data"
    shutil.copytree(market[0], folder, ignore=shutil.ignore_patterns("raw"))
    tag = store_latents(folder, model, 64, torch.device("cpu"), batch_size=16)
    bf16 = load_frozen(model, torch.device("cpu"), "bf16", fingerprints=True)
    assert (tag["vae"], tag["text_encoder"]) == (bf16.fingerprints["vae"], bf16.fingerprints["text_encoder"])

    batch = next(train_batches(StreamSpec(folder, "train", 2, 5, 64, stored_latents=True), steps_per_epoch=1))
    frozen = load_frozen(model, torch.device("cpu"), resolution=64)
    text = frozen.text(batch.prompts)
    assert batch.latents.shape[2] == 16 and batch.pooled is not None
    torch.testing.assert_close(batch.latents[batch.valid].float(), frozen.latents(batch.images[batch.valid]),
                               rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(batch.text.float(), text.hidden, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(batch.pooled.float(), text.pooled, rtol=2e-3, atol=2e-3)
    # a run on stored text frees the text encoders (T5-XXL: 9.5 GB in bf16) after the check; then nothing encodes
    frozen.release_text_encoders()
    assert all(p.device.type == "meta" for module in frozen.text_encoders for p in module.parameters())
    with pytest.raises(RuntimeError, match="the text encoders were released"):
        frozen.text(["a prompt never encoded"])

    settings = {"base_model": model, "max_steps": 1, "cache_latents": False, "group_size": 3, "batch_size": 1}
    train_generator(tiny_config("train-gen", **settings), folder, tmp_path / "with")
    train_generator(tiny_config("train-gen", stored_latents=False, **settings), folder, tmp_path / "without")
    first = [next(r for r in _rows(tmp_path / run) if r.get("step") == 1) for run in ("with", "without")]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-3, abs=1e-6)
    assert first[0]["model_err"] == pytest.approx(first[1]["model_err"], rel=1e-3)
