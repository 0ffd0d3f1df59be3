"""PerFusionRM: CLIP with a merchant plug-in on both towers (DESIGN §4; paper §4.2).

    s(u, prompt, image) = logit_scale · cos(text_emb(prompt; u), image_emb(image; u))

as PickScore scores, with u from a merchant encoder. Text and vision get separate merchant encoders
and plug-ins by default; ``shared_plugin`` makes both towers read one merchant encoder (the paper's
ablation — the towers' widths differ, so the per-layer adaptive networks stay per tower).
``plugin=False`` is the same CLIP and loss without personalization (the PickScore-style baseline).

On disk (``save`` / ``load``):

    <folder>/clip/            CLIPModel.save_pretrained + its tokenizer (the fine-tuned backbone)
    <folder>/plugin.safetensors   merchant encoders and adaptive networks
    <folder>/reward.json      the settings below, the feature vocabulary's cardinalities
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPModel, CLIPTokenizer

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.errors import CheckpointError
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.backbones import clip_pixels, load_clip, tokenize
from perfusion_cli.models.merchant import MerchantEncoder
from perfusion_cli.models.plugins import TowerPlugin

ZERO_SHOT = "zero-shot:"


@dataclass
class RewardSettings:
    cardinalities: list[int]
    features: list[dict] = field(default_factory=list)  # the vocabulary the ids refer to (manifest format)
    plugin: bool = True
    shared_plugin: bool = False
    plugin_hidden: int = 256
    merchant: MerchantEncoderConfig = field(default_factory=MerchantEncoderConfig)


class PerFusionRM(nn.Module):
    def __init__(self, clip: CLIPModel, settings: RewardSettings):
        super().__init__()
        self.clip = clip
        self.settings = settings
        self.image_size = clip.config.vision_config.image_size
        if settings.plugin:
            hidden, user_dim = settings.plugin_hidden, settings.merchant.user_dim
            self.text_merchant = MerchantEncoder(settings.cardinalities, settings.merchant)
            self.vision_merchant = (self.text_merchant if settings.shared_plugin
                                    else MerchantEncoder(settings.cardinalities, settings.merchant))
            self.text_plugin = TowerPlugin(clip.text_model.encoder.layers, user_dim, hidden)
            self.vision_plugin = TowerPlugin(clip.vision_model.encoder.layers, user_dim, hidden)

    def plugin_state(self) -> dict[str, torch.Tensor]:
        """Everything but the CLIP backbone (shared tensors stored once)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        features: torch.Tensor | None) -> torch.Tensor:
        """[B, L] token ids, [B, F] merchant features → unit-norm text embeddings [B, P]."""
        if not self.settings.plugin:
            output = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        else:
            with self.text_plugin.modulated(self.text_merchant(features)):
                output = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return nn.functional.normalize(_pooled(output), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """[N, 3, S, S] CLIP-normalized pixels, [N, F] features → unit-norm image embeddings [N, P]."""
        if not self.settings.plugin:
            output = self.clip.get_image_features(pixel_values=pixels)
        else:
            with self.vision_plugin.modulated(self.vision_merchant(features)):
                output = self.clip.get_image_features(pixel_values=pixels)
        return nn.functional.normalize(_pooled(output), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor,
                features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Scores [B, K] for groups: prompts [B, L], images [B, K, 3, H, W] in [0, 1], valid [B, K].

        Only valid candidates are encoded; padded slots score 0 (losses and metrics mask them out).
        """
        batch, group = valid.shape
        text = self.text_embeddings(input_ids, attention_mask, features)  # [B, P]
        flat = valid.flatten()
        rows = torch.arange(batch, device=valid.device).repeat_interleave(group)[flat]
        pixels = clip_pixels(images.flatten(0, 1)[flat], self.image_size)
        image = self.image_embeddings(pixels, features[rows])  # [N, P]
        cosine = (image * text[rows]).sum(-1)
        scores = torch.zeros(batch * group, dtype=cosine.dtype, device=cosine.device)
        scores = scores.masked_scatter(flat, cosine * self.clip.logit_scale.exp())
        return scores.view(batch, group)


def _pooled(output) -> torch.Tensor:
    """transformers ≥ 5 returns a model output from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class RewardModel:
    """A PerFusionRM with its tokenizer: what training, evaluation and reranking use."""

    module: PerFusionRM
    tokenizer: CLIPTokenizer

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


def create_reward_model(base_model: str, settings: RewardSettings) -> RewardModel:
    clip, tokenizer = load_clip(base_model)
    return RewardModel(PerFusionRM(clip, settings), tokenizer)


def save_reward_model(model: RewardModel, folder: str | Path) -> None:
    with atomic_dir(folder) as tmp:
        model.module.clip.save_pretrained(tmp / "clip")
        model.tokenizer.save_pretrained(tmp / "clip")
        save_file({k: v.contiguous() for k, v in _unshared(model.module.plugin_state()).items()},
                  str(tmp / "plugin.safetensors"))
        (tmp / "reward.json").write_text(json.dumps(asdict(model.module.settings), indent=2, sort_keys=True))


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses aliased tensors; a shared merchant encoder is stored once (as text_merchant)."""
    seen: dict[int, str] = {}
    result = {}
    for name, tensor in state.items():
        pointer = tensor.data_ptr()
        if pointer in seen and tensor.numel():
            continue
        seen[pointer] = name
        result[name] = tensor
    return result


def load_reward_model(source: str | Path, device: torch.device | str = "cpu") -> RewardModel:
    """A saved reward model folder, a run folder (its ``model/``), or ``zero-shot:BASE``."""
    text = str(source)
    if text.startswith(ZERO_SHOT):
        clip, tokenizer = load_clip(text[len(ZERO_SHOT):])
        return RewardModel(PerFusionRM(clip, RewardSettings(cardinalities=[], plugin=False)).to(device).eval(),
                           tokenizer)
    folder = Path(source)
    if (folder / "model" / "reward.json").is_file():
        folder = folder / "model"
    if not (folder / "reward.json").is_file():
        raise CheckpointError(f"no reward model in {source} — run `perfusion train-rm` first (or pass "
                              f"zero-shot:BASE_MODEL)")
    raw = json.loads((folder / "reward.json").read_text())
    settings = RewardSettings(**{**raw, "merchant": MerchantEncoderConfig(**raw["merchant"])})
    clip, tokenizer = load_clip(str(folder / "clip"))
    module = PerFusionRM(clip, settings)
    if settings.plugin:
        state = load_file(str(folder / "plugin.safetensors"))
        missing, unexpected = module.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("clip.") and not
                   (settings.shared_plugin and k.startswith("vision_merchant."))]
        if missing or unexpected:
            raise CheckpointError(f"{folder / 'plugin.safetensors'} does not match reward.json "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return RewardModel(module.to(device).eval(), tokenizer)
