"""The merchant adapter on FLUX.1's double-stream attention (``joint_adapter.py`` says what it is).

FLUX's processor runs as it is (``FluxAttnProcessor``: rotary embeddings on the image and text queries); the
merchant's share is a second attention of the image stream's queries (after FLUX's q-norm, without rotary
embedding) over the merchant tokens, through the block's output weight. Recomputing the query and the output
projection costs about 4 % of a step at 1024² (``bench --plan``); the single-stream blocks are left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from perfusion_cli.models.adapter import MerchantKV
from perfusion_cli.models.joint_adapter import JointAttentionAdapter


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


class FluxMerchantAdapter(JointAttentionAdapter):
    """The merchant adapter on FLUX's double-stream attention."""

    processor = _JointProcessor
