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
    image_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(side).float(), torch.arange(side).float(), indexing="ij"),
                            -1).view(-1, 3).float()
    return {"hidden_states": torch.randn(batch, side * side, 16), "encoder_hidden_states": torch.randn(batch, text_tokens, 24),
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
