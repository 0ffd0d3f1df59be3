"""SD 3.5 as a flow family: its frozen parts (CLIP-L + CLIP-G + optional T5 text, 16-channel latents) through the
objective's one code path at toy widths; the merchant adapter on its joint attention (exact at zero, personal
when trained, only its weights learn, diffusers' own SD3 pipeline draws with it); and SD 3.5 medium's published
transformer counted at 1024² against a hand count, with the adapter's cost."""

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from perfusion_cli.accounting import count, parameters
from perfusion_cli.config import GenTrainConfig, MerchantEncoderConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.frozen_sd3 import FrozenSD3, SD3Components
from perfusion_cli.models.frozen_transformer import JointText
from perfusion_cli.models.sd3_adapter import SD3MerchantAdapter
from perfusion_cli.models.tiny import build_tokenizer
from perfusion_cli.noise import RectifiedFlow
from perfusion_cli.objective import GroupDPOObjective
from tests.helpers import one_step_moves_only_the_branch, pipeline_images, sd35_medium_guided_step_by_hand

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b"])])
MERCHANT = MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8)
ARCHITECTURES = Path(__file__).resolve().parents[2] / "perfusion_cli" / "architectures"


def _clip(tokenizer, width: int, projection: int) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=32,
                                                      num_hidden_layers=2, num_attention_heads=2,
                                                      max_position_embeddings=16, projection_dim=projection))


def _frozen(t5: bool = True) -> FrozenSD3:
    """SD 3.5 medium's structure at toy widths: dual attention in the first block, RMS q/k norms, the last block's
    text stream ending in its attention (``context_pre_only``)."""
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 16
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 32),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16, shift_factor=0.06,
                        scaling_factor=1.5, mid_block_add_attention=False)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=24, out_channels=16, pos_embed_max_size=16,
                                        dual_attention_layers=(0,), qk_norm="rms_norm")
    encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                        num_heads=2)) if t5 else None
    parts = SD3Components(vae, _clip(tokenizer, 8, 8), tokenizer, _clip(tokenizer, 16, 16), tokenizer, encoder_3,
                          tokenizer, transformer, FlowMatchEulerDiscreteScheduler(shift=3.0), max_sequence_length=12)
    return FrozenSD3(parts, torch.device("cpu"), torch.float32)


def _batch() -> GroupBatch:
    generator = torch.Generator().manual_seed(0)
    selected = torch.zeros(2, 3, dtype=torch.bool)
    selected[:, 0] = True
    return GroupBatch(images=torch.rand(2, 3, 3, 32, 32, generator=generator), valid=torch.ones(2, 3, dtype=torch.bool),
                      selected=selected, features=torch.tensor([[1], [2]]), prompts=["linen dress", "wool hoodie"],
                      merchant_ids=["a", "b"], session_ids=["s0", "s1"])


def _setup(t5: bool = True):
    frozen = _frozen(t5)
    config = GenTrainConfig(base_model="sd3-toy", resolution=32, beta=2000.0, adapter_tokens=2, merchant=MERCHANT)
    branch = frozen.create_branch(config, VOCAB, "sd3-toy")
    return GroupDPOObjective(frozen, config), frozen, branch


def _perturb(branch, std=0.3):
    with torch.no_grad():
        for layer in branch.layers.values():
            layer.to_v.weight.normal_(std=std)


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_text_is_both_clips_side_by_side_then_t5_and_the_process_is_flow(t5):
    objective, frozen, branch = _setup(t5)
    assert isinstance(objective.process, RectifiedFlow)
    assert len(branch.layers) == 2  # both blocks' joint attention; the first block's image-only attn2 is not a layer
    text = frozen.text(["linen dress", "wool hoodie"])
    clip_l = frozen.sd.text_encoder(frozen.sd.tokenizer(["linen dress"], padding="max_length", max_length=16,
                                                        return_tensors="pt").input_ids, output_hidden_states=True)
    assert isinstance(text, JointText) and text.hidden.shape == (2, 16 + (12 if t5 else 16), 32)
    assert torch.allclose(text.hidden[0, :16, :8], clip_l.hidden_states[-2][0])  # CLIP-L's penultimate layer first
    assert torch.equal(text.hidden[:, :16, 24:], torch.zeros(2, 16, 8))  # 8 + 16 wide, padded to the joint 32
    assert torch.allclose(text.pooled[0, :8], clip_l.text_embeds[0]) and text.pooled.shape == (2, 24)
    if not t5:
        assert torch.equal(text.hidden[:, 16:], torch.zeros(2, 16, 32))
    assert frozen.latents(_batch().images[0]).shape == (3, 16, 16, 16)


@torch.no_grad()
def test_an_untrained_sd3_adapter_is_the_base_bit_for_bit_and_a_trained_one_is_per_merchant():
    objective, frozen, branch = _setup()
    torch.manual_seed(1)
    noisy, times = torch.randn(1, 16, 16, 16).repeat(2, 1, 1, 1), torch.tensor([600.0, 600.0])  # one input twice
    text = frozen.text(["linen dress", "linen dress"])
    base = frozen.velocity(noisy, times, text)
    extra = branch(noisy, times, text, features=torch.tensor([[1], [2]]))
    assert torch.equal(frozen.velocity(noisy, times, text, extra), base)
    loss, logs = objective(branch, _batch())
    assert logs["model_err"] == logs["ref_err"] and loss.item() == pytest.approx(math.log(3), abs=1e-6)
    _perturb(branch)
    personal = frozen.velocity(noisy, times, text, branch(noisy, times, text, features=torch.tensor([[1], [2]])))
    assert torch.equal(base[0], base[1]) and (personal - base).abs().max() > 1e-3
    assert (personal[0] - personal[1]).abs().max() > 1e-3  # the same input: two merchants, two velocities


def test_one_group_step_on_sd3_moves_only_the_adapter_and_it_loads_back(tmp_path):
    objective, frozen, branch = _setup()
    _perturb(branch, 0.2)
    one_step_moves_only_the_branch(objective, frozen.sd.transformer, branch, _batch())
    branch.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = load_branch(tmp_path / "model")
    assert type(loaded) is SD3MerchantAdapter
    assert all(torch.equal(value, branch.state_dict()[name]) for name, value in loaded.state_dict().items())


@torch.no_grad()
def test_diffusers_sd3_pipeline_draws_personalized_images_with_the_adapter():
    """Generation on SD 3.5 needs no sampler of ours: diffusers' ``StableDiffusion3Pipeline`` (flow-matching Euler,
    classifier-free guidance) takes the merchant tokens as ``joint_attention_kwargs``, the guided batch's two
    halves given the same merchant."""
    frozen = _frozen()
    parts = frozen.sd
    pipeline = StableDiffusion3Pipeline(parts.transformer, parts.noise_scheduler, parts.vae, parts.text_encoder,
                                        parts.tokenizer, parts.text_encoder_2, parts.tokenizer_2, parts.text_encoder_3,
                                        parts.tokenizer_3)
    pipeline.set_progress_bar_config(disable=True)
    branch = SD3MerchantAdapter.from_transformer(parts.transformer, VOCAB, MERCHANT, tokens=2)

    def draw(adapter=None):
        return pipeline_images(pipeline, parts.transformer, ["linen dress", "wool hoodie"], adapter,
                               torch.tensor([[1], [2]]), guided=True, height=32, width=32, num_inference_steps=3,
                               guidance_scale=4.0, max_sequence_length=12)

    base = draw()
    assert torch.equal(draw(branch), base)
    _perturb(branch, 0.5)
    personalized = draw(branch)
    assert personalized.shape == base.shape == (2, 3, 32, 32) and (personalized - base).abs().max() > 1e-3


def test_sd35_medium_at_1024_costs_its_hand_count_per_guided_step_and_the_adapter_under_5_percent_more():
    """SD 3.5 medium's published transformer (perfusion_cli/architectures/sd35-medium) on the meta device: one guided
    step at 1024² (batch 2) with 77 CLIP + 256 T5 tokens, counted through ``FrozenSD3.velocity``, against SD 3.5
    written out by hand; then with the merchant adapter."""
    from perfusion_cli.plan import planning_vocab

    config = json.loads((ARCHITECTURES / "sd35-medium" / "transformer.json").read_text())
    meta = torch.device("meta")
    with meta:
        transformer = SD3Transformer2DModel.from_config(config).to(torch.bfloat16)
        noisy = torch.zeros(2, 16, 128, 128, dtype=torch.bfloat16)  # 1024² through the 8× VAE
        times = torch.full((2,), 500.0)
        text = JointText(torch.zeros(2, 77 + 256, 4096, dtype=torch.bfloat16), torch.zeros(2, 2048, dtype=torch.bfloat16))
    assert parameters(transformer) == pytest.approx(2.24e9, rel=0.01)  # SD 3.5 medium's MMDiT-X
    parts = SD3Components(None, None, None, None, None, None, None, transformer, None)
    frozen = FrozenSD3.__new__(FrozenSD3)  # the velocity call alone: no VAE or text encoders to build
    frozen.sd = parts
    with torch.no_grad():
        base = count(lambda: frozen.velocity(noisy, times, text)).flops
    hand = sd35_medium_guided_step_by_hand()
    assert base == pytest.approx(hand, rel=0.03), (base / 1e12, hand / 1e12)
    with meta:
        adapter = SD3MerchantAdapter.from_transformer(transformer, planning_vocab(100), MerchantEncoderConfig(),
                                                      tokens=4).to(torch.bfloat16)
        features = torch.zeros(2, 7, dtype=torch.long)
    adapter.attach(transformer)
    with torch.no_grad():
        personalized = count(lambda: frozen.velocity(noisy, times, text,
                                                     adapter(noisy, times, text, features=features))).flops
    assert len(adapter.layers) == 24
    print(f"SD 3.5 medium guided step: {base / 1e9:,.0f} GFLOPs counted, {hand / 1e9:,.0f} by hand; adapter "
          f"×{personalized / base:.4f}; transformer {parameters(transformer) / 1e9:.3f} B")
    assert 1.0 < personalized / base <= 1.05, personalized / base
