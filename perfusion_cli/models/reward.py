"""PerFusionRM: CLIP (or SigLIP) with a merchant plug-in on both towers (DESIGN §4; paper §4.2).

    s(u, prompt, image) = logit_scale · cos(text_emb(prompt; u), image_emb(image; u)) [+ logit_bias]

as PickScore scores, with u from a merchant encoder; SigLIP adds its learned bias, as its logits do
(``models/towers.py``: the families and how each runs). The backbone lives in ``self.clip`` whatever its
family — the name saved 0.2 checkpoints use. Text and vision get separate merchant encoders
and plug-ins by default; ``shared_plugin`` makes both towers read one merchant encoder (the paper's
ablation — the towers' widths differ, so the per-layer adaptive networks stay per tower).
``plugin=False`` is the same CLIP and loss without personalization (the PickScore-style baseline).

``PerFusionRM`` is a diffusers ``ModelMixin``: its config is its ``__init__`` signature (the CLIP
config, the feature vocabulary, the plug-in settings) and ``save_pretrained`` / ``from_pretrained``
write and read ``config.json`` + safetensors. ``RewardModel`` pairs it with its tokenizer, saved in
``tokenizer/`` beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.backbones import clip_pixels, tokenize
from perfusion_cli.models.merchant import MerchantEncoder
from perfusion_cli.models.plugins import TowerPlugin
from perfusion_cli.models.towers import build_towers, family_of, load_towers
from perfusion_cli.runs import loading, model_folder

ZERO_SHOT = "zero-shot:"
TOKENIZER = "tokenizer"


class PerFusionRM(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, clip_config: dict, features: list[dict] | None = None, plugin: bool = True,
                 shared_plugin: bool = False, plugin_hidden: int = 256, merchant_encoder: dict | None = None,
                 taste_head: bool = False, prompt_scale: float | None = None):
        super().__init__()
        self.family = family_of(clip_config)
        self.clip = build_towers(clip_config)
        self.image_size = self.clip.config.vision_config.image_size
        self.gradient_checkpointing = False
        if plugin:
            encoder = MerchantEncoderConfig(**(merchant_encoder or {}))
            cardinalities = self.vocab.cardinalities
            self.text_merchant = MerchantEncoder(cardinalities, encoder)
            if not shared_plugin:
                self.vision_merchant = MerchantEncoder(cardinalities, encoder)
            text, vision = self.clip.config.text_config, self.clip.config.vision_config
            self.text_plugin = TowerPlugin(text.num_hidden_layers, text.hidden_size, encoder.user_dim, plugin_hidden)
            self.vision_plugin = TowerPlugin(vision.num_hidden_layers, vision.hidden_size, encoder.user_dim,
                                             plugin_hidden)
            if prompt_scale is not None:  # the prompt term's own temperature, learned from this value
                self.prompt_log_scale = nn.Parameter(torch.tensor(math.log(prompt_scale)))
            if taste_head:  # a linear taste over the standardized image embedding, zero at init
                width = self.family.embedding_dim(self.clip)
                self.taste_norm = nn.BatchNorm1d(width, affine=False)
                self.taste = nn.Linear(encoder.user_dim, width)
                nn.init.zeros_(self.taste.weight)
                nn.init.zeros_(self.taste.bias)

    @classmethod
    def from_clip(cls, clip: PreTrainedModel, vocab: FeatureVocab | None, plugin: bool = True,
                  shared_plugin: bool = False, plugin_hidden: int = 256, merchant: MerchantEncoderConfig | None = None,
                  taste_head: bool = False, prompt_scale: float | None = None) -> "PerFusionRM":
        """A PerFusionRM around a loaded CLIP or SigLIP (its weights kept), with fresh zero-initialized plug-ins."""
        model = cls(clip_config=clip.config.to_dict(), features=vocab.to_json() if vocab else [], plugin=plugin,
                    shared_plugin=shared_plugin, plugin_hidden=plugin_hidden,
                    merchant_encoder=asdict(merchant or MerchantEncoderConfig()), taste_head=taste_head and plugin,
                    prompt_scale=prompt_scale if plugin else None)
        model.clip = clip
        return model

    @property
    def vocab(self) -> FeatureVocab:
        return FeatureVocab.from_json(self.config.features or [])

    @property
    def own_temperature(self) -> bool:
        """The prompt cosine has its own learned temperature (``prompt_log_scale``), not CLIP's."""
        return self.config.plugin and self.config.prompt_scale is not None

    @property
    def has_taste_head(self) -> bool:
        return self.config.plugin and self.config.taste_head

    def vision_encoder(self) -> MerchantEncoder:
        return self.text_merchant if self.config.shared_plugin else self.vision_merchant

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        features: torch.Tensor | None) -> torch.Tensor:
        """[B, L] token ids, [B, F] merchant features → unit-norm text embeddings [B, P]."""
        modulation = self.text_plugin(self.text_merchant(features)) if self.config.plugin else None
        output = self.family.text_features(self.clip, input_ids, attention_mask, modulation,
                                           self.gradient_checkpointing)
        return nn.functional.normalize(output, dim=-1)

    def image_embeddings(self, pixels: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """[N, 3, S, S] normalized pixels (``pixels``), [N, F] features → unit-norm image embeddings [N, P]."""
        modulation = self.vision_plugin(self.vision_encoder()(features)) if self.config.plugin else None
        output = self.family.image_features(self.clip, pixels, modulation, self.gradient_checkpointing)
        return nn.functional.normalize(output, dim=-1)

    def taste_scores(self, features: torch.Tensor, image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, F] features, [N, P] image embeddings of groups ``rows`` [N] → [N] the taste head's term:
        ⟨W u, standardized image⟩.

        The cosine alone reads an image through CLIP's unit sphere, where the directions that tell one
        product's colour, pattern or cut from another's are a small part of the norm; standardizing the
        embedding over the data (batch statistics in training, running ones after) puts them at unit
        scale, so a merchant's weights on them are learned in the steps a recipe has.
        """
        weights = self.taste(self.text_merchant(features))[rows]  # [N, P]
        return (weights * self.taste_norm(image.float()).to(image.dtype)).sum(-1)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] → the vision tower's input: resized, normalized as its family was trained."""
        return clip_pixels(images, self.image_size, self.family.pixel_mean, self.family.pixel_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor,
                features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Scores [B, K] for groups: prompts [B, L], images [B, K, 3, H, W] in [0, 1], valid [B, K].

        Only valid candidates are encoded; padded slots score 0 (losses and metrics mask them out).
        """
        batch, group = valid.shape
        text = self.text_embeddings(input_ids, attention_mask, features)  # [B, P]
        flat = valid.flatten()
        rows = torch.arange(batch, device=valid.device).repeat_interleave(group)[flat]
        pixels = self.pixels(images.flatten(0, 1)[flat]).to(self.clip.dtype)
        image = self.image_embeddings(pixels, features[rows])  # [N, P]
        log_scale = self.prompt_log_scale if self.own_temperature else self.clip.logit_scale
        flat_scores = (image * text[rows]).sum(-1) * log_scale.exp() + self.family.bias(self.clip)
        if self.has_taste_head:
            flat_scores = flat_scores + self.taste_scores(features, image, rows)
        scores = torch.zeros(batch * group, dtype=flat_scores.dtype, device=flat_scores.device)
        scores = scores.masked_scatter(flat, flat_scores)
        return scores.view(batch, group)


@dataclass
class RewardModel:
    """A PerFusionRM with its tokenizer: what training, evaluation and reranking use."""

    module: PerFusionRM
    tokenizer: PreTrainedTokenizerBase

    @property
    def vocab(self) -> FeatureVocab:
        return self.module.vocab

    def tokens(self, prompts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids, mask, truncated = tokenize(self.tokenizer, prompts)
        return ids.to(device), mask.to(device), truncated

    def score(self, prompts: list[str], images: torch.Tensor, features: torch.Tensor,
              valid: torch.Tensor | None = None, module: nn.Module | None = None) -> torch.Tensor:
        """[B, K] scores; ``module`` lets a training loop pass its (DDP-wrapped) copy."""
        device = images.device
        valid = valid if valid is not None else torch.ones(images.shape[:2], dtype=torch.bool, device=device)
        ids, mask, _ = self.tokens(prompts, device)
        return (module or self.module)(ids, mask, images, features, valid)

    def save(self, folder: str | Path) -> None:
        with atomic_dir(folder) as tmp:
            self.module.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / TOKENIZER)


def create_reward_model(base_model: str, vocab: FeatureVocab | None, plugin: bool = True, shared_plugin: bool = False,
                        plugin_hidden: int = 256, merchant: MerchantEncoderConfig | None = None,
                        taste_head: bool = False, prompt_scale: float | None = None) -> RewardModel:
    clip, tokenizer = load_towers(base_model)
    module = PerFusionRM.from_clip(clip, vocab, plugin, shared_plugin, plugin_hidden, merchant, taste_head,
                                   prompt_scale)
    return RewardModel(module, tokenizer)


def load_reward_model(source: str | Path, device: torch.device | str = "cpu") -> RewardModel:
    """A reward-model run (or its ``model/`` folder), or ``zero-shot:BASE`` for the untouched CLIP or SigLIP."""
    text = str(source)
    if text.startswith(ZERO_SHOT):
        model = create_reward_model(text[len(ZERO_SHOT):], None, plugin=False)
        return RewardModel(model.module.to(device).eval(), model.tokenizer)
    folder = model_folder(source, "reward")
    with loading(folder, "reward model"):
        module = PerFusionRM.from_pretrained(folder, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER)
    return RewardModel(module.to(device).eval(), tokenizer)


def load_reward_for(source: str | Path, vocab: FeatureVocab, data_dir, device: torch.device | str,
                    what: str) -> RewardModel:
    """``load_reward_model`` for the data in ``data_dir``: a trained run must know its merchant vocabulary
    (a zero-shot model reads no merchant features)."""
    model = load_reward_model(source, device)
    if not str(source).startswith(ZERO_SHOT):
        model.vocab.require_same(vocab, what, data_dir)
    return model
