"""``perfusion export``: a generator run in the format a stock diffusers pipeline loads (DESIGN §12).

The adapter branch is, numerically, an IP-Adapter: merchant tokens made by Linear → reshape → LayerNorm
(diffusers' ``ImageProjection``) through decoupled K/V in every cross-attention layer, the frozen
layer's query and output projection reused (``IPAdapterAttnProcessor2_0``'s ``to_k_ip`` / ``to_v_ip``).
So ``export`` renames tensors and writes:

    ip_adapter.safetensors           image_proj.{proj,norm}.* + ip_adapter.<2k+1>.to_{k,v}_ip.weight, the
                                     k-th cross-attention layer in the U-Net's ``attn_processors`` order
                                     (the layout ``load_ip_adapter`` reads)
    merchant_embeddings.safetensors  one tensor [d_u] per merchant of the prepared data, keyed by its id:
                                     the merchant encoder's output, which the pipeline takes as
                                     ``ip_adapter_image_embeds``
    merchant_encoder/                the encoder itself with its vocabulary (``MerchantEncoderModel``),
                                     for merchants that arrive later
    README.md                        the model card, with the snippet that loads all of it

Classifier-free guidance: ``PerFusionPipeline`` gives the merchant's tokens to both halves of the
guidance batch (the empty prompt is guided against *with* the merchant), so the negative image
embedding is the merchant's own: ``ip_adapter_image_embeds=[torch.cat([u, u])]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from perfusion_cli.config import MerchantEncoderConfig
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.merchants import read_merchants
from perfusion_cli.errors import CheckpointError, ConfigError
from perfusion_cli.io import atomic_dir
from perfusion_cli.model_card import CARD, evaluations, front_matter, measurements, provenance
from perfusion_cli.models.adapter import MerchantAdapter, layer_key
from perfusion_cli.models.architectures import pipeline_class, unet_layout
from perfusion_cli.models.backbones import is_tiny, resolve
from perfusion_cli.models.branch_kinds import load_branch
from perfusion_cli.models.merchant import MerchantEncoderModel
from perfusion_cli.runs import model_class, model_folder, run_of

IP_ADAPTER = "ip_adapter.safetensors"
EMBEDDINGS = "merchant_embeddings.safetensors"
ENCODER = "merchant_encoder"
WRITTEN = {IP_ADAPTER, EMBEDDINGS, ENCODER, CARD}
IP_TOKENS = 4  # load_ip_adapter reads a "proj.weight" projection as 4 tokens
EXPORTABLE = ("adapter",)
BATCH = 4096  # merchants encoded at a time
SHOWN_ID = re.compile(r"[A-Za-z0-9_.-]{1,40}")  # an id the card may quote as its example (ids are user input)


@dataclass
class Exported:
    folder: Path
    merchants: int
    layers: int
    base_model: str


def ip_adapter_tensors(adapter: MerchantAdapter) -> dict[str, torch.Tensor]:
    """The adapter's weights under the names ``load_ip_adapter`` reads (``image_proj.*``, ``ip_adapter.*``)."""
    tensors = {"image_proj.proj.weight": adapter.to_tokens.weight, "image_proj.proj.bias": adapter.to_tokens.bias,
               "image_proj.norm.weight": adapter.norm.weight, "image_proj.norm.bias": adapter.norm.bias}
    cross = [name for name in unet_layout(adapter.config.base_model).attn_processors
             if not name.endswith("attn1.processor")]  # what diffusers gives an IP-Adapter processor, in its order
    missing = [name for name in cross if layer_key(name) not in adapter.layers]
    if missing or len(cross) != len(adapter.layers):
        raise ConfigError(f"the adapter's {len(adapter.layers)} layers are not the base U-Net's {len(cross)} "
                          f"cross-attention layers (first missing: {missing[:1]}): was the base model changed?")
    for index, name in enumerate(cross):
        layer = adapter.layers[layer_key(name)]
        tensors[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = layer.to_k.weight
        tensors[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = layer.to_v.weight
    return {name: tensor.detach().float().contiguous() for name, tensor in tensors.items()}


@torch.no_grad()
def merchant_embeddings(adapter: MerchantAdapter, merchants: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Every merchant of the prepared table → u [d_u], keyed by its id."""
    ids = list(merchants)
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        u = adapter.merchant(torch.tensor([merchants[m]["feature_ids"] for m in chunk])).float()
        out.update({merchant: row.clone() for merchant, row in zip(chunk, u)})
    return out


def require_exportable(run_dir: Path) -> Path:
    """The run's branch folder, or one line naming the branch kinds ``export`` writes (read from config.json only)."""
    folder = model_folder(run_dir, "generator")
    if model_class(folder) != MerchantAdapter.__name__:
        kind = _branch_kind(run_dir)
        raise ConfigError(f"perfusion export writes the {', '.join(EXPORTABLE)} branch (diffusers' IP-Adapter format); "
                          f"{run_dir} holds a {kind} branch, which stock pipelines cannot load — train with "
                          f"--branch adapter to export")
    return folder


def _branch_kind(run_dir: Path) -> str:
    try:
        return str(run_of(run_dir).summary().get("config", {}).get("branch", "ControlNet"))
    except CheckpointError:  # a run without its summary still has a branch, just unnamed
        return "ControlNet"


def export_generator(run_dir: Path, data_dir: Path, out: Path) -> Exported:
    run_dir, out = Path(run_dir), Path(out)
    folder = require_exportable(run_dir)
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - WRITTEN):
        raise ConfigError(f"--out {out} holds other files than an export: pass an empty or new folder")
    adapter = load_branch(folder).eval()
    if adapter.config.tokens != IP_TOKENS:
        raise ConfigError(f"diffusers' IP-Adapter loader reads {IP_TOKENS} merchant tokens; this adapter has "
                          f"{adapter.config.tokens} (train with adapter_tokens = {IP_TOKENS} to export)")
    adapter.vocab.require_same(load_manifest(data_dir).vocab, "generator", data_dir)
    merchants = read_merchants(data_dir)
    tensors = ip_adapter_tensors(adapter)
    embeddings = merchant_embeddings(adapter, merchants)
    encoder = MerchantEncoderModel.of(adapter.merchant, adapter.vocab,
                                      MerchantEncoderConfig(**(adapter.config.merchant_encoder or {})))
    example = next((m for m, row in merchants.items() if row.get("role") == "train" and SHOWN_ID.fullmatch(m)), "ID")
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / IP_ADAPTER), metadata={"format": "pt"})
        save_file(embeddings, str(tmp / EMBEDDINGS), metadata={"format": "pt", "what": "merchant_id -> u"})
        encoder.save_pretrained(tmp / ENCODER, safe_serialization=True)
        card = export_card(run_dir, adapter, out.resolve(), example, len(merchants))
        (tmp / CARD).write_text(card, encoding="utf-8")
    return Exported(out, len(merchants), (len(tensors) - 4) // 2, adapter.config.base_model)


def usage_snippet(base_model: str, export_dir: Path, merchant: str, resolution: int) -> str:
    """Ten lines that personalize a stock diffusers pipeline with the export (CPU in fp32 for the tiny bases)."""
    base = resolve(base_model, "sd")  # what a stock from_pretrained is given: the bundled tiny bases by path
    dtype, device = ("float32", "") if is_tiny(base_model) else ("float16", '.to("cuda")')
    return f'''import torch
from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler
from safetensors.torch import load_file

pipe = AutoPipelineForText2Image.from_pretrained({base!r}, torch_dtype=torch.{dtype}){device}
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # perfusion generate's sampler
pipe.load_ip_adapter({str(export_dir)!r}, subfolder="", weight_name="{IP_ADAPTER}", image_encoder_folder=None)
u = load_file({str(export_dir / EMBEDDINGS)!r})[{merchant!r}].view(1, 1, -1).to(pipe.device, pipe.dtype)
image = pipe("linen dress", ip_adapter_image_embeds=[torch.cat([u, u])], height={resolution}, width={resolution},
             num_inference_steps=30, guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
'''


def export_card(run_dir: Path, adapter: MerchantAdapter, export_dir: Path, merchant: str, merchants: int) -> str:
    run = run_of(run_dir)
    summary = run.summary()
    base = adapter.config.base_model
    resolution = adapter.config.resolution or 512
    try:
        kind = pipeline_class(base)
    except ConfigError:  # a hub base whose configs are neither shipped nor local: the card names no class
        kind = "a diffusers pipeline"
    return "\n".join([
        front_matter("generator", resolve(base, "sd"), ("ip-adapter",)),
        "# PerFusion merchant adapter (diffusers IP-Adapter format)\n",
        f"A merchant-personalized adapter for `{base}` ({kind}), exported by `perfusion export` from `{run.root}`: "
        f"{len(adapter.layers)} cross-attention layers, {IP_TOKENS} merchant tokens, and the embeddings of "
        f"{merchants} merchants.\n",
        "## Use it in diffusers\n",
        "```python", usage_snippet(base, export_dir, merchant, resolution).rstrip(), "```\n",
        "With the same seed, sampler and steps this draws the image `perfusion generate --merchant "
        f"{merchant} \"linen dress\" --steps 30 --guidance 7.5 --seed 0 --n 1` draws (tested to float tolerance).\n",
        "**One merchant per call.** diffusers repeats `ip_adapter_image_embeds` over every prompt and image of a "
        "call (`batch_size × num_images_per_prompt`), so a call personalizes for one merchant: several prompts or "
        "`num_images_per_prompt` are fine, but the embeddings of several merchants stacked into one call are "
        "spread across the whole batch without an error — call once per merchant. "
        "`pipe.set_ip_adapter_scale(s)` is perfusion's personalization scale.\n",
        "**Classifier-free guidance.** PerFusion conditions *both* halves of guidance on the merchant: the "
        "unconditional branch is the empty prompt with the merchant's tokens, so guidance amplifies the prompt and the "
        "adapter alone carries the taste, as in training. The negative image embedding is therefore the merchant's "
        "own `u`, not zeros: a zero negative would put the merchant inside what guidance multiplies by "
        "`guidance_scale`, a stronger effect the adapter was never trained for.\n",
        "**New merchants.** `merchant_encoder/` is the trained merchant encoder with its feature vocabulary: "
        "`perfusion_cli.models.merchant.MerchantEncoderModel.from_pretrained(...).embed([profile])` gives `u` for a "
        "merchant profile (a line of `merchants.jsonl`: `merchant_id` plus features); an id it never saw is encoded "
        "as unknown, the rest of the profile still counts.\n",
        provenance(summary), measurements(summary, evaluations(run)),
        "## Limits\n",
        "- Only the adapter branch exports; the ControlNet and XS branches need `perfusion generate` / the Python API.",
        "- Embeddings hold the merchants of the prepared data at export time; a profile feature outside the "
        "vocabulary is read as unknown.",
        "- Measured numbers above are on the data the run was trained and evaluated on; another marketplace needs "
        "its own evaluation.",
        ""])
