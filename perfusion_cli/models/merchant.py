"""The merchant encoder (DESIGN §4): sparse profile features → a preference embedding u.

    e_i = Embedding_i(feature_i)                      one table per feature (one matrix, offset ids)
    x_0 = concat(e_1 .. e_m)
    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l             DCN-V2 cross layers, l = 0 .. L-1
    u = MLP(x_L)

Paper §4.2, eqs. 2-3; DCN-V2 is Wang et al. 2021 ("DCN V2", full-rank cross matrices).

``MerchantEncoderModel`` is one encoder on its own, with the vocabulary it reads: what ``perfusion export``
writes for merchants a model has not seen (their u from their profile).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.merchants import profile_features
from perfusion_cli.data.vocab import MERCHANT_ID_COLUMN, OOV, FeatureVocab
from perfusion_cli.errors import VocabularyMismatch


class CrossNetwork(nn.Module):
    """DCN-V2 explicit feature crossing: ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l``."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for linear in self.layers:
            x = x0 * linear(x) + x
        return x


class MerchantEncoder(nn.Module):
    """features: [B, F] long ids (0 = out of vocabulary) → u: [B, user_dim]."""

    def __init__(self, cardinalities: list[int], config: MerchantEncoderConfig):
        super().__init__()
        self.cardinalities = list(cardinalities)
        offsets = torch.tensor([0, *itertools.accumulate(cardinalities)][:-1], dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(sum(cardinalities), config.embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        width = len(cardinalities) * config.embed_dim
        self.cross = CrossNetwork(width, config.cross_layers)
        layers: list[nn.Module] = []
        previous = width
        for hidden in config.mlp_dims:
            layers += [nn.Linear(previous, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            previous = hidden
        layers.append(nn.Linear(previous, config.user_dim))
        self.mlp = nn.Sequential(*layers)
        self.id_dropout = config.id_dropout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != len(self.cardinalities):
            raise VocabularyMismatch(f"the model expects {len(self.cardinalities)} merchant features, the data has "
                                  f"{features.shape[-1]}: it was prepared with a different vocabulary")
        limits = torch.tensor(self.cardinalities, device=features.device)
        if not features.is_meta and (bool((features < 0).any()) or bool((features >= limits).any())):
            raise VocabularyMismatch("merchant feature ids fall outside the model's vocabulary: the data was "
                                  "prepared with a different vocabulary than the model was trained on")
        if self.training and self.id_dropout > 0:  # the merchant id's column, as the vocabulary places it
            dropped = torch.rand(features.shape[0], device=features.device) < self.id_dropout
            features = features.clone()
            features[:, MERCHANT_ID_COLUMN] = features[:, MERCHANT_ID_COLUMN].masked_fill(dropped, OOV)
        embedded = self.embedding(features + self.offsets.to(features.device))  # [B, F, d]
        return self.mlp(self.cross(embedded.flatten(1)))


class MerchantEncoderModel(ModelMixin, ConfigMixin):
    """A trained merchant encoder with its feature vocabulary, saved and loaded as a diffusers model folder."""

    @register_to_config
    def __init__(self, features: list[dict], merchant_encoder: dict):
        super().__init__()
        self.encoder = MerchantEncoder(FeatureVocab.from_json(features).cardinalities,
                                       MerchantEncoderConfig(**merchant_encoder))

    @classmethod
    def of(cls, encoder: MerchantEncoder, vocab: FeatureVocab, config: MerchantEncoderConfig) -> "MerchantEncoderModel":
        model = cls(features=vocab.to_json(), merchant_encoder=asdict(config))
        model.encoder.load_state_dict(encoder.state_dict())
        return model.eval()

    @property
    def vocab(self) -> FeatureVocab:
        return FeatureVocab.from_json(self.config.features)

    @torch.no_grad()
    def embed(self, profiles: list[dict]) -> torch.Tensor:
        """Merchants as lines of ``merchants.jsonl`` (``merchant_id`` + profile) → u [B, user_dim]."""
        ids = [profile_features(self.vocab, profile) for profile in profiles]
        return self.encoder(torch.tensor(ids, device=self.device))
