"""``perfusion bench``: latency, memory and throughput, measured on one machine in one run.

(a) generation: seconds per image and peak memory, base vs personalized, per attention backend
    (SDPA; for U-Nets also the classic "eager" processor and xFormers when installed);
(b) a train step of PerFusion vs a plain Diffusion-DPO step on the same backbone and batch (the
    whole U-Net or transformer trainable, as Diffusion-DPO's authors train), and PerFusion with and without the
    shared frozen encoder pass (U-Nets);
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

from perfusion_cli.config import BenchConfig, GenTrainConfig
from perfusion_cli.data.loader import StreamSpec, train_batches
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.environment import describe, pick_device
from perfusion_cli.models.reward import PerFusionRM, RewardModel, load_reward_model
from perfusion_cli.objective import GroupDPOObjective
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.pipelines import load_pipeline
from perfusion_cli.progress import NullProgress, Progress


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


def bench_generation(pipeline: PerFusionPipeline, features: torch.Tensor, steps: int, repeats: int,
                     progress: Progress) -> dict:
    device = pipeline.device
    out: dict = {"steps": steps, "resolution": pipeline.default_resolution, "backends": {}}
    backends = pipeline.attention_backends(attention_backends())
    if "xformers" not in backends:
        out["xformers"] = "not measured: needs xformers, a CUDA device (pip install 'perfusion[gpu]') and a U-Net"
    for name, processor in backends.items():
        pipeline.set_attention(processor)
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
    pipeline.set_attention(backends["sdpa"])
    return out


CHEAP = {"full schedule": (1, 1.0), "every 2nd step": (2, 1.0), "every 3rd step": (3, 1.0),
         "first half only": (1, 0.5), "every 2nd step, first 60 %": (2, 0.6)}


def bench_cheap(pipeline: PerFusionPipeline, features: torch.Tensor, steps: int, repeats: int,
                progress: Progress) -> dict:
    """Seconds per image of the base and of PerFusion with each branch-reuse setting, in one run (SDPA)."""
    device = pipeline.device

    def run(**kwargs):
        return lambda: pipeline(["linen dress"], num_inference_steps=steps, output_type="pt",
                                generator=torch.Generator().manual_seed(0), **kwargs)

    out = {"base": statistics.median(timed(run(), device, repeats))}
    for name, (every, until) in CHEAP.items():
        out[name] = statistics.median(timed(run(features=features[:1], branch_every=every, branch_until=until),
                                            device, repeats))
        progress.advance(1)
    return {"seconds_per_image": out, "ratio_to_base": {name: value / out["base"] for name, value in out.items()}}


def bench_batched(pipeline: PerFusionPipeline, features: torch.Tensor, steps: int, progress: Progress,
                  counts: tuple[int, ...] = (1, 4, 16)) -> dict:
    """Images per second for k requests from different merchants (one image each): one pipeline call per
    request against one batched call (the condition is per sample)."""
    device = pipeline.device
    out = {}
    for k in counts:
        rows = features[torch.arange(k) % len(features)]
        one_by_one = timed(lambda: [pipeline(["linen dress"], features=rows[i:i + 1], num_inference_steps=steps,
                                             output_type="pt", generator=torch.Generator().manual_seed(i))
                                    for i in range(k)], device, 1, warmup=0)[0]
        batched = timed(lambda: pipeline(["linen dress"] * k, features=rows, num_inference_steps=steps,
                                         output_type="pt",
                                         generator=[torch.Generator().manual_seed(i) for i in range(k)]),
                        device, 1, warmup=0)[0]
        out[str(k)] = {"one_by_one_images_per_second": k / one_by_one, "batched_images_per_second": k / batched,
                       "speedup": one_by_one / batched}
        progress.advance(1)
    return out


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _train_step(objective: GroupDPOObjective, policy: torch.nn.Module, batch) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-8)

    def step() -> None:
        loss, _ = objective(policy, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train_step(pipeline: PerFusionPipeline, batch, train: GenTrainConfig, repeats: int,
                     progress: Progress) -> dict:
    """PerFusion's step (shared and unshared frozen encoder; a transformer has no encoder half to share, so it has
    the one step) against Diffusion-DPO's (the whole U-Net or transformer is the policy, as its authors train), all
    through the one ``GroupDPOObjective`` with the recipe's β and loss."""
    device = pipeline.device
    out: dict = {"groups": len(batch), "candidates": int(batch.valid.sum()), "beta": train.beta, "loss": train.loss}
    branch = copy.deepcopy(pipeline.branch).train().requires_grad_(True)
    shared = pipeline.frozen_parts(share_encoder=True, cache=True)
    out["shared_encoder"] = shared.share_encoder
    variants = {"perfusion_shared_encoder": shared}
    if shared.share_encoder:
        variants["perfusion_two_passes"] = pipeline.frozen_parts(share_encoder=False, cache=True)
    for name, frozen in variants.items():
        with peak_memory(device) as memory:
            times = timed(_train_step(GroupDPOObjective(frozen, train), branch, batch), device, repeats)
        out[name] = {"seconds": times, "median": statistics.median(times), **memory,
                     "trainable_parameters": _trainable(branch)}
        progress.advance(1)
    progress.advance(2 - len(variants))  # the step a transformer does not have
    policy = copy.deepcopy(pipeline.denoiser).train().requires_grad_(True)
    frozen = pipeline.frozen_parts(share_encoder=False, cache=True)
    objective = GroupDPOObjective(frozen, train, predict=frozen.full_predictions)
    with peak_memory(device) as memory:
        times = timed(_train_step(objective, policy, batch), device, repeats)
    out["diffusion_dpo"] = {"seconds": times, "median": statistics.median(times), **memory,
                            "trainable_parameters": _trainable(policy)}
    progress.advance(1)
    out["ratio_perfusion_vs_dpo"] = out["perfusion_shared_encoder"]["median"] / out["diffusion_dpo"]["median"]
    if "perfusion_two_passes" in out:
        out["ratio_two_passes_vs_shared"] = (out["perfusion_two_passes"]["median"]
                                             / out["perfusion_shared_encoder"]["median"])
    return out


def bench_reward(reward_source: str | None, batch, repeats: int, device, progress: Progress) -> dict:
    if not reward_source:
        return {"unavailable": "no reward model (train one, or pass --reward)"}
    reward = load_reward_model(reward_source, device)
    plain = RewardModel(PerFusionRM.from_clip(copy.deepcopy(reward.module.clip), None, plugin=False).eval(),
                        reward.tokenizer)
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


def run_bench(run_dir: Path, data_dir: Path, config: BenchConfig, train: GenTrainConfig,
              reward_source: str | None = None, progress: Progress | None = None, command: str = "") -> dict:
    """``train`` is the recipe's ``[train-gen]``: the train-step comparison uses its β, loss and group size."""
    progress = progress or NullProgress()
    device = pick_device(config.device)
    started = time.perf_counter()
    pipeline = load_pipeline(run_dir, device)
    manifest = load_manifest(data_dir)
    steps, repeats = config.steps, config.repeats
    spec = StreamSpec(Path(data_dir), "train", config.batch_size, train.group_size, pipeline.default_resolution,
                      num_workers=config.num_workers)
    batch = next(train_batches(spec, steps_per_epoch=1)).to(device)
    backends = len(pipeline.attention_backends(attention_backends()))
    progress.start("benchmarking", 2 * backends + 3 + len(CHEAP) + 3 + (2 if reward_source else 0))
    result = {"machine": describe(torch_runtime=True), "device": str(device), "command": command, "repeats": repeats,
              "data": str(data_dir), "model": str(run_dir), "features": len(manifest.vocab.features)}
    result["generation"] = bench_generation(pipeline, batch.features, steps, repeats, progress)
    result["branch_reuse"] = bench_cheap(pipeline, batch.features, steps, repeats, progress)
    result["batched"] = bench_batched(pipeline, batch.features, steps, progress)
    result["train_step"] = bench_train_step(pipeline, batch, train, repeats, progress)
    result["reward"] = bench_reward(reward_source, batch, repeats, device, progress)
    result["loader"] = bench_loader(spec, 8, result["train_step"]["perfusion_shared_encoder"]["median"])
    progress.stop()
    result["seconds"] = time.perf_counter() - started
    return result
