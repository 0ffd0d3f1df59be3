"""Pickle-free serialization of training state: tensors to safetensors, everything else to JSON.

Optimizer, scheduler and RNG states are nested dicts, lists and tuples of tensors, numbers and
strings (and numpy arrays for numpy's RNG). ``flatten`` splits such an object into a flat dict of
tensors and a JSON skeleton that records structure and types (int dict keys, tuples, dtypes);
``unflatten`` rebuilds it exactly. Nothing here ever unpickles (DESIGN §9).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def flatten(obj: Any, prefix: str = "s") -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "ui" else value.copy())
            return {"__ndarray__": path, "dtype": str(value.dtype)}
        if isinstance(value, dict):
            return {"__dict__": [[key, walk(item, f"{path}.{key}")] for key, item in value.items()]}
        if isinstance(value, (list, tuple)):
            kind = "__list__" if isinstance(value, list) else "__tuple__"
            return {kind: [walk(item, f"{path}.{index}") for index, item in enumerate(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"cannot serialize {type(value).__name__} at {path}")

    return tensors, walk(obj, prefix)


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__dict__" in skeleton:
            return {key: unflatten(item, tensors) for key, item in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten(item, tensors) for item in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(item, tensors) for item in skeleton["__tuple__"])
    return skeleton


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
