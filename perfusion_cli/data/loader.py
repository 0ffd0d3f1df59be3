"""Streaming groups out of the shards, padded to a fixed group size (DESIGN §3).

Two streams:

- ``train_batches``: an endless stream cut into epochs of ``steps_per_epoch`` batches. Each epoch
  resamples shards (``ResampledShards``) with a seed made of (seed, epoch, rank, worker), so every
  rank gets the same number of batches, no rank waits at an epoch's end, and batch ``n`` is the same
  batch whether or not the run was interrupted before it (``--resume`` relies on that).
- ``eval_batches``: one pass over a split, shards divided with ``split_by_node``/``split_by_worker``.

Decoding (PNG → tensor) runs in DataLoader workers when ``num_workers`` > 0.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load
from torch.utils.data import DataLoader

from perfusion_cli.data.decode import WHITE, decode
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.shards import candidate_images
from perfusion_cli.errors import DataError

LATENTS_KEY = "latents.safetensors"  # prepare --latents: {"latents": [N, C, h, w], "text": [L, d]}, fp16
# (+ "pooled": [p] for SDXL bases)


@dataclass
class GroupBatch:
    """B groups padded to K candidates. Padded slots have ``valid`` False and zero images."""

    images: torch.Tensor  # [B, K, 3, H, W] float in [0, 1]
    valid: torch.Tensor  # [B, K] bool
    selected: torch.Tensor  # [B, K] bool
    features: torch.Tensor  # [B, F] long
    prompts: list[str]
    merchant_ids: list[str]
    session_ids: list[str]
    latents: torch.Tensor | None = None  # [B, K, C, h, w] stored VAE latents (prepare --latents), padded with zeros
    text: torch.Tensor | None = None  # [B, L, d] stored prompt embeddings
    pooled: torch.Tensor | None = None  # [B, p] stored pooled prompt embeddings (SDXL)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "GroupBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("images", "valid", "selected", "features", "latents", "text", "pooled"):
            if moved[name] is not None:
                moved[name] = moved[name].to(device, non_blocking=True)
        return GroupBatch(**moved)


@dataclass(frozen=True)
class StreamSpec:
    """Where the groups come from and how they are shaped."""

    data_dir: Path
    split: str
    batch_size: int
    group_size: int
    resolution: int
    num_workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000
    skip_bad_shards: bool = False
    stored_latents: bool = False  # read each sample's latents.safetensors too (train-gen, after checking its tag)
    by_process: bool = True  # one pass: each process reads its share of the shards; False: each reads them all


def load_image(data: bytes, resolution: int, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """Decode as a browser shows it (``decode``), take the centred square of the shorter side, resize it to
    ``resolution``; [3, R, R] in [0, 1].

    Resizing only the square (PIL's ``box``) bounds the work and memory by the output size, whatever the
    aspect ratio: resizing the whole image first would blow a 1×50,000 strip up to 64×3.2 M pixels.
    """
    return square_tensor(decode(data, background), resolution)


def square_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """An 8-bit RGB image (``decode`` / ``render``'s output) → its centred square at ``resolution``, [3, R, R] in
    [0, 1]."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    if (width, height) != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC, box=(left, top, left + side, top + side))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def choose_candidates(selected: list[bool], group_size: int, key: str) -> list[int]:
    """Indices of at most ``group_size`` candidates, keeping at least one positive and one negative."""
    if len(selected) <= group_size:
        return list(range(len(selected)))
    rng = random.Random(key)
    positives = [i for i, s in enumerate(selected) if s]
    negatives = [i for i, s in enumerate(selected) if not s]
    chosen = {rng.choice(positives), rng.choice(negatives)}
    rest = [i for i in range(len(selected)) if i not in chosen]
    chosen.update(rng.sample(rest, group_size - len(chosen)))
    return sorted(chosen)


def decode_group(sample: dict, group_size: int, resolution: int, stored_latents: bool = False) -> dict:
    """A raw WebDataset sample → tensors for one group; a damaged sample is a DataError naming its shard."""
    try:
        return _decode_group(sample, group_size, resolution, stored_latents)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"sample {sample.get('__key__')} in {sample.get('__url__')} cannot be decoded "
                        f"({type(exc).__name__}: {exc}) — re-run `perfusion prepare`, or pass --skip-bad-shards") from None


def _decode_group(sample: dict, group_size: int, resolution: int, stored_latents: bool) -> dict:
    meta = json.loads(sample["json"])
    images = {index: data for index, (_, data) in candidate_images(sample).items()}
    if sorted(images) != list(range(len(meta["selected"]))):
        raise DataError(f"sample {sample.get('__key__')} in {sample.get('__url__')} is incomplete: "
                        f"{len(images)} images for {len(meta['selected'])} labels (truncated shard?)")
    keep = choose_candidates(meta["selected"], group_size, sample["__key__"])
    stacked = torch.zeros(group_size, 3, resolution, resolution)
    valid = torch.zeros(group_size, dtype=torch.bool)
    selected = torch.zeros(group_size, dtype=torch.bool)
    for slot, index in enumerate(keep):
        stacked[slot] = load_image(images[index], resolution)
        valid[slot] = True
        selected[slot] = bool(meta["selected"][index])
    group = {"images": stacked, "valid": valid, "selected": selected,
             "features": torch.tensor(meta["features"], dtype=torch.long), "prompt": meta["prompt"],
             "merchant_id": meta["merchant_id"], "session_id": meta["session_id"]}
    if stored_latents:
        if LATENTS_KEY not in sample:
            raise DataError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no stored latents "
                            f"although the manifest says so — re-run `perfusion prepare … --latents`")
        stored = load(sample[LATENTS_KEY])
        latents = torch.zeros(group_size, *stored["latents"].shape[1:], dtype=stored["latents"].dtype)
        latents[:len(keep)] = stored["latents"][keep]
        group["latents"], group["text"] = latents, stored["text"]
        if "pooled" in stored:
            group["pooled"] = stored["pooled"]
    return group


def collate(groups: list[dict]) -> GroupBatch:
    return GroupBatch(
        images=torch.stack([g["images"] for g in groups]),
        valid=torch.stack([g["valid"] for g in groups]),
        selected=torch.stack([g["selected"] for g in groups]),
        features=torch.stack([g["features"] for g in groups]),
        prompts=[g["prompt"] for g in groups],
        merchant_ids=[g["merchant_id"] for g in groups],
        session_ids=[g["session_id"] for g in groups],
        latents=torch.stack([g["latents"] for g in groups]) if "latents" in groups[0] else None,
        text=torch.stack([g["text"] for g in groups]) if "text" in groups[0] else None,
        pooled=torch.stack([g["pooled"] for g in groups]) if "pooled" in groups[0] else None,
    )


MAX_TRIES_WITHOUT_A_SAMPLE = 1000


class _ShardErrors:
    """WebDataset exception handler: a clear error naming the shard, or a skip that is counted.

    It also bounds an endless resampled stream that yields nothing: every shard opened and every sample
    that fails counts as a try, every decoded sample resets the count, and after
    ``MAX_TRIES_WITHOUT_A_SAMPLE`` tries with no sample the stream stops with an error. (A shard of zeros
    is a valid, empty tar: without this, a run on such shards would spin forever at full CPU.)
    """

    def __init__(self, skip: bool):
        self.skip = skip
        self.skipped = 0
        self.tries = 0

    def decoded(self) -> None:
        self.tries = 0

    def _try(self, what: str) -> None:
        self.tries += 1
        if self.tries >= MAX_TRIES_WITHOUT_A_SAMPLE:
            raise DataError(f"no sample could be decoded in {self.tries} tries in a row ({self.skipped} skipped in "
                            f"all; last: {what}) — the shards are unreadable: re-run `perfusion prepare`")

    def opened(self, shards: Iterator[dict]) -> Iterator[dict]:
        """A pipeline stage counting the shards opened."""
        for shard in shards:
            self._try(f"{shard.get('url')} held no readable sample")
            yield shard

    def __call__(self, exn: Exception) -> bool:
        if self.skip:
            self.skipped += 1
            self._try(str(exn))
            return True
        if isinstance(exn, DataError):
            raise exn
        where = next((str(a) for a in exn.args[1:] if isinstance(a, str) and a.endswith(".tar")), "a shard")
        raise DataError(f"cannot read {where}: {exn.args[0] if exn.args else exn} — re-run "
                        f"`perfusion prepare`, or pass --skip-bad-shards to skip unreadable shards") from None


def _shards(spec: StreamSpec) -> tuple[list[str], list[str]]:
    """(readable shard paths, problems of the shards skipped)."""
    return load_manifest(spec.data_dir).shard_paths(spec.split, spec.skip_bad_shards)


def _pipeline(spec: StreamSpec, shards: list[str], *, training: bool, epoch: int,
              handler: _ShardErrors) -> wds.DataPipeline:
    def decode(sample: dict) -> dict:
        group = decode_group(sample, spec.group_size, spec.resolution, spec.stored_latents)
        handler.decoded()
        return group

    batch = wds.batched(spec.batch_size, collation_fn=collate, partial=not training)
    if training:
        return wds.DataPipeline(
            wds.ResampledShards(shards, seed=wds.utils.make_seed(spec.seed, epoch), deterministic=True),
            handler.opened, wds.tarfile_to_samples(handler=handler),
            wds.detshuffle(spec.shuffle_buffer, initial=min(100, spec.shuffle_buffer),
                           seed=wds.utils.make_seed(spec.seed, epoch, *wds.utils.pytorch_worker_info()[:1])),
            wds.map(decode, handler=handler), batch,
        )
    return wds.DataPipeline(
        wds.SimpleShardList(shards), *([wds.split_by_node] if spec.by_process else []), wds.split_by_worker,
        wds.tarfile_to_samples(handler=handler), wds.map(decode, handler=handler), batch,
    )


def _loader(pipeline: wds.DataPipeline, num_workers: int) -> DataLoader:
    # A private generator keeps DataLoader start-up from drawing on the global torch RNG, which the
    # training step owns (noise, timesteps) and which --resume restores.
    return DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def train_batches(spec: StreamSpec, steps_per_epoch: int, start: int = 0) -> Iterator[GroupBatch]:
    """Endless batches, from global batch index ``start`` on (same batches as an uninterrupted run)."""
    shards, skipped = _shards(spec)
    if not shards:
        why = f" ({len(skipped)} unreadable shard(s) skipped: {skipped[0]})" if skipped else ""
        raise DataError(f"split '{spec.split}' of {spec.data_dir} has no groups to train on{why}")
    handler = _ShardErrors(spec.skip_bad_shards)
    epoch, offset = divmod(start, steps_per_epoch)
    while True:
        loader = _loader(_pipeline(spec, shards, training=True, epoch=epoch, handler=handler), spec.num_workers)
        yield from islice(loader, offset, steps_per_epoch)
        epoch, offset = epoch + 1, 0


class EvalStream:
    """One pass over a split (this rank's share of its shards); after the pass, ``skipped_shards`` lists the
    shards left out as unreadable and ``skipped_samples`` counts the samples that failed to decode
    (with ``skip_bad_shards``; counted in this process, so with ``num_workers`` 0)."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self.shards, self.skipped_shards = _shards(spec)
        self._handler = _ShardErrors(spec.skip_bad_shards)

    @property
    def skipped_samples(self) -> int:
        return self._handler.skipped

    def __iter__(self) -> Iterator[GroupBatch]:
        yield from _loader(_pipeline(self.spec, self.shards, training=False, epoch=0, handler=self._handler),
                           self.spec.num_workers)


def eval_batches(spec: StreamSpec) -> Iterator[GroupBatch]:
    yield from EvalStream(spec)
