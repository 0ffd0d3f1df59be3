"""The merchant adapter on a flow transformer's joint attention (FLUX.1's ``FluxTransformer2DModel``).

The U-Net adapter (``adapter.py``) carried to FLUX's double-stream (MMDiT) blocks, where diffusers'
``FluxIPAdapterAttnProcessor`` attaches image tokens: the image stream's queries also attend to the
merchant's tokens through new keys and values, and the result goes through the block's own output
projection (its weight, reused and frozen) before the block's gate and residual:

    image_out = to_out(Attention(q, [K_text; K_image], [V_text; V_image]))          the frozen block, as it was
              + W_out · Attention(norm_q(q), K_m(tokens), V_m(tokens))               the merchant's share

Tokens are the merchant embedding in the text stream's width (``joint_attention_dim``, T5's 4096), as the
U-Net adapter's are in the text encoder's; they carry no position, so no rotary embedding. V_m starts at zero:
an untrained adapter leaves the transformer's velocity exactly unchanged. The single-stream blocks, whose
attention mixes text and image tokens in one sequence, are left alone (as the IP-Adapter leaves them).
The tokens reach the blocks as ``joint_attention_kwargs``, never as state.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxTransformer2DModel

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.adapter import MerchantAdapter, MerchantKV, layer_key
from perfusion_cli.models.text import TextConditions


class _JointProcessor:
    """FLUX's attention processor, plus the merchant's attention on the image stream of a double-stream block."""

    def __init__(self, layer: MerchantKV | None):
        self.layer = layer
        self.default = FluxAttnProcessor()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 merchant_tokens: torch.Tensor | None = None, merchant_scale: float = 1.0):
        output = self.default(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if self.layer is None or merchant_tokens is None or merchant_scale == 0:
            return output
        image, text = output
        heads = lambda x: x.unflatten(-1, (-1, attn.head_dim)).transpose(1, 2)  # noqa: E731  [B, H, N, D]
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim))).transpose(1, 2)
        tokens = merchant_tokens.to(query.dtype)
        attended = F.scaled_dot_product_attention(query, heads(self.layer.to_k(tokens)), heads(self.layer.to_v(tokens)))
        return image + merchant_scale * F.linear(attended.transpose(1, 2).flatten(2), attn.to_out[0].weight), text


class FluxMerchantAdapter(MerchantAdapter):
    """``MerchantAdapter``'s merchant encoder, tokens and per-layer K/V, on FLUX's double-stream attention."""

    @classmethod
    def from_transformer(cls, transformer: FluxTransformer2DModel, vocab: FeatureVocab,
                         merchant: MerchantEncoderConfig, tokens: int = 4, base_model: str | None = None,
                         resolution: int | None = None) -> "FluxMerchantAdapter":
        layers = {f"{name}.processor": module.inner_dim for name, module in transformer.named_modules()
                  if hasattr(module, "added_kv_proj_dim") and module.added_kv_proj_dim is not None}
        adapter = cls(cross_attention=layers, token_dim=transformer.config.joint_attention_dim,
                      cardinalities=vocab.cardinalities, features=vocab.to_json(), merchant_encoder=asdict(merchant),
                      tokens=tokens, base_model=base_model, resolution=resolution)
        return adapter.to(device=transformer.device)

    def attach(self, transformer: FluxTransformer2DModel, processor: type | None = None) -> None:
        """Install the processors on the frozen transformer (calls without tokens stay the base). ``processor`` is
        accepted for the branch interface; FLUX's own attention (SDPA) runs underneath."""
        transformer.set_attn_processor({name: _JointProcessor(self.layers[layer_key(name)]
                                                              if layer_key(name) in self.layers else None)
                                        for name in transformer.attn_processors})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: TextConditions,
                features: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, dict]:
        """The frozen transformer's extra keyword arguments: the merchant tokens for its double-stream blocks."""
        if cond is None:
            cond = self.condition(features)
        return {"joint_attention_kwargs": {"merchant_tokens": cond.to(sample.dtype), "merchant_scale": scale}}
