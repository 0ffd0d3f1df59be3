"""PerFusionRM on CLIP and on SigLIP: zero-initialized plug-ins equal the backbone's own scores (CLIP's
scaled cosine; SigLIP's logits, with their bias); plug-ins personalize; save → load is exact; gradient
checkpointing changes nothing but memory."""

import pytest
import torch
from torch import nn

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.errors import VocabularyMismatch
from perfusion_cli.losses import plackett_luce_loss
from perfusion_cli.models.backbones import clip_pixels, tokenize
from perfusion_cli.models.merchant import CrossNetwork, MerchantEncoder
from perfusion_cli.models.reward import PerFusionRM, RewardModel, load_reward_for, load_reward_model
from perfusion_cli.models.towers import load_towers

VOCAB = FeatureVocab([Feature("merchant_id", "categorical", ["a", "b", "c", "d"]),
                      Feature("style", "categorical", ["x", "y"]), Feature("price", "numeric", boundaries=[1, 2])])
CARDS = VOCAB.cardinalities  # [5, 3, 4]
MERCHANT = MerchantEncoderConfig(embed_dim=4, cross_layers=2, mlp_dims=[16], user_dim=8)


def _inputs(seed=0, batch=3, group=4):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, group, 3, 64, 64, generator=generator)
    features = torch.stack([torch.randint(0, c, (batch,), generator=generator) for c in CARDS], 1)
    valid = torch.ones(batch, group, dtype=torch.bool)
    valid[0, -1] = False
    return ["linen dress", "red silk skirt", "wool hoodie"][:batch], images, features, valid


@pytest.fixture(params=["clip", "siglip"])
def towers_dir(request):
    """The tiny CLIP, then the tiny SigLIP: every test taking it runs on both families."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def _model(folder, **settings):
    clip, tokenizer = load_towers(str(folder))
    module = PerFusionRM.from_clip(clip, VOCAB, plugin_hidden=16, merchant=MERCHANT, **settings)
    return RewardModel(module.eval(), tokenizer)


def _clip_scores(clip, tokenizer, prompts, images):
    """The backbone's own scores through transformers' forward, written independently of PerFusionRM: CLIP's
    logit_scale · cos; SigLIP's ``logits_per_text`` (logit_scale · cos + logit_bias), prompt b against its images."""
    ids, mask, _ = tokenize(tokenizer, prompts)
    if clip.config.model_type == "siglip":
        pixels = (images.flatten(0, 1) - 0.5) / 0.5  # SigLIP normalization; the tiny towers read 64² as given
        logits = clip(input_ids=ids, pixel_values=pixels).logits_per_text  # [B, B·K]
        return logits.view(len(prompts), len(prompts), -1).diagonal().T  # [B, K]: each prompt's own group
    text = clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    pixels = clip_pixels(images.flatten(0, 1), 64)
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    text = text / text.norm(dim=-1, keepdim=True)
    image = (image / image.norm(dim=-1, keepdim=True)).view(*images.shape[:2], -1)
    return clip.logit_scale.exp() * torch.einsum("bp,bkp->bk", text, image)


def _bias(clip):
    return clip.logit_bias if clip.config.model_type == "siglip" else 0.0


def _perturb(module: nn.Module, scale=0.3):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for plugin in (module.text_plugin, module.vision_plugin):
            for adapter in plugin.adapters:
                adapter.net[-1].weight.copy_(torch.randn(adapter.net[-1].weight.shape, generator=generator) * scale)


@torch.no_grad()
def test_untrained_plugin_leaves_clip_scores_unchanged(towers_dir):
    model = _model(towers_dir)
    prompts, images, features, valid = _inputs()
    expected = _clip_scores(model.module.clip, model.tokenizer, prompts, images)
    scores = model.score(prompts, images, features, valid)
    assert torch.allclose(scores[valid], expected[valid], atol=1e-5)
    assert (scores[~valid] == 0).all()


@torch.no_grad()
def test_a_trained_plugin_makes_scores_depend_on_the_merchant(towers_dir):
    model = _model(towers_dir)
    _perturb(model.module)
    prompts, images, features, valid = _inputs()
    other = (features + 1) % torch.tensor(CARDS)
    a = model.score(prompts, images, features, valid)
    b = model.score(prompts, images, other, valid)
    assert (a - b)[valid].abs().max() > 1e-3


@pytest.mark.parametrize("shared", [False, True])
@torch.no_grad()
def test_save_then_load_gives_identical_scores(towers_dir, tmp_path, shared):
    model = _model(towers_dir, shared_plugin=shared)
    _perturb(model.module)
    assert (model.module.vision_encoder() is model.module.text_merchant) == shared
    model.save(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    prompts, images, features, valid = _inputs(3)
    assert torch.equal(model.score(prompts, images, features, valid), loaded.score(prompts, images, features, valid))
    assert (loaded.module.vision_encoder() is loaded.module.text_merchant) == shared
    assert loaded.vocab == VOCAB


@torch.no_grad()
def test_zero_shot_scores_equal_plain_clip(towers_dir):
    model = load_reward_model(f"zero-shot:{towers_dir}")
    prompts, images, features, valid = _inputs()
    expected = _clip_scores(model.module.clip, model.tokenizer, prompts, images)
    assert torch.allclose(model.score(prompts, images, features, valid)[valid], expected[valid], atol=1e-5)


def test_a_zero_shot_judge_or_reward_reads_any_data_and_a_trained_one_only_its_own(tiny_clip_dir, tmp_path):
    """``train-gen --judge zero-shot:BASE`` (or ``--reward``): a zero-shot model reads no merchant features, so no
    vocabulary can be wrong for it; it used to be refused as trained on another vocabulary."""
    other = FeatureVocab([*VOCAB.features[:2], Feature("price", "numeric", boundaries=[1, 3])])
    assert not load_reward_for(f"zero-shot:{tiny_clip_dir}", other, "data/", "cpu", "judge").module.config.plugin
    _model(tiny_clip_dir).save(tmp_path / "rm")
    assert load_reward_for(tmp_path / "rm", VOCAB, "data/", "cpu", "judge reward model").vocab == VOCAB
    with pytest.raises(VocabularyMismatch, match="judge reward model was trained on data with a different merchant "
                                                 "feature vocabulary than data/"):
        load_reward_for(tmp_path / "rm", other, "data/", "cpu", "judge reward model")


def _loss_and_gradients(folder, checkpointing: bool):
    torch.manual_seed(0)  # the merchant encoders start random: the same in both runs
    model = _model(folder)
    _perturb(model.module, scale=0.05)  # non-zero adaptive networks: the case that used to break
    module = model.module.train()
    if checkpointing:
        module.enable_gradient_checkpointing()
    assert module.gradient_checkpointing is checkpointing
    prompts, images, features, valid = _inputs()
    selected = torch.zeros_like(valid)
    selected[:, 0] = True
    loss = plackett_luce_loss(model.score(prompts, images, features, valid), selected, valid)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_every_gradient(towers_dir):
    plain = _loss_and_gradients(towers_dir, checkpointing=False)
    checkpointed = _loss_and_gradients(towers_dir, checkpointing=True)
    assert torch.allclose(plain[0], checkpointed[0], atol=1e-6)
    assert plain[1].keys() == checkpointed[1].keys()
    assert any(name.startswith("clip.") for name in plain[1]) and any("plugin" in name for name in plain[1])
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], atol=1e-6, rtol=1e-4), name


def test_cross_network_is_dcn_v2():
    torch.manual_seed(0)
    cross = CrossNetwork(6, 2)
    x0 = torch.randn(3, 6)
    x1 = x0 * (x0 @ cross.layers[0].weight.T + cross.layers[0].bias) + x0
    x2 = x0 * (x1 @ cross.layers[1].weight.T + cross.layers[1].bias) + x1
    assert torch.allclose(cross(x0), x2, atol=1e-6)


def test_merchant_encoder_rejects_ids_outside_its_vocabulary():
    encoder = MerchantEncoder(CARDS, MERCHANT)
    assert encoder(torch.tensor([[4, 2, 3]])).shape == (1, 8)
    with pytest.raises(VocabularyMismatch, match="different vocabulary"):
        encoder(torch.tensor([[5, 0, 0]]))
    with pytest.raises(VocabularyMismatch, match="expects 3 merchant features, the data has 2"):
        encoder(torch.tensor([[1, 1]]))


def test_a_model_refuses_data_with_another_vocabulary():
    other = FeatureVocab([*VOCAB.features[:2], Feature("price", "numeric", boundaries=[1, 3])])
    VOCAB.require_same(FeatureVocab.from_json(VOCAB.to_json()), "reward model", "data")
    with pytest.raises(VocabularyMismatch, match="reward model was trained on data with a different merchant feature "
                                                 "vocabulary than data/"):
        VOCAB.require_same(other, "reward model", "data/")


def test_id_dropout_hides_the_merchant_id_only_while_training():
    torch.manual_seed(0)
    encoder = MerchantEncoder(CARDS, MerchantEncoderConfig(embed_dim=4, mlp_dims=[16], user_dim=8, id_dropout=0.99))
    features = torch.tensor([[3, 1, 2], [4, 2, 1]])
    without_id = features.clone()
    without_id[:, 0] = 0  # the out-of-vocabulary id
    encoder.eval()
    assert not torch.allclose(encoder(features), encoder(without_id))
    encoder.train()
    torch.manual_seed(1)
    assert torch.allclose(encoder(features), encoder(without_id))  # dropped with probability 0.99


@torch.no_grad()
def test_the_taste_head_at_its_own_temperature_ranks_as_clip_until_trained(towers_dir):
    model = _model(towers_dir, taste_head=True, prompt_scale=3.0)
    prompts, images, features, valid = _inputs()
    clip = model.module.clip
    bias = _bias(clip)
    expected = (_clip_scores(clip, model.tokenizer, prompts, images) - bias) * 3.0 / clip.logit_scale.exp() + bias
    assert torch.allclose(model.score(prompts, images, features, valid)[valid], expected[valid], atol=1e-4)


@torch.no_grad()
def test_the_taste_head_adds_a_linear_taste_over_the_standardized_image_embedding(tiny_clip_dir):
    model = _model(tiny_clip_dir, taste_head=True, prompt_scale=3.0)
    module = model.module
    generator = torch.Generator().manual_seed(2)
    width = module.clip.config.projection_dim
    module.taste.weight.copy_(torch.randn(module.taste.weight.shape, generator=generator))
    module.taste.bias.copy_(torch.randn(width, generator=generator))
    mean, var = torch.randn(width, generator=generator) * 0.1, torch.rand(width, generator=generator) + 0.5
    module.taste_norm.running_mean.copy_(mean)
    module.taste_norm.running_var.copy_(var)
    prompts, images, features, valid = _inputs()
    clip = module.clip
    # written out: 3 · cos(text, image) + Σ_p (W u + b)_p · (v̂_p − mean_p) / √(var_p + eps), v̂ unit norm
    pixels = clip_pixels(images.flatten(0, 1), 64)
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    image = (image / image.norm(dim=-1, keepdim=True)).view(*images.shape[:2], -1)
    u = module.text_merchant(features)
    weights = u @ module.taste.weight.T + module.taste.bias
    taste = torch.einsum("bp,bkp->bk", weights, (image - mean) / torch.sqrt(var + 1e-5))
    expected = _clip_scores(clip, model.tokenizer, prompts, images) * 3.0 / clip.logit_scale.exp() + taste
    assert torch.allclose(model.score(prompts, images, features, valid)[valid], expected[valid], atol=1e-4)


@torch.no_grad()
def test_the_taste_head_and_its_statistics_survive_save_and_load(towers_dir, tmp_path):
    model = _model(towers_dir, taste_head=True, prompt_scale=3.0)
    _perturb(model.module)
    model.module.taste.weight.normal_(0, 1.0)
    model.module.taste_norm.running_mean.normal_(0, 0.1)
    model.module.prompt_log_scale.fill_(0.5)
    model.save(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.module.config.taste_head and loaded.module.config.prompt_scale == 3.0
    prompts, images, features, valid = _inputs(3)
    assert torch.equal(model.score(prompts, images, features, valid), loaded.score(prompts, images, features, valid))
