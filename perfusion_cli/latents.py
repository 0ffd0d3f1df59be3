"""Latents on disk: each candidate's VAE latent and the prompt's text embedding, stored in the shards.

``prepare --latents --base-model M`` runs this after the shards are written: every sample of every
shard gets ``latents.safetensors`` (``latents`` [N, C, h, w] for its N candidates in log order,
``text`` [L, d], and for SDXL, SD 3.5 and FLUX.1 ``pooled`` [p], all fp16), encoded in batches on the chosen
device by the same frozen parts' code train-gen would run (``families.load_frozen``: a U-Net's VAE and CLIP, or a
flow transformer's VAE and text encoders, T5 included, so T5-XXL runs once per group and never in a step).
New shards are written beside the old ones (``<split>-<n>.latents-<tag>.tar``); the manifest, rewritten last
and atomically, switches to them and records what made them (``tag``: the base model, fingerprints of its VAE
and text encoder weights, the resolution), so a crash leaves the data as it was. ``train-gen`` uses stored
latents when the tag matches its own base model and resolution, and refuses them with the reason when it does
not (``check_tag``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import webdataset as wds
from safetensors.torch import save

from perfusion_cli.data.loader import LATENTS_KEY, load_image
from perfusion_cli.data.manifest import SHARD_DIR, load_manifest, write_manifest
from perfusion_cli.data.shards import SplitWriter, candidate_images
from perfusion_cli.errors import ConfigError
from perfusion_cli.models.families import load_frozen
from perfusion_cli.progress import NullProgress, Progress


def make_tag(base_model: str, frozen, resolution: int) -> dict:
    return {"base_model": base_model, "vae": frozen.fingerprints["vae"],
            "text_encoder": frozen.fingerprints["text_encoder"], "resolution": resolution, "dtype": "float16"}


def check_tag(stored: dict, base_model: str, frozen, resolution: int) -> None:
    """A ConfigError naming what differs when the stored latents were not made by this model at this size."""
    own = make_tag(base_model, frozen, resolution)
    differ = [what for what in ("vae", "text_encoder", "resolution") if stored.get(what) != own[what]]
    if differ:
        raise ConfigError(f"the shards' stored latents were made by another {' and '.join(differ)} "
                          f"({stored.get('base_model')} at {stored.get('resolution')} px) than this run's "
                          f"({base_model} at {resolution} px): re-run `perfusion prepare … --latents --base-model "
                          f"{base_model} --resolution {resolution}`, or pass --no-stored-latents")


@torch.no_grad()
def store_latents(data_dir: Path, base_model: str, resolution: int, device: torch.device, batch_size: int = 32,
                  progress: Progress | None = None) -> dict:
    """Add latents to every shard of ``data_dir``; returns the tag written to the manifest."""
    progress = progress or NullProgress()
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    frozen = load_frozen(base_model, device, share_encoder=False, resolution=resolution, fingerprints=True)
    tag = make_tag(base_model, frozen, resolution)
    suffix = ".latents-" + hashlib.sha256(json.dumps(tag, sort_keys=True).encode()).hexdigest()[:8]
    raw = dict(manifest.raw)
    splits = {name: dict(info) for name, info in raw["splits"].items()}
    old = {shard["name"] for info in splits.values() for shard in info["shards"]}
    progress.start("storing latents", sum(info["groups"] for info in splits.values()))
    for name, info in splits.items():
        writer = SplitWriter(data_dir / SHARD_DIR, name, raw["settings"]["shard_size"], suffix=suffix)
        paths, _ = manifest.shard_paths(name)
        pending: list[dict] = []
        for sample in wds.DataPipeline(wds.SimpleShardList(paths), wds.tarfile_to_samples()):
            pending.append(sample)
            if sum(len(json.loads(s["json"])["selected"]) for s in pending) >= batch_size:
                _encode_and_write(frozen, pending, resolution, writer)
                progress.advance(len(pending))
                pending = []
        if pending:
            _encode_and_write(frozen, pending, resolution, writer)
            progress.advance(len(pending))
        writer.close()
        info["shards"] = writer.summary()["shards"]
    progress.stop()
    raw["splits"], raw["latents"] = splits, tag
    raw.pop("format", None)
    write_manifest(data_dir, raw)
    for stale in old - {shard["name"] for info in splits.values() for shard in info["shards"]}:
        (data_dir / SHARD_DIR / stale).unlink(missing_ok=True)
    return tag


def _encode_and_write(frozen, samples: list[dict], resolution: int, writer: SplitWriter) -> None:
    metas = [json.loads(sample["json"]) for sample in samples]
    groups = [[images[k] for k in sorted(images)] for images in map(candidate_images, samples)]
    pixels = torch.stack([load_image(data, resolution) for group in groups for _, data in group])
    latents = frozen.latents(pixels, [("", i) for i in range(len(pixels))]).to(torch.float16).cpu()
    texts = frozen.text([meta["prompt"] for meta in metas]).to("cpu", torch.float16)
    start = 0
    for row, (sample, meta, group) in enumerate(zip(samples, metas, groups)):
        tensors = {"latents": latents[start:start + len(group)].contiguous(), "text": texts.hidden[row].contiguous()}
        if texts.pooled is not None:
            tensors["pooled"] = texts.pooled[row].contiguous()
        stored = save(tensors)
        start += len(group)
        writer.write(sample["__key__"], meta, group, extra={LATENTS_KEY: stored})

