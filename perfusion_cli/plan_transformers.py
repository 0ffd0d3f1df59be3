"""``bench --plan`` for the flow transformers' ``generate`` (FLUX.1, SD 3.5): text + steps × one velocity + VAE
decode per image, with and without the merchant adapter, through the family's own calls (``text_from_ids``,
``velocity``). FLUX.1-dev is guidance-distilled: guidance is an embedded number, so a step is one transformer
call at batch 1; SD 3.5 guides as the U-Nets do, the prompt and the empty prompt as a batch of 2. The training
step is family-independent (``plan.train_gen_step`` traces the objective on the family's frozen parts)."""

from __future__ import annotations

from dataclasses import replace

import torch

from perfusion_cli.accounting import count, parameters, tensors_of
from perfusion_cli.config import GenerateConfig, GenTrainConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.families import frozen_layout

META = torch.device("meta")


def transformer_generate_costs(train: GenTrainConfig, config: GenerateConfig, vocab: FeatureVocab, images: int = 1,
                               dtype: torch.dtype = torch.bfloat16) -> dict:
    """Counted costs of one pipeline call of ``images`` images: text, one step (base and with the adapter), decode;
    with the frozen parameters, the adapter's and its weights' bytes. The transformers run in bf16 (fp16 overflows
    in their activations), whatever ``dtype`` the U-Nets' plan asks for."""
    dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    frozen = frozen_layout(train.base_model, dtype, META)
    parts = frozen.sd
    with META:
        branch = frozen.create_branch(replace(train, gradient_checkpointing=False), vocab, train.base_model)
        branch = branch.to(dtype).eval()
    resolution = config.resolution or train.resolution
    latent = resolution // frozen.latent_scale
    rows = images * (2 if frozen.guided_by_batch and config.guidance > 1 else 1)
    with META, torch.no_grad():
        ids = [torch.zeros(rows, length, dtype=torch.long) for length in frozen.text_lengths]
        noisy = torch.zeros(rows, frozen.latent_channels, latent, latent, dtype=dtype)
        times = torch.full((rows,), 500.0)
        text = frozen.text_from_ids(ids)
        tokens = branch.condition(torch.zeros(rows, len(vocab.features), dtype=torch.long)).to(dtype)
        one = torch.zeros(images, frozen.latent_channels, latent, latent, dtype=dtype)
    weights = [*tensors_of(*parts.frozen_modules)]
    inputs = [*ids, noisy, times, text.hidden, text.pooled, tokens, one]
    with torch.no_grad():
        extra = branch(noisy, times, text, cond=tokens)
        steps = {personalized: count(lambda: frozen.velocity(noisy, times, text, extra if personalized else None,
                                                             config.guidance),
                                     weights + (tensors_of(branch) if personalized else []) + inputs)
                 for personalized in (False, True)}
        return {"text": count(lambda: frozen.text_from_ids(ids), weights + inputs),
                "decode": count(lambda: parts.vae.decode(one / parts.vae.config.scaling_factor), weights + inputs),
                "steps": steps, "frozen": sum(parameters(module) for module in parts.frozen_modules),
                "branch": parameters(branch),
                "branch_bytes": sum(t.numel() * t.element_size() for t in tensors_of(branch)),
                "resolution": resolution, "rows": rows,
                "step": "guided step" if frozen.guided_by_batch else "step (guidance embedded)", "dtype": dtype}
