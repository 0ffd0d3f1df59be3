"""A light personalized branch: the merchant as extra tokens through decoupled cross-attention.

IP-Adapter-style conditioning (as PPD and PIPE condition on a user), applied to every cross-attention
layer of the frozen U-Net:

    u = MerchantEncoder(features)                            [B, d_u]
    tokens = LayerNorm(Linear(u)) viewed as [B, T, d_text]   T merchant tokens in the text's width
    attn2(h) = Attention(q(h), K(text), V(text))             the frozen layer, as it was
             + W_out · Attention(q(h), K_m(tokens), V_m(tokens))

K_m and V_m are new per layer; V_m starts at zero, so an untrained adapter leaves the U-Net's
prediction exactly unchanged. The frozen layer's own query and output weights are reused. The
tokens reach each layer as an argument (``cross_attention_kwargs``), never as state.

Cost: about 2 % of SD 1.5's U-Net parameters and one small extra attention per cross-attention layer,
instead of a second copy of the U-Net's encoder. Unlike the ControlNet branch it changes the frozen
U-Net's encoder half too, so ε_θ and ε_ref cannot share it in training.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.merchant import MerchantEncoder
from perfusion_cli.models.text import TextConditions


class MerchantKV(nn.Module):
    """One cross-attention layer's merchant keys and values."""

    def __init__(self, token_dim: int, inner_dim: int):
        super().__init__()
        self.to_k = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(token_dim, inner_dim, bias=False)
        nn.init.zeros_(self.to_v.weight)


class _Processor:
    """The attention processor installed on the U-Net: the default one, plus the merchant's attention on
    cross-attention layers. A plain object (not a module), so the adapter's weights stay the adapter's
    and the frozen U-Net's parameters stay its own."""

    def __init__(self, layer: MerchantKV | None, default=None):
        self.layer = layer
        self.default = default or AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, merchant_tokens: torch.Tensor | None = None, merchant_scale: float = 1.0,
                 **kwargs) -> torch.Tensor:
        output = self.default(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.layer is None or merchant_tokens is None or merchant_scale == 0:
            return output
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        heads, head_dim = attn.heads, query.shape[-1] // attn.heads
        split = lambda x: x.view(batch, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
        tokens = merchant_tokens.to(query.dtype)
        attended = F.scaled_dot_product_attention(split(query), split(self.layer.to_k(tokens)),
                                                  split(self.layer.to_v(tokens)))
        attended = attended.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        return output + merchant_scale * F.linear(attended, attn.to_out[0].weight) / attn.rescale_output_factor


def layer_key(name: str) -> str:
    """A U-Net attention processor's name as the key of its layer in ``MerchantAdapter.layers``."""
    return name.replace(".", "__")


class MerchantAdapter(ModelMixin, ConfigMixin):
    # nothing of its own to checkpoint: its K/V run inside the U-Net's blocks, which the U-Net checkpoints
    _supports_gradient_checkpointing = False
    residual_only = False  # it acts inside the U-Net's encoder half too

    @register_to_config
    def __init__(self, cross_attention: dict, token_dim: int, cardinalities: list[int], features: list | None = None,
                 merchant_encoder: dict | None = None, tokens: int = 4, base_model: str | None = None,
                 resolution: int | None = None):
        """``cross_attention``: the U-Net's cross-attention processor names → their attention's inner width.
        (Registered names must not be sub-module names: ConfigMixin sets each as an attribute.)"""
        super().__init__()
        encoder = MerchantEncoderConfig(**(merchant_encoder or {}))
        self.merchant = MerchantEncoder(cardinalities, encoder)
        self.to_tokens = nn.Linear(encoder.user_dim, tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.layers = nn.ModuleDict({layer_key(name): MerchantKV(token_dim, inner)
                                     for name, inner in cross_attention.items()})

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, vocab: FeatureVocab, merchant: MerchantEncoderConfig,
                  tokens: int = 4, base_model: str | None = None, resolution: int | None = None) -> "MerchantAdapter":
        layers = {f"{name}.processor": module.to_q.out_features for name, module in unet.named_modules()
                  if isinstance(module, Attention) and module.is_cross_attention}
        adapter = cls(cross_attention=layers, token_dim=unet.config.cross_attention_dim, cardinalities=vocab.cardinalities,
                      features=vocab.to_json(), merchant_encoder=asdict(merchant), tokens=tokens,
                      base_model=base_model, resolution=resolution)
        return adapter.to(device=unet.device)

    @property
    def vocab(self) -> FeatureVocab:
        return FeatureVocab.from_json(self.config.features or [])

    def attach(self, unet: UNet2DConditionModel, processor: type | None = None) -> None:
        """Install the processors on the frozen U-Net (every layer: calls without tokens stay the base).
        ``processor``: the attention implementation underneath (default SDPA)."""
        unet.set_attn_processor({name: _Processor(self.layers[layer_key(name)] if layer_key(name) in self.layers
                                                  else None, processor() if processor else None)
                                 for name in unet.attn_processors})

    def condition(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.condition_from_embedding(self.merchant(features), size)

    def condition_from_embedding(self, u: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """u: [B, d_u] → merchant tokens [B, T, d_text] (``size`` is unused: tokens have no resolution)."""
        return self.norm(self.to_tokens(u).view(u.shape[0], self.config.tokens, self.config.token_dim))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: TextConditions,
                features: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, dict]:
        """The frozen U-Net's extra keyword arguments: the merchant tokens for every cross-attention layer.

        Pass ``features`` [B, F], or precomputed tokens ``cond`` [B, T, d_text]. ``sample``'s dtype is read;
        ``timestep`` and ``text`` are not (the tokens act inside the U-Net's own call); they keep the
        signature every branch kind shares.
        """
        if cond is None:
            cond = self.condition(features)
        return {"cross_attention_kwargs": {"merchant_tokens": cond.to(sample.dtype), "merchant_scale": scale}}
