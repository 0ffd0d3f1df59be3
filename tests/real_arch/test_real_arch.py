"""The shipped GPU recipes on their real architectures, with random weights, through the CLI (DESIGN §10).

Random-weight SD 1.5 (U-Net 860 M, VAE, CLIP text encoder) and CLIP ViT-L/14 are written in the exact
hub folder layouts from the real configs; each GPU recipe then runs with its own settings (gradient
checkpointing, encoder sharing, its loss, β, learning rates, accumulation) and only size flags
overridden: --base-model (ViT-L/14 stands in for the recipes' ViT-H/14, which with AdamW would not fit
the CI machine's 24 GiB), --resolution 128, --batch-size 1, --max-steps 1, --mixed-precision no
(bf16 is for GPUs), --attention sdpa (xFormers needs CUDA) and --num-workers 0 (2 cores). SDXL base 1.0
(U-Net 2.57 B) runs its recipe in bf16 on CPUs with bf16 instructions, in fp32 (14 GB of weights) on others.
SigLIP 2 B/16 stands in for the SigLIP 2 recipe's So400m/14 (1.14 B) the same way. About 10 minutes on 2 CPU cores.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from perfusion_cli.environment import cpu_runs_bf16

pytestmark = [pytest.mark.real_arch, pytest.mark.slow]
SIZE = ["--resolution", "128", "--batch-size", "1", "--max-steps", "1", "--mixed-precision", "no",
        "--num-workers", "0"]


def _written(writer: str, base: str, folder):
    """``architectures.<writer>(base, folder)`` in a child process: the gigabytes it allocates would otherwise
    stay with this one (glibc keeps freed heap), and the training runs' memory check would find them missing."""
    code = f"from perfusion_cli.models.architectures import {writer}; {writer}({base!r}, {str(folder)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=900)
    return folder


def write_random_sd(base, folder):
    return _written("write_random_sd", base, folder)


def write_random_clip(base, folder):
    return _written("write_random_clip", base, folder)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-layouts")
    sd = write_random_sd("stable-diffusion-v1-5/stable-diffusion-v1-5", root / "stable-diffusion-v1-5")
    clip = write_random_clip("openai/clip-vit-large-patch14", root / "clip-vit-large-patch14")
    return sd, clip


def _perfusion(workspace, *args, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "perfusion_cli", "--workdir", str(workspace), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=timeout)
    print(f"perfusion {args[0]} {args[1] if len(args) > 1 else ''}: {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, f"perfusion {' '.join(map(str, args))}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


def _workspace(tmp_path, market):
    shutil.copytree(market[0], tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    return tmp_path


def test_the_layouts_are_the_hub_layouts(layouts):
    sd, clip = layouts
    index = json.loads((sd / "model_index.json").read_text())
    assert {k for k in index if not k.startswith("_")} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    for part in ("unet", "vae"):
        assert (sd / part / "config.json").is_file() and (sd / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (sd / "text_encoder" / "model.safetensors").is_file() and (clip / "model.safetensors").is_file()
    unet = json.loads((sd / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert json.loads((clip / "config.json").read_text())["vision_config"]["num_hidden_layers"] == 24


def test_sd15_industrial_recipe_runs_every_command(layouts, market, tmp_path):
    sd, clip = layouts
    ws = _workspace(tmp_path, market)
    recipe = ["--recipe", "sd15-industrial"]
    # --eval-every 0: no validation pass over ViT-L (28 s here), whatever the recipe's eval_every
    _perfusion(ws, "train-rm", *recipe, "--base-model", clip, "--batch-size", "1", "--max-steps", "1",
               "--mixed-precision", "no", "--num-workers", "0", "--eval-every", "0")
    rm = json.loads((ws / "runs" / "rm" / "run.json").read_text())
    assert rm["config"]["gradient_checkpointing"] is True and rm["config"]["backbone_lr"] == 3e-6
    rows = [json.loads(line) for line in (ws / "runs" / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert rows and not [row for row in rows if row.get("split") == "val"]
    # groups of 2 (the recipe's 5 cost twice the time and check nothing more)
    _perfusion(ws, "train-gen", *recipe, "--base-model", sd, "--attention", "sdpa", *SIZE, "--group-size", "2")
    gen = json.loads((ws / "runs" / "gen" / "run.json").read_text())
    # the adapter acts inside the encoder half, so ε_θ and ε_ref cannot share it
    assert gen["shared_encoder"] is False and gen["config"]["beta"] == 5000.0
    assert gen["config"]["gradient_checkpointing"] is True and gen["batches_per_process"] == [1 * 4]  # grad_accum 4
    rows = [json.loads(line) for line in (ws / "runs" / "gen" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["err_ratio"] > 0 and row["grad_norm"] >= 0 for row in rows)
    branch = json.loads((ws / "runs" / "gen" / "model" / "config.json").read_text())
    # the recipe's adapter: merchant tokens at the text width, K/V for each of SD 1.5's 16 cross-attentions
    assert branch["_class_name"] == "MerchantAdapter" and branch["token_dim"] == 768
    assert len(branch["cross_attention"]) == 16

    _perfusion(ws, "generate", *recipe, "--merchant", "102", "linen dress", "--n", "1", "--steps", "2",
               "--resolution", "128")
    metadata = json.loads((ws / "outputs" / "102" / "linen-dress-seed0" / "metadata.json").read_text())
    assert metadata["images"][0]["reward"] is not None and metadata["prompt_token_limit"] == 77

    from perfusion_cli.evaluation.scores import AestheticHead
    from safetensors.torch import save_file

    save_file(AestheticHead(768).state_dict(), str(tmp_path / "aesthetic.safetensors"))  # ViT-L/14's width
    _perfusion(ws, "eval", "gen", *recipe, "--max-pairs", "1", "--n-per-prompt", "2", "--steps", "2",
               "--clip-model", clip, "--aesthetic-weights", tmp_path / "aesthetic.safetensors",
               "--json", tmp_path / "eval.json")
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["unavailable"] == {} and summary["pairs"] == 1 and summary["denoising"]["groups"] == 1
    assert all(isinstance(value, float) for value in summary["models"]["perfusion"].values())
    assert summary["fid"]["features"].startswith("clip image features")


def test_sd15_pickapic_recipe_trains_both_models(layouts, market, tmp_path):
    sd, clip = layouts
    ws = _workspace(tmp_path, market)
    recipe = ["--recipe", "sd15-pickapic"]
    _perfusion(ws, "train-rm", *recipe, "--base-model", clip, "--batch-size", "1", "--max-steps", "1",
               "--mixed-precision", "no", "--num-workers", "0", "--eval-every", "0")
    # one micro-batch a step: the industrial test above checks that a recipe's grad_accum is applied
    _perfusion(ws, "train-gen", *recipe, "--base-model", sd, "--attention", "sdpa", *SIZE, "--grad-accum", "1")
    gen = json.loads((ws / "runs" / "gen" / "run.json").read_text())
    assert gen["config"]["group_size"] == 2 and gen["config"]["gradient_checkpointing"] is True
    assert gen["shared_encoder"] is True  # the ControlNet's residuals enter after the frozen encoder half
    assert torch.isfinite(torch.tensor(gen["final"]["loss"]))
    branch = json.loads((ws / "runs" / "gen" / "model" / "config.json").read_text())  # the paper's ControlNet
    assert branch["controlnet_config"]["block_out_channels"] == [320, 640, 1280, 1280]


def test_sdxl_industrial_recipe_trains_and_generates_on_sdxl_base(market, tmp_path):
    """SDXL base 1.0's layout (U-Net 2.57 B, both text encoders, added text_time conditions), random weights.
    In the recipe's bf16 where the CPU has bf16 instructions; in fp32 (about 14 GB of weights) where it has not:
    emulated bf16 did not finish this step in 15 minutes on an AVX2 machine."""
    precision = "bf16" if cpu_runs_bf16() else "no"
    sdxl = write_random_sd("stabilityai/stable-diffusion-xl-base-1.0", tmp_path / "stable-diffusion-xl-base-1.0")
    index = json.loads((sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    ws = _workspace(tmp_path / "ws", market)
    _perfusion(ws, "train-gen", "--recipe", "sdxl-industrial", "--base-model", sdxl, "--resolution", "128",
               "--batch-size", "1", "--grad-accum", "1", "--group-size", "2", "--max-steps", "1",
               "--mixed-precision", precision, "--num-workers", "0")
    gen = json.loads((ws / "runs" / "gen" / "run.json").read_text())
    assert gen["config"]["beta"] == 5000.0 and gen["config"]["gradient_checkpointing"] is True
    assert torch.isfinite(torch.tensor(gen["final"]["loss"]))
    branch = json.loads((ws / "runs" / "gen" / "model" / "config.json").read_text())
    # merchant tokens at SDXL's 2,048-wide text, K/V for each of its 70 cross-attention layers
    assert branch["token_dim"] == 2048 and len(branch["cross_attention"]) == 70
    _perfusion(ws, "generate", "--recipe", "sdxl-industrial", "--merchant", "102", "linen dress", "--n", "1",
               "--steps", "2", "--resolution", "128")
    assert len(list((ws / "outputs" / "102" / "linen-dress-seed0").glob("*.png"))) == 1
    shutil.rmtree(sdxl)  # 6.5 GB


def test_siglip2_industrial_recipe_trains_and_evaluates_the_reward_model_on_siglip2(market, tmp_path):
    """SigLIP 2 B/16's layout (375 M: its 256k-token text embedding, 12 + 12 layers, the attention-pooling head)
    through train-rm and eval rm with the SigLIP 2 recipe's own settings (the recipe's So400m/14 is 1.14 B: with
    AdamW in fp32 it would not leave room in 24 GiB; bench --plan counts it)."""
    siglip = write_random_clip("google/siglip2-base-patch16-224", tmp_path / "siglip2-base-patch16-224")
    config = json.loads((siglip / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["text_config"]["vocab_size"] == 256_000
    ws = _workspace(tmp_path / "ws", market)
    _perfusion(ws, "train-rm", "--recipe", "siglip2-industrial", "--base-model", siglip, "--batch-size", "1",
               "--grad-accum", "1", "--max-steps", "2", "--mixed-precision", "no", "--num-workers", "0")
    rm = json.loads((ws / "runs" / "rm" / "run.json").read_text())
    assert rm["config"]["gradient_checkpointing"] is True and rm["config"]["backbone_lr"] == 3e-6
    assert torch.isfinite(torch.tensor(rm["final"]["loss"]))
    saved = json.loads((ws / "runs" / "rm" / "model" / "config.json").read_text())
    assert saved["clip_config"]["model_type"] == "siglip" and saved["plugin_hidden"] == 512
    output = _perfusion(ws, "eval", "rm", "--recipe", "siglip2-industrial", "--checkpoint", ws / "runs" / "rm",
                        "--json", ws / "e.json")
    assert "GAUC" in output and json.loads((ws / "e.json").read_text())["models"][0]["n_groups"] > 0
    shutil.rmtree(siglip)


@pytest.mark.parametrize("family", ["flux", "sd35"])
def test_flow_recipes_train_and_generate_on_flux_widths_and_sd35_medium(family, market, tmp_path):
    """FLUX.1-dev's real widths (3072 hidden, 24 heads of 128, its RoPE axes, T5-XXL's 4096-wide layers) with 2
    double- and 4 single-stream blocks and 2 T5 layers (FLUX's 11.9 B parameters would not fit 24 GiB); SD 3.5
    medium's whole 2.24 B transformer with both CLIPs, T5 left out as its pipeline allows. Each through its GPU
    recipe with sizes overridden: 2 steps of train-gen on groups of 2, then generate 2 steps at 128²."""
    base, recipe, writer, overrides = {
        "flux": ("black-forest-labs/FLUX.1-dev", "flux-industrial", "write_random_flux",
                 {"transformer": {"num_layers": 2, "num_single_layers": 4}, "text_encoder_2": {"num_layers": 2}}),
        "sd35": ("stabilityai/stable-diffusion-3.5-medium", "sd35-industrial", "write_random_sd3", {}),
    }[family]
    module = "flux_architecture" if family == "flux" else "sd3_architecture"
    folder = tmp_path / family
    code = (f"from perfusion_cli.models.{module} import {writer}; {writer}({base!r}, {str(folder)!r}, {overrides!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=900)
    precision = "bf16" if cpu_runs_bf16() else "no"
    ws = _workspace(tmp_path / "ws", market)
    _perfusion(ws, "train-gen", "--recipe", recipe, "--base-model", folder, "--resolution", "128", "--batch-size", "1",
               "--grad-accum", "1", "--group-size", "2", "--max-steps", "2", "--mixed-precision", precision,
               "--num-workers", "0")
    gen = json.loads((ws / "runs" / "gen" / "run.json").read_text())
    assert gen["config"]["beta"] == 2500.0 and gen["config"]["gradient_checkpointing"] is True and gen["steps"] == 2
    assert torch.isfinite(torch.tensor(gen["final"]["loss"]))
    branch = json.loads((ws / "runs" / "gen" / "model" / "config.json").read_text())
    # merchant tokens at the joint attention's 4096 width, K/V for every attention with a text stream
    assert branch["token_dim"] == 4096 and len(branch["cross_attention"]) == {"flux": 2, "sd35": 24}[family]
    _perfusion(ws, "generate", "--recipe", recipe, "--merchant", "102", "linen dress", "--n", "1", "--steps", "2",
               "--resolution", "128", "--no-rerank")
    assert len(list((ws / "outputs" / "102" / "linen-dress-seed0").glob("*.png"))) == 1
    shutil.rmtree(folder)
