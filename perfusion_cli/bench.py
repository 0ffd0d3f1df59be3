"""``perfusion bench``: latency, memory and throughput, measured on one machine in one run.

(a) generation: seconds per image and peak memory, base vs personalized, per attention backend
    (SDPA; the classic "eager" processor; xFormers when installed);
(b) a train step of PerFusion vs a plain Diffusion-DPO step on the same backbone and batch (the
    whole U-Net trainable, as Diffusion-DPO's authors train), and PerFusion with and without the
    shared frozen encoder pass;
(c) reward-model scoring throughput, PerFusionRM vs the same CLIP without plug-ins;
(d) data-loader groups per second vs the groups a train step consumes per second.

Every timing is repeated after a warm-up; ratios are medians; the JSON keeps every raw timing.
Memory is peak RSS on CPU (sampled every 2 ms) and ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psutil
import torch
from diffusers import DDPMScheduler

from perfusion_cli.config import GenTrainConfig
from perfusion_cli.data.loader import StreamSpec, train_batches
from perfusion_cli.data.shards import load_manifest
from perfusion_cli.environment import describe
from perfusion_cli.generation import pick_device
from perfusion_cli.losses import pairwise_dpo_loss
from perfusion_cli.models.backbones import SDComponents
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.training.gen import FrozenSD, GroupDPOObjective, diffusion_target


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that holds ``peak_mb`` once the block ends."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["increase_mb"] = result["peak_mb"] - baseline / 2**20
        result["kind"] = "cuda max_memory_allocated"
        return
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["peak_mb"] = max(peak[0], process.memory_info().rss) / 2**20
        result["increase_mb"] = result["peak_mb"] - baseline / 2**20
        result["kind"] = "peak process RSS"


def timed(function: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def attention_backends() -> dict[str, object]:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    backends = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}
    try:
        import xformers  # noqa: F401
        from diffusers.models.attention_processor import XFormersAttnProcessor

        if torch.cuda.is_available():
            backends["xformers"] = XFormersAttnProcessor
    except ImportError:
        pass
    return backends


def _set_attention(pipeline: PerFusionPipeline, processor_class) -> None:
    for module in (pipeline.unet, pipeline.branch.controlnet, pipeline.vae):
        if module.attn_processors:
            module.set_attn_processor(processor_class())


def bench_generation(pipeline: PerFusionPipeline, features: torch.Tensor, steps: int, repeats: int,
                     progress: Progress) -> dict:
    device = pipeline.device
    out: dict = {"steps": steps, "resolution": pipeline.default_resolution, "backends": {}}
    backends = attention_backends()
    if "xformers" not in backends:
        out["xformers"] = "not measured: needs xformers and a CUDA device (pip install 'perfusion[gpu]')"
    for name, processor in backends.items():
        _set_attention(pipeline, processor)
        entry = {}
        for mode, kwargs in (("base", {}), ("personalized", {"features": features[:1]})):
            run = lambda: pipeline(["linen dress"], num_inference_steps=steps, output_type="pt",  # noqa: E731
                                   generator=torch.Generator().manual_seed(0), **kwargs)
            with peak_memory(device) as memory:
                times = timed(run, device, repeats)
            entry[mode] = {"seconds_per_image": times, "median": statistics.median(times), **memory}
            progress.advance(1)
        entry["latency_ratio"] = entry["personalized"]["median"] / entry["base"]["median"]
        entry["memory_ratio"] = entry["personalized"]["peak_mb"] / entry["base"]["peak_mb"]
        out["backends"][name] = entry
    _set_attention(pipeline, backends["sdpa"])
    return out


def _dpo_step(frozen: FrozenSD, trainable_unet, optimizer, batch, beta: float) -> None:
    """Diffusion-DPO as its authors train it: the whole U-Net is the policy, a frozen copy the reference."""
    valid = batch.valid
    keys = [(batch.session_ids[g], k) for g, k in zip(*[t.tolist() for t in torch.nonzero(valid, as_tuple=True)])]
    latents = frozen.latents(batch.images[valid], keys)
    rows = torch.arange(len(batch), device=latents.device).repeat_interleave(valid.shape[1])[valid.flatten()]
    text = frozen.text(batch.prompts)[rows]
    scheduler = frozen.sd.noise_scheduler
    noise = torch.randn((len(batch), *latents.shape[1:]), device=latents.device)[rows]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), device=latents.device)[rows]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        reference = frozen.sd.unet(noisy, timesteps, text).sample
    prediction = trainable_unet(noisy, timesteps, text).sample
    target = diffusion_target(scheduler, latents, noise, timesteps).float()
    errors = lambda p: torch.zeros(valid.shape, device=p.device).masked_scatter(  # noqa: E731
        valid, (p.float() - target).pow(2).mean(dim=(1, 2, 3)))
    loss = pairwise_dpo_loss(errors(prediction), errors(reference), batch.selected, beta, valid)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_train_step(pipeline: PerFusionPipeline, batch, beta: float, repeats: int, progress: Progress) -> dict:
    device = pipeline.device
    components = SDComponents(pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.unet,
                              DDPMScheduler.from_config(pipeline.scheduler.config), "")
    out: dict = {"groups": len(batch), "candidates": int(batch.valid.sum())}
    branch = copy.deepcopy(pipeline.branch).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-6)
    for shared in (True, False):
        frozen = FrozenSD(components, device, pipeline.unet.dtype, share_encoder=shared, cache=True)
        objective = GroupDPOObjective(frozen, GenTrainConfig(beta=beta))

        def step() -> None:
            loss, _ = objective(branch, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with peak_memory(device) as memory:
            times = timed(step, device, repeats)
        out["perfusion_shared_encoder" if shared else "perfusion_two_passes"] = {
            "seconds": times, "median": statistics.median(times), **memory}
        progress.advance(1)
    trainable = copy.deepcopy(pipeline.unet).train().requires_grad_(True)
    unet_optimizer = torch.optim.AdamW(trainable.parameters(), lr=1e-8)
    frozen = FrozenSD(components, device, pipeline.unet.dtype, share_encoder=False, cache=True)
    with peak_memory(device) as memory:
        times = timed(lambda: _dpo_step(frozen, trainable, unet_optimizer, batch, beta), device, repeats)
    out["diffusion_dpo"] = {"seconds": times, "median": statistics.median(times), **memory}
    progress.advance(1)
    out["ratio_perfusion_vs_dpo"] = out["perfusion_shared_encoder"]["median"] / out["diffusion_dpo"]["median"]
    out["ratio_two_passes_vs_shared"] = (out["perfusion_two_passes"]["median"]
                                         / out["perfusion_shared_encoder"]["median"])
    return out


def bench_reward(reward_source: str | None, batch, repeats: int, device, progress: Progress) -> dict:
    if not reward_source:
        return {"unavailable": "no reward model (train one, or pass --reward)"}
    reward = load_reward_model(reward_source, device)
    plain = copy.deepcopy(reward)
    plain.module.settings = copy.copy(reward.module.settings)
    plain.module.settings.plugin = False
    batch = batch.to(device)
    out = {"candidates_per_call": int(batch.valid.sum())}
    for name, model in (("perfusionrm", reward), ("clip_without_plugins", plain)):
        with torch.no_grad():
            times = timed(lambda: model.score(batch.prompts, batch.images, batch.features, batch.valid), device,
                          repeats)
        out[name] = {"seconds": times, "candidates_per_second": out["candidates_per_call"] / statistics.median(times)}
        progress.advance(1)
    out["throughput_ratio"] = out["perfusionrm"]["candidates_per_second"] / out["clip_without_plugins"][
        "candidates_per_second"]
    return out


def bench_loader(spec: StreamSpec, batches: int, step_seconds: float) -> dict:
    stream = train_batches(spec, steps_per_epoch=batches)
    next(stream)  # start-up
    start = time.perf_counter()
    groups = sum(len(next(stream)) for _ in range(batches))
    seconds = time.perf_counter() - start
    produced = groups / seconds
    consumed = spec.batch_size / step_seconds
    return {"batches": batches, "seconds": seconds, "groups_per_second": produced, "num_workers": spec.num_workers,
            "train_step_consumes_groups_per_second": consumed, "loader_headroom": produced / consumed}


def run_bench(run_dir: Path, data_dir: Path, device_name: str = "auto", reward_source: str | None = None,
              steps: int = 30, repeats: int = 3, batch_size: int = 4, group_size: int = 5, num_workers: int = 0,
              beta: float = 5000.0, progress: Progress | None = None, command: str = "") -> dict:
    progress = progress or NullProgress()
    device = pick_device(device_name)
    started = time.perf_counter()
    pipeline = PerFusionPipeline.from_run(run_dir, device)
    manifest = load_manifest(data_dir)
    spec = StreamSpec(Path(data_dir), "train", batch_size, group_size, pipeline.default_resolution,
                      num_workers=num_workers)
    batch = next(train_batches(spec, steps_per_epoch=1)).to(device)
    backends = len(attention_backends())
    progress.start("benchmarking", 2 * backends + 3 + (2 if reward_source else 0))
    result = {"machine": describe(), "device": str(device), "command": command, "repeats": repeats,
              "data": str(data_dir), "model": str(run_dir), "features": len(manifest["features"])}
    result["generation"] = bench_generation(pipeline, batch.features, steps, repeats, progress)
    result["train_step"] = bench_train_step(pipeline, batch, beta, repeats, progress)
    result["reward"] = bench_reward(reward_source, batch, repeats, device, progress)
    result["loader"] = bench_loader(spec, 8, result["train_step"]["perfusion_shared_encoder"]["median"])
    progress.stop()
    result["seconds"] = time.perf_counter() - started
    return result
