"""``bench --plan``: counts on the meta device checked against independent counts and measured peaks."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import Attention

from perfusion_cli.accounting import count, parameters
from perfusion_cli.config import GenTrainConfig, MerchantEncoderConfig, RMTrainConfig, build, load_recipe
from perfusion_cli.models.architectures import build_clip, build_sd
from perfusion_cli.models.controlnet_branch import PersonalizedBranch
from perfusion_cli.models.text import TextConditions
from perfusion_cli.plan import plan_recipe, planning_vocab, train_gen_step, train_rm_step
from tests.helpers import sd35_medium_guided_step_by_hand

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
META = torch.device("meta")


def test_the_shipped_configs_are_the_real_architectures():
    with META:
        sd = build_sd(SD15)
        branch = PersonalizedBranch.from_unet(sd.unet, planning_vocab(10), MerchantEncoderConfig())
        clip_l = build_clip("openai/clip-vit-large-patch14")
        clip_h = build_clip("laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
        stock = ControlNetModel.from_unet(sd.unet)
    # the published parameter counts of these checkpoints
    assert parameters(sd.unet) == 859_520_964 and parameters(sd.vae) == 83_653_863
    assert parameters(sd.text_encoder) == 123_060_480
    assert parameters(stock) == 361_279_120  # a SD 1.5 ControlNet
    # ours replaces only the image-hint encoder by a 1×1 conv on the merchant grid (16 → 320 channels)
    assert parameters(branch.controlnet) == parameters(stock) - parameters(stock.controlnet_cond_embedding) + 16 * 320 + 320
    assert parameters(clip_l) == 427_616_513 and parameters(clip_h) == 986_109_441


def test_the_shipped_sdxl_configs_are_sdxl_base():
    with META:
        sd = build_sd(SDXL)
    # the published parameter counts of stable-diffusion-xl-base-1.0's components
    assert parameters(sd.unet) == 2_567_463_684 and parameters(sd.vae) == 83_653_863
    assert parameters(sd.text_encoder) == 123_060_480 and parameters(sd.text_encoder_2) == 694_659_840
    assert sd.unet.config.addition_embed_type == "text_time" and sd.vae.config.force_upcast


def _hook_flops(modules, step) -> int:
    """An independent count: formulas per layer type from forward hooks (matmuls of linears, convolutions and
    attention), instead of per aten op."""
    total = [0]

    def linear(module, inputs, output):
        total[0] += 2 * output.numel() * module.in_features

    def conv(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2 * output.numel() * (module.in_channels // module.groups) * kernel

    def attention(module, inputs, kwargs, output):
        query = inputs[0] if inputs else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        context = query if context is None else context
        tokens = query.shape[-2] * query.shape[-1] / module.query_dim if query.dim() == 4 else query.shape[1]
        keys = context.shape[1] if context.dim() == 3 else context.shape[-2] * context.shape[-1]
        total[0] += 4 * query.shape[0] * tokens * keys * module.inner_dim

    handles = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                handles.append(layer.register_forward_hook(linear))
            elif isinstance(layer, torch.nn.Conv2d):
                handles.append(layer.register_forward_hook(conv))
            elif isinstance(layer, Attention):
                handles.append(layer.register_forward_hook(attention, with_kwargs=True))
    try:
        with torch.no_grad():
            step()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


@pytest.mark.parametrize("base, resolution, width, pooled", [(SD15, 512, 768, None), (SDXL, 1024, 2048, 1280)],
                         ids=["sd15", "sdxl"])
@pytest.mark.parametrize("personalized", [False, True])
def test_flops_of_a_guided_step_agree_with_an_independent_count(personalized, base, resolution, width, pooled):
    latent = resolution // 8
    with META:
        sd = build_sd(base, torch.float16)
        branch = PersonalizedBranch.from_unet(sd.unet, planning_vocab(10), MerchantEncoderConfig()).half()
        sample = torch.zeros(2, 4, latent, latent, dtype=torch.float16)
        context = TextConditions(torch.zeros(2, 77, width, dtype=torch.float16),
                                 None if pooled is None else torch.zeros(2, pooled, dtype=torch.float16))
        context = context.sized(resolution, resolution)
        cond = torch.zeros(2, branch.config.grid_channels, latent, latent, dtype=torch.float16)
        t = torch.zeros((), dtype=torch.long)

    def step():
        extra = branch(sample, t, context, cond=cond) if personalized else {}
        sd.unet(sample, t, **context.unet_kwargs(), **extra)

    with torch.no_grad():
        counted = count(step).flops
    independent = _hook_flops([sd.unet, branch], step)
    assert abs(counted - independent) / independent < 0.03, (counted / 1e9, independent / 1e9)
    if not personalized and base == SD15:
        assert counted / 1e9 == pytest.approx(1607, rel=0.005)  # one guided step of SD 1.5 at 512² (NOTES.md)


def _measured_peak(step) -> int:
    """Peak allocated bytes of a real CPU run, from the PyTorch profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step.run()
    path = Path(tempfile.mkdtemp()) / "memory.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return int(np.array(sizes).sum(axis=1).max())


@pytest.mark.parametrize("job, config", [
    ("train-gen", GenTrainConfig(base_model="tiny", resolution=64, batch_size=4, grid_size=4, grid_channels=8)),
    ("train-gen", GenTrainConfig(base_model="tiny", resolution=64, batch_size=4, grid_size=4, grid_channels=8,
                                 gradient_checkpointing=True, share_encoder=False)),
    ("train-gen", GenTrainConfig(base_model="tiny", resolution=64, batch_size=4, cache_latents=True)),
    ("train-rm", RMTrainConfig(base_model="tiny", batch_size=8, plugin_hidden=64)),
    ("train-rm", RMTrainConfig(base_model="tiny", batch_size=8, gradient_checkpointing=True)),
], ids=["gen", "gen-checkpointing", "gen-cached", "rm", "rm-checkpointing"])
def test_the_memory_estimate_is_within_15_percent_of_the_measured_peak(job, config):
    build = train_gen_step if job == "train-gen" else train_rm_step
    vocab = planning_vocab(50)
    planned = build(config, vocab)  # on the meta device: nothing allocated
    estimate = count(planned.run, planned.existing).peak_bytes
    torch.manual_seed(0)
    measured = _measured_peak(build(config, vocab, torch.device("cpu")))
    assert abs(estimate - measured) / measured < 0.15, (estimate / 2**20, measured / 2**20)


def test_per_image_flops_count_each_step_once_and_reuse_costs_a_base_step():
    """Per image: text + steps × a guided step + decode; reused or skipped branch steps cost a base step."""
    def generate(kind: str, every: int = 1, until: float = 1.0) -> tuple[dict, dict]:
        plan = plan_recipe("tiny-cpu", merchants=100, jobs=("generate",),
                           overrides={"train-gen": {"branch": kind}, "generate": {"branch_every": every,
                                                                                 "branch_until": until}})
        base, ours = plan["jobs"]
        return base, ours

    base, full = generate("controlnet")
    _, halved = generate("controlnet", every=2)
    _, first_half = generate("controlnet", until=0.5)
    assert full["gflops"] > 1.2 * base["gflops"]  # the ControlNet branch on all 20 steps
    assert halved["gflops"] - base["gflops"] == pytest.approx((full["gflops"] - base["gflops"]) / 2, rel=0.02)
    assert first_half["gflops"] == pytest.approx(halved["gflops"], rel=1e-6)
    adapter_base, adapter = generate("adapter")
    assert adapter_base["gflops"] == pytest.approx(base["gflops"])
    assert base["gflops"] < adapter["gflops"] < 1.1 * base["gflops"]


def test_the_sdxl_recipe_plans_offline_and_backs_its_comments():
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "sdxl-industrial.toml"
    jobs = {job["job"]: job for job in plan_recipe(recipe, merchants=100, jobs=("train-gen", "generate"))["jobs"]}
    # the four frozen modules of SDXL base 1.0 (U-Net, VAE, both text encoders)
    assert jobs["generate (base)"]["frozen_parameters"] == 3_468_837_867
    assert jobs["train-gen"]["fits"] == {"24 GB": False, "40 GB": True, "80 GB": True}  # the recipe's comment
    assert "1024²" in jobs["train-gen"]["shape"] and "1024²" in jobs["generate (base)"]["shape"]
    ratio = jobs["generate (PerFusion)"]["gflops"] / jobs["generate (base)"]["gflops"]
    assert 1.0 < ratio < 1.1, ratio  # personalization at close to the base's cost


def _siglip_training_flops(groups: int, k: int, width: int, ffn: int, layers: int, patches: int, patch: int,
                           tokens: int) -> float:
    """SigLIP's train-rm step written out by hand: per image its ViT (patch embedding, attention and MLP matmuls,
    the attention-pooling head), per prompt its text tower (last-token head); forward + backward (×3) + the
    forward that gradient checkpointing recomputes (×1)."""
    def tower(n: int) -> float:
        return layers * (2 * n * 4 * width ** 2 + 2 * n * 2 * width * ffn + 2 * 2 * n * n * width)

    image = (tower(patches) + 2 * patches * width * 3 * patch * patch
             + 2 * width ** 2 * (1 + 2 * patches) + 2 * width ** 2 + 2 * 2 * patches * width + 2 * 2 * width * ffn)
    text = tower(tokens) + 2 * width ** 2
    return 4 * (groups * k * image + groups * text) / 1e9


def test_the_siglip2_recipe_plans_offline_and_its_flops_agree_with_a_hand_count():
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "siglip2-industrial.toml"
    [job] = plan_recipe(recipe, merchants=100, jobs=("train-rm",))["jobs"]
    with META:
        so400m = build_clip("google/siglip2-so400m-patch14-384")
        base = build_clip("google/siglip2-base-patch16-224")
    # the published sizes: SigLIP 2 So400m/14 1.14 B (its vision tower 428 M), B/16 375 M
    assert parameters(so400m) == 1_136_008_498 and parameters(so400m.vision_model) == 428_225_600
    assert parameters(base) == 375_187_970
    assert "16 groups × 5 images at 384² + 64-token prompts" == job["shape"]
    expected = _siglip_training_flops(16, 5, 1152, 4304, 27, (384 // 14) ** 2, 14, 64)
    assert job["gflops"] == pytest.approx(expected, rel=0.03)  # the rest: norms, GELUs, softmax, plug-ins
    assert job["fits"]["24 GB"] and job["trainable_parameters"] > parameters(so400m)  # the backbone + plug-ins


@pytest.mark.parametrize("recipe", ["tiny-cpu", "sd15-industrial"])  # SDXL's row: tests/smoke/test_sdxl.py
def test_an_online_step_costs_its_draws_its_scores_and_a_step_on_their_latents(recipe):
    """The online row against its parts counted separately: batch × group images drawn as generate draws one
    (sample_steps guided steps, text and decode per image), the reward model's forward, the train-gen step on
    cached latents (the draws' own; no VAE encode)."""
    train = build(GenTrainConfig, load_recipe(recipe).get("train-gen", {}))
    draws = train.batch_size * train.group_size
    same = {"train-gen": {"cache_latents": True},
            "generate": {"steps": train.sample_steps, "guidance": train.sample_guidance, "resolution": train.resolution,
                         "branch_every": 1, "branch_until": 1.0}}
    jobs = {job["job"]: job for job in plan_recipe(recipe, merchants=100, overrides=same)["jobs"]}
    online, step = jobs["train-gen --online"], jobs["train-gen"]
    one_image = jobs["generate (PerFusion)"]["gflops"]  # in fp16; the online draw runs in the training dtype
    scoring = online["gflops"] - step["gflops"] - draws * one_image
    assert 0 < scoring < 0.2 * online["gflops"], (online["gflops"], step["gflops"], draws * one_image)
    assert online["peak_gib"] > step["peak_gib"]  # the reward model's weights are resident too
    assert online["trainable_parameters"] == step["trainable_parameters"]
    assert f"{draws // train.group_size} (merchant, prompt) pairs × {train.group_size}" in online["shape"]


def test_the_train_gen_plan_traces_the_trainers_own_step(monkeypatch):
    """The plan runs ``GroupDPOObjective.terms``, the step train-gen runs: a change there moves the plan. Here the
    change is a second personalized prediction per step (as a second-order anchor would add): the step's FLOPs
    grow by one forward and backward through the U-Net and the branch."""
    from perfusion_cli.objective import GroupDPOObjective

    config = GenTrainConfig(base_model="tiny", resolution=64, batch_size=2, group_size=3, cache_latents=True)
    before = count(train_gen_step(config, planning_vocab(10)).run).flops
    original = GroupDPOObjective.terms

    def twice(self, policy, latents, *args):
        first, terms = original(self, policy, latents, *args)
        second, _ = original(self, policy, latents, *args)
        return first + second, terms

    monkeypatch.setattr(GroupDPOObjective, "terms", twice)
    after = count(train_gen_step(config, planning_vocab(10)).run).flops
    # a step: the frozen reference forward, the personalized forward and its backward (×3): 4 U-Net passes;
    # twice: 8 (the text encoder, counted once, is a few per cent)
    assert after / before == pytest.approx(2.0, rel=0.02), after / before


def test_the_flux_recipe_plans_offline_and_a_step_is_flux_counted_by_hand():
    """FLUX.1-dev through the recipe: the frozen parts are FLUX's published sizes, one denoising step at 1024² with
    512 T5 tokens is FLUX written out by hand (tests/unit/test_flux_adapter.py), the adapter adds at most 5 % a
    step and an image, and the training step fits 80 GB cards only (the recipe's comment)."""
    plan = plan_recipe("flux-industrial", merchants=100, jobs=("train-gen", "generate"))
    jobs = {job["job"]: job for job in plan["jobs"]}
    base, ours, train = jobs["generate (base)"], jobs["generate (PerFusion)"], jobs["train-gen"]
    # transformer 11.90 B, T5-XXL's encoder 4.76 B, CLIP-L's text tower 123 M, the 16-channel VAE 84 M
    assert base["frozen_parameters"] == pytest.approx(16.87e9, rel=0.002)
    n, t, d = 64 * 64, 512, 3072
    block = 2 * 12 * (n + t) * d * d + 4 * (n + t) ** 2 * d
    hand = 57 * block + 2 * n * 64 * d + 2 * t * 4096 * d + 2 * n * d * 64
    step = float(base["notes"].split("one step (guidance embedded) ")[1].split(" GFLOPs")[0])
    assert step * 1e9 == pytest.approx(hand, rel=0.03)
    assert "28 steps, guidance 3.5 (batch 1 per step)" in base["shape"] and base["precision"] == "bf16"
    assert 1.0 < ours["gflops"] / base["gflops"] <= 1.05
    assert train["fits"] == {"24 GB": False, "40 GB": False, "80 GB": True}
    assert train["trainable_parameters"] < 0.05 * train["frozen_parameters"]


def test_the_sd35_recipe_plans_offline_and_a_guided_step_is_sd35_counted_by_hand():
    """SD 3.5 medium through the recipe: the frozen parts are its published sizes, one guided step at 1024² (batch 2,
    77 CLIP + 256 T5 tokens) is SD 3.5 written out by hand (tests/unit/test_sd3_adapter.py), and the adapter adds
    at most 5 % an image."""
    plan = plan_recipe("sd35-industrial", merchants=100, jobs=("generate",))
    jobs = {job["job"]: job for job in plan["jobs"]}
    base, ours = jobs["generate (base)"], jobs["generate (PerFusion)"]
    # transformer 2.24 B, T5-XXL's encoder 4.76 B, OpenCLIP bigG's text tower 695 M, CLIP-L's 124 M, the VAE 84 M
    assert base["frozen_parameters"] == pytest.approx(7.91e9, rel=0.002)
    hand = sd35_medium_guided_step_by_hand()
    step = float(base["notes"].split("one guided step ")[1].split(" GFLOPs")[0])
    assert step * 1e9 == pytest.approx(hand, rel=0.03)
    assert "40 steps, guidance 4.5 (batch 2 per step)" in base["shape"] and base["precision"] == "bf16"
    assert 1.0 < ours["gflops"] / base["gflops"] <= 1.05
