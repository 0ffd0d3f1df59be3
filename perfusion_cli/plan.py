"""``perfusion bench --plan --recipe R``: what a recipe costs at its real settings, before renting a GPU.

From configs alone (no weights, no GPU, offline), the recipe's models are built on the meta device and
one step of each job is traced through the same modules the commands run:

- ``train-rm``: PerFusionRM's two towers with their plug-ins on ``batch_size`` groups of
  ``group_size`` images, backward, AdamW step;
- ``train-gen``: the frozen SD parts (VAE encode unless latents are cached, text encoder), then the trainer's
  own group-loss step (``GroupDPOObjective.terms``: the noise process, the branch and ``FrozenSD.predictions``,
  the loss and its anchors), backward, AdamW step;
- ``generate``: one guided denoising step (batch 2: unconditional + conditional) with and without the
  branch, the text encoder and the VAE decode; per image = text + steps × step + decode;
- ``train-gen --online``: one on-policy step: ``batch_size × group_size`` candidates drawn with the branch
  (``sample_steps`` guided steps and the decode, in the training dtype), scored by PerFusionRM (the
  ``train-rm`` section's model, forward only), then the train-gen step on their latents (no VAE encode).
  Its peak is the larger of the draw's (plus the branch's gradients and AdamW moments, alive across it)
  and the training step's, plus the reward model's weights.

Each count gives parameters (trainable / frozen), GFLOPs and the peak of live tensor bytes
(``accounting.count``). Mixed precision: the step is traced in the compute dtype (bf16/fp16); the
trainable weights, their gradients and AdamW's two moments are kept in fp32 by Accelerate, which adds
8 bytes per trainable parameter to the traced peak. Attention is counted as a memory-efficient kernel
(see ``accounting``). What is not modelled: the CUDA context (about 0.5–1 GB) and allocator fragmentation;
``fits`` keeps 8 % of a card free for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from perfusion_cli.accounting import Cost, count, parameters, tensors_of
from perfusion_cli.config import (ONLINE_SECTION, SECTIONS, GenerateConfig, GenTrainConfig, MerchantEncoderConfig,
                                  RMTrainConfig, build, load_recipe, train_gen_values)
from perfusion_cli.data.vocab import Feature, FeatureVocab
from perfusion_cli.models.architectures import build_clip, build_sd
from perfusion_cli.models.branch_kinds import create_branch
from perfusion_cli.models.families import frozen_layout, is_flow_transformer
from perfusion_cli.models.frozen_sd import DTYPES
from perfusion_cli.models.reward import PerFusionRM
from perfusion_cli.models.text import TextConditions, encode_ids
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.pipeline import OFF, REUSE, branch_schedule
from perfusion_cli.plan_transformers import transformer_generate_costs

CARDS_GIB = (24, 40, 80)
HEADROOM = 0.92
TEXT_TOKENS = 77
META = torch.device("meta")


def planning_vocab(merchants: int) -> FeatureVocab:
    """A stand-in vocabulary (the real one comes from the data): the merchant id and six profile features."""
    features = [Feature("merchant_id", "categorical", [f"m{i}" for i in range(merchants)])]
    features += [Feature(f"feature_{i}", "categorical", [str(v) for v in range(16)]) for i in range(6)]
    return FeatureVocab(features)


@dataclass
class JobPlan:
    job: str
    model: str
    shape: str
    precision: str
    gradient_checkpointing: bool
    trainable_parameters: int
    frozen_parameters: int
    gflops: float
    peak_gib: float
    fits: dict[str, bool]
    notes: str = ""


def _tokens(text_config) -> int:
    """Prompts are padded to the tokenizer's length: 77 for CLIP's text towers (fewer for tiny ones)."""
    return min(TEXT_TOKENS, text_config.max_position_embeddings)


def _fits(peak_bytes: int) -> dict[str, bool]:
    return {f"{card} GB": peak_bytes <= card * 2**30 * HEADROOM for card in CARDS_GIB}


def _with_master_weights(cost: Cost, trainable: int, mixed: bool) -> int:
    return cost.peak_bytes + (8 * trainable if mixed else 0)


def _adamw_step(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5, foreach=False)


@dataclass
class Step:
    """One traced job: the step to run, the tensors alive before it, and the module that trains."""

    run: object
    existing: list[torch.Tensor]
    trainable: torch.nn.Module
    frozen_parameters: int
    shape: str
    notes: str = ""


def train_rm_step(config: RMTrainConfig, vocab: FeatureVocab, device: torch.device = META) -> Step:
    dtype = DTYPES[config.mixed_precision]
    with device:
        clip = build_clip(config.base_model, dtype)
        module = PerFusionRM.from_clip(clip, vocab, config.plugin, config.shared_plugin, config.plugin_hidden,
                                       config.merchant, config.taste_head,
                                       config.prompt_scale).to(dtype)
    if config.gradient_checkpointing:
        module.enable_gradient_checkpointing()
    if config.freeze_backbone:
        module.clip.requires_grad_(False)
    module.train()
    images, size = config.batch_size * config.group_size, module.image_size
    tokens = _tokens(module.clip.config.text_config)
    with device:
        ids = torch.zeros(config.batch_size, tokens, dtype=torch.long)
        mask = torch.ones(config.batch_size, tokens, dtype=torch.long)
        pixels = torch.zeros(images, 3, size, size, dtype=dtype)
        features = torch.zeros(config.batch_size, len(vocab.features), dtype=torch.long)
    optimizer = _adamw_step(module)

    def step() -> None:
        text = module.text_embeddings(ids, mask, features)  # [B, P]
        image = module.image_embeddings(pixels, features.repeat_interleave(config.group_size, 0))  # [B·K, P]
        scores = (image.view(config.batch_size, config.group_size, -1) * text[:, None]).sum(-1)
        scores.float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Step(step, [*tensors_of(module), ids, mask, pixels, features], module, parameters(module, False),
                f"{config.batch_size} groups × {config.group_size} images at {size}² + {tokens}-token prompts")


def _job(name: str, config, step: Step) -> JobPlan:
    cost = count(step.run, step.existing)
    trainable = parameters(step.trainable, True)
    peak = _with_master_weights(cost, trainable, config.mixed_precision != "no")
    return JobPlan(name, config.base_model, step.shape, config.mixed_precision, config.gradient_checkpointing,
                   trainable, step.frozen_parameters, cost.gflops, peak / 2**30, _fits(peak), step.notes)


def train_gen_step(config: GenTrainConfig, vocab: FeatureVocab, device: torch.device = META) -> Step:
    dtype = DTYPES[config.mixed_precision]
    frozen = frozen_layout(config.base_model, dtype, device, config.share_encoder, config.cache_latents)
    frozen.check_resolution(config.resolution)
    sd = frozen.sd
    with device:
        branch = frozen.create_branch(config, vocab, config.base_model).to(dtype).train()
    groups, k, latent = config.batch_size, config.group_size, config.resolution // frozen.latent_scale
    with device:
        pixels = torch.zeros(groups * k, 3, config.resolution, config.resolution, dtype=sd.vae.dtype)  # SDXL: fp32
        cached = torch.zeros(groups * k, frozen.latent_channels, latent, latent, dtype=dtype)
        ids = [torch.zeros(groups, length, dtype=torch.long) for length in frozen.text_lengths]
        features = torch.zeros(groups, len(vocab.features), dtype=torch.long)
        rows = torch.arange(groups).repeat_interleave(k)
        valid = torch.ones(groups, k, dtype=torch.bool)
        positive = torch.zeros(groups, k, dtype=torch.bool)
        positive[:, 0] = True
    optimizer = _adamw_step(branch)
    objective = GroupDPOObjective(frozen, config)  # the trainer's own step (training/gen.py), not a copy of it

    def step() -> None:
        with torch.no_grad():
            latents = cached if config.cache_latents else frozen.encode_pixels(pixels).to(dtype)
            text = frozen.text_from_ids(ids)
        loss, _ = objective.terms(branch, latents, text, features, rows, valid, positive)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    existing = [*tensors_of(*sd.frozen_modules, branch), *ids, features, rows, valid, positive,
                cached if config.cache_latents else pixels]
    encode = "cached latents" if config.cache_latents else "VAE encode in the step"
    shared = frozen.share_encoder and branch.residual_only
    return Step(step, existing, branch, sum(parameters(module) for module in sd.frozen_modules),
                f"{groups} groups × {k} candidates at {config.resolution}² ({encode})",
                f"{config.branch} branch; " + ("shared frozen encoder half" if shared else "two full frozen passes"))


def sd_generate_costs(train: GenTrainConfig, config: GenerateConfig, vocab: FeatureVocab, images: int = 1,
                      dtype: torch.dtype = torch.float16) -> dict:
    """The U-Nets' costs of one pipeline call (see ``plan_generate``): text, one guided step with and without the
    branch, decode; the steps a residual branch reuses or skips cost a base step."""
    with META:
        sd = build_sd(train.base_model, dtype).components(train.base_model)
        branch = create_branch(train, sd.unet, vocab, train.base_model).to(dtype).eval()
    resolution = config.resolution or train.resolution
    scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    latent = resolution // scale
    rows = images * (2 if config.guidance > 1 else 1)
    with META:
        ids = torch.zeros(rows, _tokens(sd.text_encoder.config), dtype=torch.long)
        sample = torch.zeros(rows, sd.unet.config.in_channels, latent, latent, dtype=dtype)
        t = torch.zeros((), dtype=torch.long)
        context = TextConditions(
            torch.zeros(rows, _tokens(sd.text_encoder.config), sd.unet.config.cross_attention_dim, dtype=dtype),
            torch.zeros(rows, sd.text_encoder_2.config.projection_dim, dtype=dtype) if sd.is_sdxl else None,
        ).sized(resolution, resolution)
        cond = branch.condition(torch.zeros(rows, len(vocab.features), dtype=torch.long), (latent, latent)).to(dtype)
        one = torch.zeros(images, sd.unet.config.in_channels, latent, latent, dtype=dtype)
    weights = [*tensors_of(*sd.frozen_modules)]
    inputs = [ids, sample, t, *(x for x in (context.hidden, context.pooled, context.time_ids) if x is not None),
              cond, one]

    def guided_step(personalized: bool):
        def run() -> None:
            extra = branch(sample, t, context, cond=cond) if personalized else {}
            sd.unet(sample, t, **context.unet_kwargs(), **extra)

        return count(run, weights + (tensors_of(branch) if personalized else []) + inputs)

    schedule = branch_schedule(config.steps, config.branch_every, config.branch_until)
    with torch.no_grad():
        return {"text": count(lambda: encode_ids(sd.text_encoders, [ids] * len(sd.text_encoders)), weights + inputs),
                "decode": count(lambda: sd.vae.decode(one), weights + inputs),
                "steps": {False: guided_step(False), True: guided_step(True)},
                "frozen": sum(parameters(module) for module in sd.frozen_modules), "branch": parameters(branch),
                "branch_bytes": sum(t.numel() * t.element_size() for t in tensors_of(branch)),
                "resolution": resolution, "rows": rows, "step": "guided step",
                "plain": schedule.count(OFF) + (schedule.count(REUSE) if branch.residual_only else 0)}


# (is the base this family's?, its costs); the U-Nets otherwise
GENERATE_COSTS = [(is_flow_transformer, transformer_generate_costs)]


def plan_generate(train: GenTrainConfig, config: GenerateConfig, vocab: FeatureVocab, images: int = 1,
                  dtype: torch.dtype = torch.float16) -> list[JobPlan]:
    """Per pipeline call of ``images`` images (one, for ``bench --plan``), base and personalized: text + steps ×
    denoising step + VAE decode, in ``dtype`` (fp16 weights on a GPU; ``generate`` on a CPU runs fp32)."""
    costs = next((costs for matches, costs in GENERATE_COSTS if matches(train.base_model)), sd_generate_costs)
    costs = costs(train, config, vocab, images, dtype)
    text, decode, base_step, plain = costs["text"], costs["decode"], costs["steps"][False], costs.get("plain", 0)
    plans = []
    for name, personalized in (("generate (base)", False), ("generate (PerFusion)", True)):
        step = costs["steps"][personalized]
        steps = config.steps - plain if personalized else config.steps
        flops = text.flops + steps * step.flops + (config.steps - steps) * base_step.flops + decode.flops
        extra = costs["branch_bytes"] if personalized else 0
        peak = max(text.peak_bytes + extra, step.peak_bytes, decode.peak_bytes + extra)
        total = costs["frozen"] + (costs["branch"] if personalized else 0)
        reuse = (f", {train.branch} branch on {steps} of the steps" if personalized and plain else
                 f", {train.branch} branch" if personalized else "")
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(costs.get("dtype", dtype), "fp32")
        what = costs.get("step", "step")
        plans.append(JobPlan(name, train.base_model, f"{images} image{'s' if images > 1 else ''} at "
                             f"{costs['resolution']}², {config.steps} steps, guidance {config.guidance:g} "
                             f"(batch {costs.get('rows', images)} per step){reuse}",
                             precision, False, 0, total,
                             flops / 1e9, peak / 2**30, _fits(peak), f"one {what} {step.gflops:.0f} GFLOPs"))
    return plans


def plan_online(rm: RMTrainConfig, train: GenTrainConfig, vocab: FeatureVocab) -> JobPlan:
    """One step of ``train-gen --online`` (see the module's docstring)."""
    dtype = DTYPES[train.mixed_precision]
    images = train.batch_size * train.group_size
    draw = plan_generate(train, GenerateConfig(steps=train.sample_steps, guidance=train.sample_guidance,
                                               resolution=train.resolution), vocab, images, dtype)[1]
    with META:
        module = PerFusionRM.from_clip(build_clip(rm.base_model, dtype), vocab, rm.plugin, rm.shared_plugin,
                                       rm.plugin_hidden, rm.merchant, rm.taste_head, rm.prompt_scale).to(dtype).eval()
        tokens = _tokens(module.clip.config.text_config)
        ids = torch.zeros(train.batch_size, tokens, dtype=torch.long)
        mask = torch.ones(train.batch_size, tokens, dtype=torch.long)
        pixels = torch.zeros(images, 3, module.image_size, module.image_size, dtype=dtype)
        features = torch.zeros(images, len(vocab.features), dtype=torch.long)
    with torch.no_grad():
        score = count(lambda: (module.text_embeddings(ids, mask, features[::train.group_size]),
                               module.image_embeddings(pixels, features)), [*tensors_of(module), ids, mask, pixels])
    learn = _job("train-gen", train, train_gen_step(replace(train, cache_latents=True), vocab))
    trainable = learn.trainable_parameters
    reward_bytes = sum(t.numel() * t.element_size() for t in tensors_of(module))
    peak = max(learn.peak_gib * 2**30, draw.peak_gib * 2**30 + 12 * trainable) + reward_bytes
    return JobPlan("train-gen --online", train.base_model,
                   f"{train.batch_size} (merchant, prompt) pairs × {train.group_size} drawn candidates at "
                   f"{train.resolution}², {train.sample_steps} steps, guidance {train.sample_guidance:g}",
                   train.mixed_precision, train.gradient_checkpointing, trainable,
                   learn.frozen_parameters + parameters(module), draw.gflops + score.flops / 1e9 + learn.gflops,
                   peak / 2**30, _fits(int(peak)),
                   f"per step: drawing {draw.gflops:,.0f} GFLOPs, scoring {score.flops / 1e9:,.0f}, "
                   f"the group-loss step {learn.gflops:,.0f}")


def plan_recipe(recipe: str, merchants: int = 10_000,
                jobs: tuple[str, ...] = ("train-rm", "train-gen", "generate", "train-gen --online"),
                overrides: dict[str, dict] | None = None) -> dict:
    """Every job of a recipe, planned; the sections a recipe leaves out use the defaults of config.py.
    ``overrides``: section → keys that replace the recipe's (what flags do for the other commands)."""
    sections = load_recipe(recipe)
    for name, values in (overrides or {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    section = lambda name: build(SECTIONS[name], sections.get(name, {}), where=f"recipe {recipe} [{name}]")  # noqa: E731
    vocab = planning_vocab(merchants)
    plans: list[JobPlan] = []
    if "train-rm" in jobs:
        plans.append(_job("train-rm", section("train-rm"), train_rm_step(section("train-rm"), vocab)))
    if "train-gen" in jobs:
        plans.append(_job("train-gen", section("train-gen"), train_gen_step(section("train-gen"), vocab)))
    if "generate" in jobs:
        plans += plan_generate(section("train-gen"), section("generate"), vocab)
    if "train-gen --online" in jobs:
        values = {**train_gen_values(sections, online=True), **(overrides or {}).get("train-gen", {})}
        online = build(GenTrainConfig, values, where=f"recipe {recipe} [{ONLINE_SECTION}]")
        plans.append(plan_online(section("train-rm"), online, vocab))
    return {"recipe": str(recipe), "assumptions": {
        "merchants": merchants, "profile_features": len(vocab.features) - 1, "text_tokens": TEXT_TOKENS,
        "attention": "memory-efficient kernel (SDPA flash/efficient or xFormers)",
        "mixed_precision": "step traced in the compute dtype; fp32 weights, gradients and AdamW moments of the "
                           "trainable parameters added (8 bytes each over the traced ones)",
        "fits": f"peak ≤ {HEADROOM:.0%} of the card (CUDA context and fragmentation not modelled)",
        "merchant_encoder": asdict(MerchantEncoderConfig())}, "jobs": [asdict(plan) for plan in plans]}
