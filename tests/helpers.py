"""Builders for test inputs: small logs folders written by hand, and tiny synthetic marketplaces."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perfusion_cli.config import SECTIONS, TINY_RECIPE, PrepareConfig, SyntheticConfig, build, load_recipe
from perfusion_cli.data.prepare import prepare, prepare_synthetic
from perfusion_cli.models.flux_architecture import write_random_flux as _write_flux
from perfusion_cli.models.sd3_architecture import write_random_sd3 as _write_sd3

# What tests shrink in the shipped tiny recipe (recipes/tiny-cpu.toml): steps and batches, never the
# models or the optimisation settings the recipe chose.
SHRINK = {"train-rm": {"max_steps": 2, "batch_size": 4, "eval_every": 2},
          "train-gen": {"max_steps": 2, "batch_size": 2},
          "train-gen-online": {"max_steps": 2, "online_warmup": 0, "sample_steps": 2, "probe_pairs": 2},
          "generate": {"n": 2, "steps": 3},
          "eval-gen": {"max_pairs": 4, "n_per_prompt": 1, "steps": 3},
          "bench": {"steps": 2, "repeats": 1, "batch_size": 2}}


def tiny_recipe(**overrides: dict) -> dict:
    """The shipped tiny recipe, shrunk for tests, with per-section overrides (``train_rm={...}``; a None value
    removes the key, i.e. leaves it unset)."""
    recipe = load_recipe(TINY_RECIPE)
    for section, values in {**SHRINK, **{k.replace("_", "-"): v for k, v in overrides.items()}}.items():
        merged = {**recipe.get(section, {}), **SHRINK.get(section, {}), **values}
        recipe[section] = {key: value for key, value in merged.items() if value is not None}
    return recipe


def tiny_config(section: str, **values):
    """A config dataclass from the shrunk tiny recipe's section, with ``values`` on top."""
    return build(SECTIONS[section], tiny_recipe(**{section: values})[section])


def write_recipe(path: Path, recipe: dict) -> Path:
    """A recipe dict as TOML (tables, nested tables, scalars and lists: all our recipes use)."""
    def value(item) -> str:
        return json.dumps(item) if not isinstance(item, bool) else str(item).lower()

    lines = []
    for section, values in recipe.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for key, table in ((k, v) for k, v in values.items() if isinstance(v, dict)):
            lines.append(f"[{section}.{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def png_bytes(colour=(200, 30, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(root: Path, relative: str, data: bytes | None = None) -> str:
    """An image file; by default a plain PNG whose colour comes from its path (two paths, two images: a group
    showing the same image twice is quarantined)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(hashlib.sha256(relative.encode()).digest()[:3])
    path.write_bytes(png_bytes(colour) if data is None else data)
    return relative


def session(session_id: str, merchant: str = "m1", prompt: str = "linen dress", timestamp: float = 0.0,
            images: tuple[str, ...] = ("images/a.png", "images/b.png"), selected=(True, False)) -> dict:
    return {"session_id": session_id, "merchant_id": merchant, "prompt": prompt, "timestamp": timestamp,
            "candidates": [{"image": i, "selected": s} for i, s in zip(images, selected)]}


def write_logs(root: Path, merchants: list, sessions: list, extra_images: tuple[str, ...] = ()) -> Path:
    """Write merchants.jsonl and sessions.jsonl; a list item that is a str/bytes is written verbatim."""
    root.mkdir(parents=True, exist_ok=True)
    for relative in ("images/a.png", "images/b.png", *extra_images):
        if not (root / relative).exists():
            write_image(root, relative)
    for name, rows in (("merchants.jsonl", merchants), ("sessions.jsonl", sessions)):
        with open(root / name, "wb") as handle:
            for row in rows:
                if isinstance(row, bytes):
                    handle.write(row + b"\n")
                elif isinstance(row, str):
                    handle.write(row.encode("utf-8") + b"\n")
                else:
                    handle.write(json.dumps(row).encode("utf-8") + b"\n")
    return root


def many_sessions(merchant: str, count: int, start: int = 0) -> list[dict]:
    return [session(f"{merchant}-{i}", merchant, timestamp=float(start + i)) for i in range(count)]


def tiny_market(out: Path, merchants: int = 8, sessions: int = 12, seed: int = 0, style: str = "catalogue",
                taste: str = "colour", **prepare_kw) -> dict:
    """A prepared tiny synthetic marketplace in ``out``; returns the manifest."""
    synthetic = SyntheticConfig(merchants=merchants, sessions_per_merchant=sessions, seed=seed, style=style,
                                taste=taste)
    return prepare_synthetic(out, synthetic, PrepareConfig(**prepare_kw))


def prepare_logs(root: Path, out: Path, **prepare_kw) -> dict:
    return prepare(root, out, PrepareConfig(**prepare_kw))


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but hidden ones (locks, staging), by relative path: for byte-identity checks."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.startswith(".")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def text_conditions(unet, rows: int, tokens: int = 6, seed: int = 0, size: int = 64):
    """Random text conditions that fit ``unet``: hidden states, and for an SDXL U-Net (``text_time``) a pooled
    embedding and the size conditions of a ``size``² image."""
    from perfusion_cli.models.text import TextConditions

    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    pooled = None
    if config.addition_embed_type == "text_time":
        width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pooled = torch.randn(rows, width, generator=generator)
    hidden = torch.randn(rows, tokens, config.cross_attention_dim, generator=generator)
    return TextConditions(hidden, pooled).sized(size, size)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def sd35_medium_guided_step_by_hand(pixels: int = 1024, t5_tokens: int = 256) -> int:
    """SD 3.5 medium's FLOPs for one guided step (batch 2) written out by hand, 2 FLOPs a multiply-add: image tokens
    N = (pixels/16)², text tokens T = 77 + t5_tokens, d = 1536 (24 heads of 64). A joint block: q, k, v, out (4d²)
    and the 4× MLP (8d²) per token of each stream (the last block's text stream stops after its q, k and v: 3d²),
    attention 2·2·(N + T)²·d. Blocks 0–12 add an image-only attention: 4d² per image token and 2·2·N²·d. Then the
    patch embedding (2·2·16 → d), the text projection (4096 → d) and the output projection (d → 2·2·16)."""
    n, t, d = (pixels // 16) ** 2, 77 + t5_tokens, 1536
    s = n + t
    joint = 2 * 12 * s * d * d + 4 * s * s * d
    last = 2 * 12 * n * d * d + 2 * 3 * t * d * d + 4 * s * s * d
    dual = 2 * 4 * n * d * d + 4 * n * n * d
    return 2 * (23 * joint + last + 13 * dual + 2 * n * 64 * d + 2 * t * 4096 * d + 2 * n * d * 64)


@torch.no_grad()
def pipeline_images(pipeline, transformer, prompts: list[str], adapter=None, features=None, guided: bool = False,
                    **call) -> torch.Tensor:
    """A diffusers pipeline's images from seed 0 (``output_type="pt"``), with ``adapter`` attached to ``transformer``
    and its merchant tokens for ``features`` as ``joint_attention_kwargs`` (a guided batch's two halves given the
    same merchant); without it, the base's."""
    kwargs = {}
    if adapter is not None:
        adapter.attach(transformer)
        tokens = adapter.condition(features)
        kwargs = {"joint_attention_kwargs": {"merchant_tokens": tokens.repeat(2, 1, 1) if guided else tokens,
                                             "merchant_scale": 1.0}}
    return pipeline(prompts, generator=torch.Generator().manual_seed(0), output_type="pt", **call, **kwargs).images


def one_step_moves_only_the_branch(objective, frozen_module, branch, batch) -> None:
    """One AdamW step of ``objective`` on ``batch``: the loss is finite with a KL to the reference, the frozen
    module's weights are unchanged, and the branch's per-layer and merchant-encoder weights moved."""
    import copy
    import math

    before = copy.deepcopy(frozen_module.state_dict())
    branch_before = copy.deepcopy(branch.state_dict())
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-2)
    torch.manual_seed(0)
    loss, logs = objective(branch, batch)
    assert math.isfinite(loss.item()) and logs["kl"] > 0
    loss.backward()
    optimizer.step()
    assert all(torch.equal(value, before[name]) for name, value in frozen_module.state_dict().items())
    moved = [name for name, value in branch.state_dict().items() if not torch.equal(value, branch_before[name])]
    assert any("layers" in name for name in moved) and any("merchant" in name for name in moved)


# The flow families at toy widths, as hub-layout folders: family → (writer, the hub id whose configs it shrinks, the
# adapter class a run saves, the overrides)
_VAE = {"block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
       "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 16,
       "mid_block_add_attention": False}
_CLIP = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
        "projection_dim": 32, "max_position_embeddings": 16}
_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 4}
TOY_FLOW = {
    "flux": (_write_flux, "black-forest-labs/FLUX.1-dev", "FluxMerchantAdapter", {
        "vae": _VAE, "text_encoder": _CLIP, "text_encoder_2": _T5,
        "transformer": {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                        "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 6, 6]}}),
    "sd35": (_write_sd3, "stabilityai/stable-diffusion-3.5-medium", "SD3MerchantAdapter", {
        "vae": _VAE, "text_encoder": _CLIP, "text_encoder_2": {**_CLIP, "hidden_size": 48, "projection_dim": 48},
        "transformer": {"num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 96,
                        "caption_projection_dim": 16, "pooled_projection_dim": 80, "pos_embed_max_size": 32,
                        "dual_attention_layers": [0]}}),
}
