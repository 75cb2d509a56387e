"""Optimizer state to and from safetensors + JSON, so resuming never unpickles anything.

Tensors anywhere in the (nested) state dict go into a safetensors blob under
their path; everything else (numbers, tuples, strings) into a JSON skeleton
that points at them.
"""

from __future__ import annotations

import json

import torch

_TENSOR = "__tensor__"


def _split(obj, path: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone()  # optimizers share buffers (bnb qmaps); store copies
        return {_TENSOR: path}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{path}/k{i}", tensors), _split(v, f"{path}/{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__":
                [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in optimizer state")


def _join(obj, tensors: dict):
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_join(v, tensors) for v in obj["__list__"]]
    return obj


def state_to_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    return save(tensors, metadata={"skeleton": json.dumps(skeleton)})


def state_from_bytes(data: bytes) -> dict:
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then the JSON header
    skeleton = json.loads(json.loads(data[8:8 + header_len])["__metadata__"]["skeleton"])
    return _join(skeleton, tensors)
