"""``bench --plan`` for the FLUX family's ``generate``: text (CLIP-L + T5) + steps × one velocity + VAE decode per
image, with and without the merchant adapter. FLUX.1-dev is guidance-distilled: guidance is an embedded number,
so a step is one transformer call at batch 1 (the U-Nets' classifier-free guidance doubles the batch instead).
The training step is family-independent (``plan.train_gen_step`` traces the objective on ``FrozenFlux``)."""

from __future__ import annotations

from dataclasses import replace

import torch

from perfusion_cli.accounting import count, parameters, tensors_of
from perfusion_cli.config import GenerateConfig, GenTrainConfig
from perfusion_cli.data.vocab import FeatureVocab
from perfusion_cli.models.flux_architecture import flux_layout
from perfusion_cli.models.frozen_flux import JointText, velocity

META = torch.device("meta")


def flux_generate_costs(train: GenTrainConfig, config: GenerateConfig, vocab: FeatureVocab, images: int = 1,
                        dtype: torch.dtype = torch.bfloat16) -> dict:
    """Counted costs of one pipeline call of ``images`` images: text, one step (base and with the adapter), decode;
    with the frozen parameters, the adapter's and its weights' bytes. FLUX runs in bf16 (fp16 overflows in its
    activations), whatever ``dtype`` the U-Nets' plan asks for."""
    dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    frozen = flux_layout(train.base_model, dtype, META)
    parts = frozen.sd
    with META:
        branch = frozen.create_branch(replace(train, gradient_checkpointing=False), vocab, train.base_model)
        branch = branch.to(dtype).eval()
    resolution = config.resolution or train.resolution
    latent = resolution // frozen.latent_scale
    transformer = parts.transformer.config
    with META:
        ids = [torch.zeros(images, length, dtype=torch.long) for length in frozen.text_lengths]
        noisy = torch.zeros(images, frozen.latent_channels, latent, latent, dtype=dtype)
        times = torch.full((images,), 500.0)
        text = JointText(torch.zeros(images, frozen.text_lengths[1], transformer.joint_attention_dim, dtype=dtype),
                         torch.zeros(images, transformer.pooled_projection_dim, dtype=dtype))
        tokens = branch.condition(torch.zeros(images, len(vocab.features), dtype=torch.long)).to(dtype)
    weights = [*tensors_of(*parts.frozen_modules)]
    inputs = [*ids, noisy, times, text.hidden, text.pooled, tokens]
    with torch.no_grad():
        extra = branch(noisy, times, text, cond=tokens)
        steps = {personalized: count(lambda: velocity(parts.transformer, noisy, times, text, frozen.latent_scale,
                                                      config.guidance, extra if personalized else None),
                                     weights + (tensors_of(branch) if personalized else []) + inputs)
                 for personalized in (False, True)}
        return {"text": count(lambda: frozen.text_from_ids(ids), weights + inputs),
                "decode": count(lambda: parts.vae.decode(noisy / parts.vae.config.scaling_factor), weights + inputs),
                "steps": steps, "frozen": sum(parameters(module) for module in parts.frozen_modules),
                "branch": parameters(branch),
                "branch_bytes": sum(t.numel() * t.element_size() for t in tensors_of(branch)),
                "resolution": resolution, "rows": images, "step": "step (guidance embedded)",
                "dtype": dtype}
