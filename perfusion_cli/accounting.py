"""Counting what a step costs without running it: FLOPs and peak live tensor bytes (DESIGN §10).

``count(step)`` runs ``step`` (on meta tensors, so nothing is allocated or computed) under two
dispatch modes: torch's ``FlopCounterMode`` and ``LiveTensorBytes``, which follows every tensor
storage from its creation to its release and keeps the peak of their sum. Storages that exist before
the step (weights, inputs) are registered with ``track``.

Attention is counted as a memory-efficient kernel (SDPA's flash / efficient backends, or xFormers,
what a GPU runs): on the meta device PyTorch would otherwise trace the math backend, whose N×N
attention matrix a GPU never holds. ``efficient_attention()`` routes
``torch.nn.functional.scaled_dot_product_attention`` to ``aten._scaled_dot_product_efficient_attention``
for the duration of a count; its FLOPs are the same (4·N²·d per head, twice that in backward).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of all live tensor storages, and their peak, through the ops run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._storages:
            return
        size = storage.nbytes()

        def released(_, size=size) -> None:
            self.live -= size

        self._storages[storage] = weakref.ref(storage, released)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.track, out)
        return out


@dataclass
class Cost:
    flops: int
    start_bytes: int  # what was live before the step (weights, inputs)
    peak_bytes: int

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


_SDPA = F.scaled_dot_product_attention


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if not query.is_meta:  # real tensors run the real kernel
        return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                     **kwargs)
    bias = None
    if attn_mask is not None:
        bias = attn_mask if attn_mask.dtype != torch.bool else torch.zeros(
            attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask, float("-inf"))
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    output = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, query.requires_grad, dropout_p, is_causal, scale=scale)
    return output[0]


@contextlib.contextmanager
def efficient_attention() -> Iterator[None]:
    F.scaled_dot_product_attention = _efficient_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def count(step: Callable[[], object], existing: Iterable[torch.Tensor] = (), flops: bool = True) -> Cost:
    """FLOPs and peak live bytes of ``step``; ``existing`` are the tensors alive before it starts. With ``flops``
    False only the memory is traced (FLOPs 0): half the time, for a check before a run.

    The step runs twice, memory first: ``FlopCounterMode``'s module hooks hold activations until the
    backward pass, which would hide what gradient checkpointing frees.
    """
    memory = LiveTensorBytes()
    for tensor in existing:
        memory.track(tensor)
    start = memory.live
    with efficient_attention(), memory:
        step()
    if not flops:
        return Cost(0, start, memory.peak)
    with efficient_attention(), FlopCounterMode(display=False) as counter:
        step()
    return Cost(counter.get_total_flops(), start, memory.peak)


def tensors_of(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


def parameters(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)
