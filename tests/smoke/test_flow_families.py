"""The flow transformers through ``perfusion train-gen``: FLUX.1's and SD 3.5's layouts at toy widths, written as
hub-layout folders (``write_random_flux`` / ``write_random_sd3``) and loaded by the CLI like any ``--base-model``
folder: the family is read from the folder's ``model_index.json`` (``models/families.py``), the merchant adapter
attaches to its joint attention, the group objective trains it on velocity errors, and the run saves it."""

import json

import pytest
import torch
from typer.testing import CliRunner

from perfusion_cli.cli.main import app
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.families import load_frozen
from perfusion_cli.training.rm import train_reward_model
from tests.helpers import TOY_FLOW, read_jsonl, tiny_config

runner = CliRunner()


def _perfusion(*args) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, f"perfusion {' '.join(map(str, args))}\n{result.output}"
    return result.output


@pytest.mark.parametrize("family", TOY_FLOW)
def test_train_gen_trains_the_joint_attention_adapter_of_a_flow_transformer_folder(family, market, tmp_path):
    write, base, adapter, overrides = TOY_FLOW[family]
    folder = write(base, tmp_path / family, overrides, dtype=torch.float32)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == {"flux": "FluxPipeline", "sd35": "StableDiffusion3Pipeline"}[family]
    run = tmp_path / "run"
    _perfusion("train-gen", market[0], "--out", run, "--base-model", folder, "--resolution", 64,
               "--group-size", 3, "--batch-size", 1, "--max-steps", 2, "--num-workers", 0, "--branch", "adapter",
               "--no-stored-latents", "--lr", "1e-2")
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == 2 and summary["shared_encoder"] is False
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row.get("split", "train") == "train"]
    assert train and all(torch.isfinite(torch.tensor(row["loss"])) for row in train)
    assert train[0]["err_ratio"] == pytest.approx(1.0, abs=1e-6)  # an untrained adapter is the base
    branch = load_branch(run / "model")
    assert type(branch).__name__ == adapter and branch.config.base_model == str(folder.resolve())
    assert any(layer.to_v.weight.abs().sum() > 0 for layer in branch.layers.values())  # V left zero: it learned
    # generate and eval gen open the run through the flow family's pipeline
    merchant = json.loads((market[0] / "merchant_table.jsonl").read_text().splitlines()[0])["merchant_id"]
    out = tmp_path / "outputs"
    _perfusion("generate", "--model", run, "--data", market[0], "--merchant", merchant, "linen dress", "--n", 2,
               "--steps", 2, "--out", out, "--no-rerank")
    made = json.loads(next(out.rglob("metadata.json")).read_text())
    assert made["base_model"] == str(folder.resolve()) and len(made["images"]) == 2 and made["resolution"] == 64
    _perfusion("eval", "gen", "--model", run, "--data", market[0], "--max-pairs", 2, "--n-per-prompt", 1,
               "--steps", 2, "--json", tmp_path / "eval.json")
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["pairs"] == 2 and set(summary["models"]) >= {"base", "perfusion"}
    assert summary["denoising"]["groups"] == 2  # the denoising errors on as many groups as pairs, not a batch of 8
    # bench measures the run: base against personalized drawing (SDPA only), its step against Diffusion-DPO's
    _perfusion("bench", "--model", run, "--data", market[0], "--steps", 1, "--repeats", 1, "--batch-size", 2,
               "--json", tmp_path / "bench.json")
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert set(bench["generation"]["backends"]) == {"sdpa"}
    assert bench["generation"]["backends"]["sdpa"]["latency_ratio"] > 0
    step = bench["train_step"]
    transformer = load_frozen(str(folder), torch.device("cpu")).sd.transformer
    assert step["shared_encoder"] is False and step["groups"] == 2 and "perfusion_two_passes" not in step
    assert step["diffusion_dpo"]["trainable_parameters"] == sum(p.numel() for p in transformer.parameters())
    assert step["perfusion_shared_encoder"]["trainable_parameters"] == sum(p.numel() for p in branch.parameters())


def test_a_flow_transformer_refuses_what_it_does_not_run_yet_in_one_line(market, tmp_path):
    write, base, _, overrides = TOY_FLOW["flux"]
    folder = write(base, tmp_path / "flux", overrides, dtype=torch.float32)
    common = ["train-gen", str(market[0]), "--base-model", str(folder), "--resolution", "64",
              "--max-steps", "1", "--num-workers", "0", "--no-stored-latents"]
    for extra, message in ((["--branch", "controlnet"], "--branch controlnet is not built for flow transformers"),
                           (["--branch", "adapter", "--resolution", "66"], "must be a multiple of 4"),
                           (["--branch", "adapter", "--attention", "xformers"], "run diffusers' SDPA attention")):
        result = runner.invoke(app, [*common, "--out", str(tmp_path / "r"), *extra, "--overwrite"])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("family", TOY_FLOW)
def test_a_local_flow_folder_is_planned_like_a_shipped_one(family, tmp_path):
    """``bench --plan --base-model FOLDER`` and the memory check before train-gen read a local FLUX or SD 3.5
    folder's own configs, as they read the shipped ones for the hub ids: the toy folder's parameters, counted on
    the meta device, are the ones written."""
    from perfusion_cli.accounting import parameters
    from perfusion_cli.config import GenTrainConfig
    from perfusion_cli.models.families import frozen_layout, is_flow_transformer
    from perfusion_cli.plan import planning_vocab
    from perfusion_cli.preflight import training_peak

    write, base, _, overrides = TOY_FLOW[family]
    folder = write(base, tmp_path / family, overrides, dtype=torch.float32)
    assert is_flow_transformer(str(folder)) and not is_flow_transformer("tiny")
    counted = frozen_layout(str(folder), torch.float32, torch.device("meta"))
    loaded = load_frozen(str(folder), torch.device("cpu"))
    assert type(counted) is type(loaded)
    assert parameters(counted.sd.transformer) == parameters(loaded.sd.transformer) > 0
    config = GenTrainConfig(base_model=str(folder), resolution=64, batch_size=1, group_size=3)
    assert training_peak(config, planning_vocab(10)) > 0


def test_pretrain_base_flux_makes_a_flux_folder_that_ours_and_diffusers_pipelines_load(tmp_path):
    """``pretrain-base --flux`` (a few steps here; the bundled base needs thousands): a ``FluxPipeline`` folder of
    fp16 safetensors, without a guidance embedding, so it is drawn with classifier-free guidance; diffusers' stock
    ``FluxPipeline`` loads and draws it, and train-gen's loader reads it as FLUX."""
    from diffusers import FluxPipeline

    from perfusion_cli.config import ASSETS

    _perfusion("pretrain-base", "--flux", "--source", ASSETS, "--out", tmp_path, "--unet-steps", 3, "--images", 64)
    folder = tmp_path / "tiny-flux"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert not list(folder.rglob("*.bin")) and sum(f.stat().st_size for f in folder.rglob("*.safetensors")) < 20e6
    frozen = load_frozen(str(folder), torch.device("cpu"))
    assert frozen.guided_by_batch and frozen.text_lengths == [16, 16] and frozen.latent_scale == 4
    stock = FluxPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    image = stock("linen dress", height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
                  max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_online_training_draws_its_groups_from_a_flow_transformer(market, tmp_path):
    """train-gen --online on FLUX's layout: each step draws its candidates with the flow pipeline (Euler steps from
    each candidate's noise, or the stochastic flow step at η > 0), ranks them with the reward model and trains on
    them; the guard probes between steps."""
    write, base, _, overrides = TOY_FLOW["flux"]
    folder = write(base, tmp_path / "flux", overrides, dtype=torch.float32)
    train_reward_model(tiny_config("train-rm"), market[0], tmp_path / "rm")
    common = ["train-gen", market[0], "--base-model", folder, "--resolution", 64, "--group-size", 3, "--batch-size",
              1, "--num-workers", 0, "--no-stored-latents", "--online", "--reward", tmp_path / "rm", "--online-mix", 0,
              "--sample-steps", 2, "--probe-every", 1, "--probe-pairs", 2, "--judge-clip", "tiny"]
    _perfusion(*common, "--out", tmp_path / "online", "--max-steps", 2)
    rows = read_jsonl(tmp_path / "online" / "metrics.jsonl")
    steps = [row for row in rows if "loss" in row]
    assert [row["online"] for row in steps] == [1, 1] and all(row["sample_seconds"] > 0 for row in steps)
    assert all(torch.isfinite(torch.tensor([row["loss"], row["reward"]])).all() for row in steps)
    assert [row["step"] for row in rows if row.get("split") == "probe"] == [0, 1, 2]
    # η > 0: the stochastic flow step draws the groups; the same seed gives other candidates, so another reward
    _perfusion(*common, "--out", tmp_path / "eta", "--max-steps", 1, "--sample-eta", 0.7)
    noisy = [row for row in read_jsonl(tmp_path / "eta" / "metrics.jsonl") if "loss" in row]
    assert noisy[0]["online"] == 1 and noisy[0]["sample_seconds"] > 0
    assert noisy[0]["reward"] != steps[0]["reward"] and torch.isfinite(torch.tensor(noisy[0]["loss"]))
