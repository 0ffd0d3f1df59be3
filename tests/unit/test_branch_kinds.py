"""Branch kinds (controlnet, xs, adapter) and branch reuse across denoising steps."""

import pytest
import torch

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.adapter import MerchantAdapter
from perfusion_cli.models.controlnet_branch import PersonalizedBranch
from perfusion_cli.models.tiny import build_tiny_sdxl_unet, build_tiny_unet
from perfusion_cli.pipeline import COMPUTE, OFF, REUSE, branch_schedule
from tests.helpers import text_conditions

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b"]), Feature("style", "categorical", ["x"])])
MERCHANT = MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8)
FEATURES = torch.tensor([[1, 1], [2, 0], [0, 1]])


def _branch(kind, unet):
    if kind == "adapter":
        branch = MerchantAdapter.from_unet(unet, VOCAB, MERCHANT, tokens=3)
    else:
        branch = PersonalizedBranch.from_unet(unet, VOCAB, MERCHANT, grid_size=4, grid_channels=8,
                                              width=0.25 if kind == "xs" else 1.0)
    branch.attach(unet)
    return branch.eval()


@pytest.mark.parametrize("build", [build_tiny_unet, build_tiny_sdxl_unet])
@pytest.mark.parametrize("kind", ["controlnet", "xs", "adapter"])
@torch.no_grad()
def test_an_untrained_branch_of_either_kind_leaves_the_prediction_unchanged(kind, build):
    unet = build().eval()
    branch = _branch(kind, unet)
    x, t, text = torch.randn(3, 4, 16, 16), torch.tensor([1, 500, 999]), text_conditions(unet, 3)
    base = unet(x, t, **text.unet_kwargs()).sample
    extra = branch(x, t, text, features=FEATURES)
    assert torch.equal(unet(x, t, **text.unet_kwargs(), **extra).sample, base)
    generator = torch.Generator().manual_seed(0)
    for parameter in branch.parameters():  # trained: the merchant now changes the prediction
        parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    extra = branch(x, t, text, features=FEATURES)
    assert (unet(x, t, **text.unet_kwargs(), **extra).sample - base).abs().max() > 1e-3
    assert torch.equal(unet(x, t, **text.unet_kwargs()).sample, base), "without the branch's arguments: the base"


def test_the_adapter_is_a_few_percent_of_the_unet_and_covers_every_cross_attention():
    from diffusers.models.attention_processor import Attention

    unet = build_tiny_unet()
    adapter = _branch("adapter", unet)
    cross = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    assert len(adapter.layers) == len(cross) > 0
    kv = sum(p.numel() for layer in adapter.layers.values() for p in layer.parameters())
    assert kv < 0.05 * sum(p.numel() for p in unet.parameters())
    assert not any(name.startswith("layers") for name, _ in unet.named_parameters()), "the U-Net stays its own"


def test_the_thin_branch_is_a_fraction_of_a_controlnet_copy_and_widens_to_the_unets_skips():
    unet = build_tiny_unet()
    full, thin = _branch("controlnet", unet), _branch("xs", unet)
    size = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert size(thin.controlnet) < 0.15 * size(full.controlnet)
    groups = unet.config.norm_num_groups
    assert all(c % groups == 0 and c < u for c, u in zip(thin.controlnet.config.block_out_channels,
                                                        unet.config.block_out_channels))
    x, t, text = torch.randn(3, 4, 16, 16), torch.tensor([1, 500, 999]), text_conditions(unet, 3)
    wide, narrow = full(x, t, text, features=FEATURES), thin(x, t, text, features=FEATURES)
    assert [r.shape for r in narrow["down_block_additional_residuals"]] == [
        r.shape for r in wide["down_block_additional_residuals"]]
    assert narrow["mid_block_additional_residual"].shape == wide["mid_block_additional_residual"].shape


def test_a_thin_branch_saves_and_reloads_as_itself(tmp_path):
    unet = build_tiny_unet()
    thin = _branch("xs", unet)
    torch.nn.init.normal_(thin.controlnet.controlnet_mid_block.weight)
    thin.save_pretrained(tmp_path)
    again = PersonalizedBranch.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(thin.state_dict().values(), again.state_dict().values()))
    assert again.controlnet.controlnet_mid_block.out_channels == unet.config.block_out_channels[-1]


def test_the_branch_schedule():
    assert branch_schedule(6) == [COMPUTE] * 6
    assert branch_schedule(6, every=2) == [COMPUTE, REUSE] * 3
    assert branch_schedule(6, every=3, until=0.5) == [COMPUTE, REUSE, REUSE, OFF, OFF, OFF]
    assert branch_schedule(5, until=0.5) == [COMPUTE] * 3 + [OFF] * 2  # ceil: the branch runs at least once
    with pytest.raises(ValueError):
        branch_schedule(5, every=0)


def test_every_loadable_branch_is_a_generator_model_a_run_folder_may_hold():
    from perfusion_cli.models.branch_kinds import LOADABLE
    from perfusion_cli.runs import KINDS

    assert {cls.__name__ for cls in LOADABLE} == set(KINDS["generator"][0])
