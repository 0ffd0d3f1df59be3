"""The merchant adapter on SD 3.5's joint attention (``joint_adapter.py`` says what it is).

SD3's joint attention is written out here, as diffusers' ``SD3IPAdapterJointAttnProcessor2_0`` writes it out, so
that the merchant's share reuses the block's own query and output projection: the merchant attention (the image
queries after SD3's q-norm, over the merchant tokens' keys and values) is added to the image stream's joint
attention before ``to_out``, so the adapter adds only its tokens' K/V and an attention over 4 keys (×1.002 a step
at 1024², ``bench --plan``). Every operation of the frozen path is the one ``JointAttnProcessor2_0`` runs, in its
order: an untrained adapter (V_m = 0) gives the base's velocity bit for bit, and calls without tokens, SD 3.5's
image-only second attentions among them, run diffusers' processor itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0

from perfusion_cli.models.adapter import MerchantKV
from perfusion_cli.models.joint_adapter import JointAttentionAdapter


class _SD3Processor:
    """SD3's joint attention, with the merchant's share added to the image stream before the output projection."""

    def __init__(self, layer: MerchantKV | None):
        self.layer = layer
        self.default = JointAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, merchant_tokens: torch.Tensor | None = None,
                 merchant_scale: float = 1.0):
        if self.layer is None or merchant_tokens is None or merchant_scale == 0 or encoder_hidden_states is None:
            return self.default(attn, hidden_states, encoder_hidden_states, attention_mask)
        heads = lambda x: x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # noqa: E731  [B, H, N, D]
        normed = lambda norm, x: norm(x) if norm is not None else x  # noqa: E731
        query = normed(attn.norm_q, heads(attn.to_q(hidden_states)))
        key = normed(attn.norm_k, heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        text_query = normed(attn.norm_added_q, heads(attn.add_q_proj(encoder_hidden_states)))
        text_key = normed(attn.norm_added_k, heads(attn.add_k_proj(encoder_hidden_states)))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        joint = F.scaled_dot_product_attention(torch.cat([query, text_query], dim=2), torch.cat([key, text_key], dim=2),
                                               torch.cat([value, text_value], dim=2))
        joint = joint.transpose(1, 2).flatten(2).to(query.dtype)
        image, text = joint[:, :hidden_states.shape[1]], joint[:, hidden_states.shape[1]:]
        tokens = merchant_tokens.to(query.dtype)
        merchant = F.scaled_dot_product_attention(query, heads(self.layer.to_k(tokens)), heads(self.layer.to_v(tokens)))
        image = attn.to_out[1](attn.to_out[0](image + merchant_scale * merchant.transpose(1, 2).flatten(2)))
        return image, (text if attn.context_pre_only else attn.to_add_out(text))


class SD3MerchantAdapter(JointAttentionAdapter):
    """The merchant adapter on SD 3.5's joint attention (each block's ``attn``; ``attn2`` is image-only)."""

    processor = _SD3Processor
