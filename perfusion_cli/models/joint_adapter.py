"""The merchant adapter on a flow transformer's joint attention: what FLUX.1's and SD 3.5's share.

The U-Net adapter (``adapter.py``) carried to MMDiT blocks, where diffusers' IP-Adapter processors for FLUX and
SD3 attach image tokens: the image stream's queries also attend to the merchant's tokens through new keys and
values, and the result goes through the block's own output projection (its weight, reused and frozen):

    image_out = to_out(Attention(q, [K_image; K_text], [V_image; V_text]))          the frozen block, as it was
              + W_out · Attention(q, K_m(tokens), V_m(tokens))                      the merchant's share

Tokens are the merchant embedding in the text stream's width (``joint_attention_dim``, T5's 4096), as the U-Net
adapter's are in the text encoder's; they carry no position, so no rotary embedding. V_m starts at zero: an
untrained adapter leaves the transformer's velocity exactly unchanged. The layers are the attentions with a text
stream (``added_kv_proj_dim``: FLUX's 19 double-stream blocks, SD 3.5's 24 joint blocks); FLUX's single-stream
blocks and SD 3.5's image-only second attentions are left alone, as the IP-Adapters leave them. The tokens
reach the layers as ``joint_attention_kwargs``, never as state. Each family names its attention processor
(``processor``), which installs the merchant's share in its own attention.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.adapter import MerchantAdapter, layer_key
from perfusion_cli.models.text import TextConditions


class JointAttentionAdapter(MerchantAdapter):
    """``MerchantAdapter``'s merchant encoder, tokens and per-layer K/V, on a transformer's joint attention."""

    processor: type  # called with (the layer's MerchantKV or None); the family's attention with the merchant's share

    @classmethod
    def from_transformer(cls, transformer: torch.nn.Module, vocab: FeatureVocab, merchant: MerchantEncoderConfig,
                         tokens: int = 4, base_model: str | None = None,
                         resolution: int | None = None) -> "JointAttentionAdapter":
        layers = {f"{name}.processor": module.inner_dim for name, module in transformer.named_modules()
                  if getattr(module, "added_kv_proj_dim", None) is not None}
        adapter = cls(cross_attention=layers, token_dim=transformer.config.joint_attention_dim,
                      cardinalities=vocab.cardinalities, features=vocab.to_json(), merchant_encoder=asdict(merchant),
                      tokens=tokens, base_model=base_model, resolution=resolution)
        return adapter.to(device=transformer.device)

    def attach(self, transformer: torch.nn.Module, processor: type | None = None) -> None:
        """Install the processors on the frozen transformer (calls without tokens stay the base). ``processor`` is
        accepted for the branch interface; the family's own attention (SDPA) runs underneath."""
        transformer.set_attn_processor({name: self.processor(self.layers[layer_key(name)]
                                                             if layer_key(name) in self.layers else None)
                                        for name in transformer.attn_processors})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: TextConditions,
                features: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, dict]:
        """The frozen transformer's extra keyword arguments: the merchant tokens for its joint attention."""
        if cond is None:
            cond = self.condition(features)
        return {"joint_attention_kwargs": {"merchant_tokens": cond.to(sample.dtype), "merchant_scale": scale}}
