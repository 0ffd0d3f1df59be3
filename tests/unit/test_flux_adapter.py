"""The merchant adapter on FLUX's joint attention: exactly the base until trained, only its own weights learn,
it acts on the double-stream blocks' image stream, and it saves and loads as a branch."""

import pytest
import torch
from diffusers import FluxTransformer2DModel

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.flux_adapter import FluxMerchantAdapter

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b", "c"]),
                      Feature("style", "categorical", ["x", "y"])])
MERCHANT = MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8)


def _transformer():
    """FLUX.1's layout at toy widths: 2 double-stream and 2 single-stream blocks, guidance embedding, RoPE over
    (time, height, width) axes summing to the head width."""
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                  pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()


def _inputs(batch=2, side=4, text_tokens=5):
    torch.manual_seed(1)
    axis = torch.arange(side).float()
    image_ids = torch.stack(torch.meshgrid(torch.zeros(1), axis, axis, indexing="ij"), -1).view(-1, 3)
    return {"hidden_states": torch.randn(batch, side * side, 16),
            "encoder_hidden_states": torch.randn(batch, text_tokens, 24),
            "pooled_projections": torch.randn(batch, 12), "timestep": torch.tensor([0.3, 0.9]),
            "img_ids": image_ids, "txt_ids": torch.zeros(text_tokens, 3), "guidance": torch.full((batch,), 3.5)}


def _adapter(transformer):
    adapter = FluxMerchantAdapter.from_transformer(transformer, VOCAB, MERCHANT, tokens=3, base_model="flux-toy",
                                                   resolution=64)
    adapter.attach(transformer)
    return adapter


def test_the_adapter_sits_on_the_double_stream_attention_only():
    transformer = _transformer()
    adapter = _adapter(transformer)
    assert sorted(adapter.config.cross_attention) == ["transformer_blocks.0.attn.processor",
                                                      "transformer_blocks.1.attn.processor"]
    assert adapter.config.token_dim == 24 and all(width == 32 for width in adapter.config.cross_attention.values())


@torch.no_grad()
def test_an_untrained_adapter_leaves_the_velocity_exactly_unchanged():
    transformer = _transformer()
    inputs = _inputs()
    base = transformer(**inputs).sample
    adapter = _adapter(transformer)
    personalized = transformer(**inputs, **adapter(inputs["hidden_states"], inputs["timestep"], None,
                                                   features=torch.tensor([[1, 1], [2, 2]]))).sample
    assert torch.equal(personalized, base)


def test_a_trained_adapter_personalizes_and_only_its_weights_learn():
    transformer = _transformer().requires_grad_(False)
    adapter = _adapter(transformer)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.to_v.weight.normal_(std=0.5)
    inputs = _inputs()
    base = transformer(**inputs).sample
    features = torch.tensor([[1, 1], [2, 2]])
    personalized = transformer(**inputs, **adapter(inputs["hidden_states"], inputs["timestep"], None,
                                                   features=features)).sample
    assert (personalized - base).abs().max() > 1e-3
    other = transformer(**inputs, **adapter(inputs["hidden_states"], inputs["timestep"], None,
                                            features=torch.tensor([[3, 2], [3, 1]]))).sample
    assert (other - personalized).abs().max() > 1e-4  # another merchant, another velocity
    personalized.pow(2).mean().backward()
    assert all(parameter.grad is None for parameter in transformer.parameters())
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0
               for name, parameter in adapter.named_parameters() if ".to_" in name)


def test_the_flux_adapter_saves_and_loads_as_a_branch(tmp_path):
    transformer = _transformer()
    adapter = _adapter(transformer)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.to_v.weight.normal_()
    adapter.save_pretrained(tmp_path / "model")
    loaded = load_branch(tmp_path / "model")
    assert type(loaded) is FluxMerchantAdapter and loaded.config.base_model == "flux-toy"
    for (name, mine), (_, theirs) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(mine, theirs), name


def test_flux_dev_at_1024_costs_its_hand_count_per_step_and_the_adapter_under_5_percent_more():
    """FLUX.1-dev's published transformer (perfusion_cli/architectures/flux1-dev), on the meta device, one velocity at
    1024² with 512 T5 tokens and no CFG (the guidance embedding instead), counted through ``frozen_flux.velocity``
    against FLUX written out by hand; then with the merchant adapter attached."""
    import json
    from pathlib import Path

    from perfusion_cli.accounting import count, parameters
    from perfusion_cli.models.frozen_flux import JointText, velocity
    from perfusion_cli.plan import planning_vocab

    config = json.loads((Path(__file__).resolve().parents[2] / "perfusion_cli" / "architectures" / "flux1-dev" /
                         "transformer.json").read_text())
    meta = torch.device("meta")
    with meta:
        transformer = FluxTransformer2DModel.from_config(config).to(torch.bfloat16)
        noisy = torch.zeros(1, 16, 128, 128, dtype=torch.bfloat16)  # 1024² through the 8× VAE
        times = torch.full((1,), 500.0)
        text = JointText(torch.zeros(1, 512, 4096, dtype=torch.bfloat16), torch.zeros(1, 768, dtype=torch.bfloat16))
    assert parameters(transformer) == pytest.approx(11.9e9, rel=0.005)  # FLUX.1-dev's 11.9 B
    with torch.no_grad():
        base = count(lambda: velocity(transformer, noisy, times, text, 8, 3.5)).flops
    # by hand: image tokens N = (128/2)², text tokens T = 512, S = N + T, width d = 3072. A double-stream block: per
    # stream and token, q, k, v, out (4d²) and the 4× MLP (8d²), 2 FLOPs a multiply-add; joint attention
    # 2·2·S²·d. A single-stream block on S tokens: q, k, v (3d²), the MLP's up projection (4d²) and the output
    # projection of [attention; MLP] (5d²); attention as above. Then the patch, text and output projections.
    n, t, d = 64 * 64, 512, 3072
    s = n + t
    block = 2 * 12 * s * d * d + 4 * s * s * d
    hand = 19 * block + 38 * block + 2 * n * 64 * d + 2 * t * 4096 * d + 2 * n * d * 64
    assert base == pytest.approx(hand, rel=0.03), (base / 1e12, hand / 1e12)
    with meta:
        adapter = FluxMerchantAdapter.from_transformer(transformer, planning_vocab(100), MerchantEncoderConfig(),
                                                       tokens=4).to(torch.bfloat16)
        features = torch.zeros(1, 7, dtype=torch.long)
    adapter.attach(transformer)
    with torch.no_grad():
        personalized = count(lambda: velocity(transformer, noisy, times, text, 8, 3.5,
                                              adapter(noisy, times, text, features=features))).flops
    # measured: 74.38 TFLOPs counted and by hand; the adapter ×1.040 (its query and output projections, 2 % each)
    assert 1.0 < personalized / base <= 1.05, personalized / base
