"""The group objective on FLUX.1's layout at toy widths: the flow family's frozen parts (16-channel VAE latents,
CLIP-L pooled + T5 tokens, packed 2×2 patches, guidance embedding) through the objective's one code path."""

import math

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import T5Config, T5EncoderModel

from perfusion_cli.config import GenTrainConfig, MerchantEncoderConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.flux_adapter import FluxMerchantAdapter
from perfusion_cli.models.frozen_flux import FluxComponents, FrozenFlux, JointText
from perfusion_cli.models.tiny import build_tiny_clip, build_tokenizer
from perfusion_cli.noise import RectifiedFlow
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.training.tiny_bases import text_encoder_from_clip
from tests.helpers import one_step_moves_only_the_branch, pipeline_images

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b"])])
MERCHANT = MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8)


def _frozen() -> FrozenFlux:
    tokenizer = build_tokenizer()
    clip = text_encoder_from_clip(build_tiny_clip(tokenizer))
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 32),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16, shift_factor=0.1,
                        scaling_factor=0.5, mid_block_add_attention=False)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                         pooled_projection_dim=clip.config.hidden_size, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6))
    parts = FluxComponents(vae, clip, tokenizer, t5, tokenizer, transformer,
                           FlowMatchEulerDiscreteScheduler(shift=3.0), max_sequence_length=12)
    return FrozenFlux(parts, torch.device("cpu"), torch.float32)


def _batch() -> GroupBatch:
    generator = torch.Generator().manual_seed(0)
    selected = torch.zeros(2, 3, dtype=torch.bool)
    selected[:, 0] = True
    return GroupBatch(images=torch.rand(2, 3, 3, 32, 32, generator=generator),
                      valid=torch.ones(2, 3, dtype=torch.bool), selected=selected, features=torch.tensor([[1], [2]]),
                      prompts=["linen dress", "wool hoodie"],
                      merchant_ids=["a", "b"], session_ids=["s0", "s1"])


def _setup(beta=2000.0):
    frozen = _frozen()
    branch = FluxMerchantAdapter.from_transformer(frozen.sd.transformer, VOCAB, MERCHANT, tokens=2)
    branch.attach(frozen.sd.transformer)
    config = GenTrainConfig(base_model="flux-toy", resolution=32, beta=beta)
    return GroupDPOObjective(frozen, config), frozen, branch


def test_flux_parts_give_unpacked_latents_joint_text_and_a_flow_process():
    objective, frozen, _ = _setup()
    assert isinstance(objective.process, RectifiedFlow)
    latents = frozen.latents(_batch().images[0])
    assert latents.shape == (3, 16, 16, 16)  # 32² pixels, one downsampling: 16 × 16 × 16
    text = frozen.text(["linen dress", "wool hoodie"])
    assert isinstance(text, JointText) and text.hidden.shape == (2, 12, 24)
    assert text.pooled.shape == (2, frozen.sd.text_encoder.config.hidden_size)
    assert isinstance(text[torch.tensor([0, 0, 1])], JointText) and text.sized(32, 32) is text
    frozen.cache = True  # cache_latents: encoded once per (session, candidate), the same latents
    keys = [("s", k) for k in range(3)]
    assert torch.equal(frozen.latents(_batch().images[0], keys), latents) and set(frozen._latents) == set(keys)
    assert torch.equal(frozen.latents(torch.zeros_like(_batch().images[0]), keys), latents)  # read, not encoded
    repeated = frozen.text(["wool hoodie", "linen dress", "wool hoodie"])  # each prompt encoded once, rows in order
    assert isinstance(repeated, JointText) and set(frozen._texts) == {"linen dress", "wool hoodie"}
    torch.testing.assert_close(repeated.hidden, text.hidden[[1, 0, 1]])
    torch.testing.assert_close(repeated.pooled, text.pooled[[1, 0, 1]])


@torch.no_grad()
def test_an_untrained_flux_adapter_predicts_the_base_velocity_and_the_loss_is_log_2():
    objective, frozen, branch = _setup()
    torch.manual_seed(0)
    loss, logs = objective(branch, _batch())
    assert logs["model_err"] == logs["ref_err"] and logs["kl"] == 0.0
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)  # one positive against two equal negatives


def test_one_group_step_on_flux_moves_only_the_adapter():
    objective, frozen, branch = _setup()
    with torch.no_grad():
        for layer in branch.layers.values():
            layer.to_v.weight.normal_(std=0.2)
    one_step_moves_only_the_branch(objective, frozen.sd.transformer, branch, _batch())


@torch.no_grad()
def test_diffusers_flux_pipeline_draws_personalized_images_with_the_adapter():
    """Generation on FLUX needs no sampler of ours: diffusers' own ``FluxPipeline`` (flow-matching Euler, the guidance
    embedding) takes the merchant tokens as ``joint_attention_kwargs``. An untrained adapter draws the base's image
    from the same seed; a trained one another."""
    from diffusers import FluxPipeline

    frozen = _frozen()
    parts = frozen.sd
    pipeline = FluxPipeline(parts.noise_scheduler, parts.vae, parts.text_encoder, parts.tokenizer, parts.text_encoder_2,
                            parts.tokenizer_2, parts.transformer)
    pipeline.set_progress_bar_config(disable=True)
    branch = FluxMerchantAdapter.from_transformer(parts.transformer, VOCAB, MERCHANT, tokens=2)

    def draw(adapter=None):
        return pipeline_images(pipeline, parts.transformer, ["linen dress", "wool hoodie"], adapter,
                               torch.tensor([[1], [2]]), height=32, width=32, num_inference_steps=3,
                               guidance_scale=3.5, max_sequence_length=12)

    base = draw()
    assert torch.equal(draw(branch), base)
    for layer in branch.layers.values():
        layer.to_v.weight.normal_(std=0.5)
    personalized = draw(branch)
    assert personalized.shape == base.shape == (2, 3, 32, 32)
    assert (personalized - base).abs().max() > 1e-3
