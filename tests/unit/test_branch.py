"""The personalized branch and the frozen U-Net's split forward pass."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from perfusion_cli.config import GenTrainConfig, MerchantEncoderConfig
from perfusion_cli.data.loader import GroupBatch
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.controlnet_branch import PersonalizedBranch
from perfusion_cli.models.frozen_sd import FrozenSD
from perfusion_cli.models.tiny import build_tiny_sdxl_unet, build_tiny_unet
from perfusion_cli.models.unet_halves import decode, encode, supports_split
from perfusion_cli.noise import DDPM
from perfusion_cli.objective import GroupDPOObjective
from tests.helpers import text_conditions

FEATURES = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b"]), Feature("style", "categorical", ["x", "y"])])
MERCHANT = MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8)


def _sd_like_unet():
    """Cross-attention in the first blocks and a plain last block, as SD 1.5 lays them out."""
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=16).eval()


@pytest.mark.parametrize("build", [build_tiny_unet, _sd_like_unet, build_tiny_sdxl_unet])
@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
@torch.no_grad()
def test_split_forward_equals_the_unet_with_and_without_residuals(build, size):
    unet = build().eval()
    assert supports_split(unet)
    x, t, text = torch.randn(2, 4, *size), torch.tensor([3, 900]), text_conditions(unet, 2, tokens=5)
    encoding = encode(unet, x, t, text)
    assert torch.allclose(decode(unet, encoding), unet(x, t, **text.unet_kwargs()).sample, atol=1e-5)
    residuals = [torch.randn_like(s) * 0.1 for s in encoding.skips]
    mid = torch.randn_like(encoding.mid) * 0.1
    expected = unet(x, t, **text.unet_kwargs(), down_block_additional_residuals=residuals,
                    mid_block_additional_residual=mid).sample
    assert torch.allclose(decode(unet, encoding, residuals, mid), expected, atol=1e-5)


@torch.no_grad()
def test_sdxl_added_conditions_reach_the_split_forward():
    """The pooled text and the sizes change SDXL's prediction, and the split pass sees the same change."""
    unet = build_tiny_sdxl_unet().eval()
    for parameter in unet.add_embedding.parameters():  # a trained U-Net's added embedding is not near zero
        parameter.mul_(50)
    x, t, text = torch.randn(2, 4, 16, 16), torch.tensor([3, 900]), text_conditions(unet, 2)
    other = text.sized(128, 96)
    assert (unet(x, t, **text.unet_kwargs()).sample - unet(x, t, **other.unet_kwargs()).sample).abs().max() > 1e-4
    assert torch.allclose(decode(unet, encode(unet, x, t, other)), unet(x, t, **other.unet_kwargs()).sample,
                          atol=1e-5)


@torch.no_grad()
def test_an_untrained_branch_leaves_the_noise_prediction_unchanged():
    unet = build_tiny_unet().eval()
    branch = PersonalizedBranch.from_unet(unet, FEATURES, MERCHANT, grid_size=4, grid_channels=8).eval()
    x, t, text = torch.randn(3, 4, 16, 16), torch.tensor([1, 500, 999]), text_conditions(unet, 3)
    extra = branch(x, t, text, features=torch.tensor([[1, 2], [2, 1], [0, 0]]))
    personalized = unet(x, t, **text.unet_kwargs(), **extra).sample
    assert torch.equal(personalized, unet(x, t, **text.unet_kwargs()).sample)
    # the ControlNet copies the U-Net's encoder weights
    assert torch.equal(branch.controlnet.down_blocks[0].resnets[0].conv1.weight,
                       unet.down_blocks[0].resnets[0].conv1.weight)


def _batch(groups=2, k=3, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    valid = torch.ones(groups, k, dtype=torch.bool)
    valid[1, 2] = False
    selected = torch.zeros(groups, k, dtype=torch.bool)
    selected[:, 0] = True
    return GroupBatch(images=torch.rand(groups, k, 3, size, size, generator=generator), valid=valid,
                      selected=selected, features=torch.tensor([[1, 1], [2, 2]])[:groups],
                      prompts=["linen dress", "wool hoodie"][:groups], merchant_ids=["a", "b"][:groups],
                      session_ids=[f"s{i}" for i in range(groups)])


def _objective(tiny_sd_dir, **overrides):
    config = GenTrainConfig(base_model=str(tiny_sd_dir), resolution=64, beta=500.0, **overrides)
    frozen = FrozenSD.load(config.base_model, torch.device("cpu"), share_encoder=config.share_encoder)
    branch = PersonalizedBranch.from_unet(frozen.sd.unet, FEATURES, MERCHANT, grid_size=4, grid_channels=8)
    return GroupDPOObjective(frozen, config), frozen, branch


def test_one_train_step_moves_only_the_branch(tiny_sd_dir):
    objective, frozen, branch = _objective(tiny_sd_dir)
    frozen_before = {name: copy.deepcopy(module.state_dict()) for name, module in
                     (("unet", frozen.sd.unet), ("vae", frozen.sd.vae), ("text", frozen.sd.text_encoder))}
    branch_before = copy.deepcopy(branch.state_dict())
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-3)
    torch.manual_seed(0)
    loss, logs = objective(branch, _batch())
    assert torch.isfinite(loss) and logs["ref_err"] > 0
    loss.backward()
    optimizer.step()
    for name, module in (("unet", frozen.sd.unet), ("vae", frozen.sd.vae), ("text", frozen.sd.text_encoder)):
        assert not any(p.requires_grad for p in module.parameters()), name
        for key, value in module.state_dict().items():
            assert torch.equal(value, frozen_before[name][key]), f"{name}.{key} moved"
    moved = [k for k, v in branch.state_dict().items() if not torch.equal(v, branch_before[k])]
    assert any("controlnet_down_blocks" in k for k in moved), "the zero convs on the residuals train first"


def _loss_and_gradients(tiny_sd_dir, share_encoder=True, checkpointing=False):
    objective, frozen, branch = _objective(tiny_sd_dir, share_encoder=share_encoder)
    assert frozen.share_encoder is share_encoder
    with torch.no_grad():  # make the branch non-trivial, identically in every run
        generator = torch.Generator().manual_seed(3)
        for p in branch.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    if checkpointing:  # as train-gen sets it up with gradient_checkpointing = true
        branch.controlnet.enable_gradient_checkpointing()
        frozen.sd.unet.enable_gradient_checkpointing()
    branch.train()
    torch.manual_seed(0)
    loss, _ = objective(branch, _batch())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in branch.named_parameters() if p.grad is not None}


def _assert_same(first, second):
    assert torch.allclose(first[0], second[0], atol=1e-6)
    assert first[1].keys() == second[1].keys() and len(first[1]) > 10
    for name, grad in first[1].items():
        assert torch.allclose(grad, second[1][name], atol=1e-6, rtol=1e-4), name


def test_sharing_the_frozen_encoder_gives_the_same_loss_and_gradients(tiny_sd_dir):
    _assert_same(_loss_and_gradients(tiny_sd_dir, share_encoder=True),
                 _loss_and_gradients(tiny_sd_dir, share_encoder=False))


@pytest.mark.parametrize("share", [True, False])
def test_gradient_checkpointing_gives_the_same_loss_and_every_gradient(tiny_sd_dir, share):
    _assert_same(_loss_and_gradients(tiny_sd_dir, share, checkpointing=False),
                 _loss_and_gradients(tiny_sd_dir, share, checkpointing=True))


def test_group_noise_and_timestep_are_shared_within_a_group(tiny_sd_dir, monkeypatch):
    objective, frozen, branch = _objective(tiny_sd_dir)
    seen = {}
    original = objective.predict

    def spy(branch_, noisy, timesteps, text, features):
        seen["timesteps"] = timesteps
        return original(branch_, noisy, timesteps, text, features)

    monkeypatch.setattr(objective, "predict", spy)
    objective(branch, _batch())
    assert seen["timesteps"][:3].unique().numel() == 1 and seen["timesteps"][3:].unique().numel() == 1


def test_the_training_target_follows_the_prediction_type():
    from diffusers import DDPMScheduler

    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([10, 400, 900])
    epsilon = DDPM(DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon"))
    assert torch.equal(epsilon.target(latents, noise, timesteps), noise)
    velocity = DDPM(DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction"))
    alpha_bar = velocity.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents  # v = √ᾱ·ε − √(1−ᾱ)·x₀
    assert torch.allclose(velocity.target(latents, noise, timesteps), expected, atol=1e-6)
