"""Checkpoints: the weights together with the `BTBNetConfig` that builds their model.

A checkpoint holds {format_version, config, state_dict, extra, digest}; `digest` is the SHA-256
of the config and every tensor (name, dtype, shape, bytes), so a config edited after saving is
refused even when the weights' shapes still fit it (`paper` ↔ `fast`, another RRNet depth),
which would otherwise load silently and give other maps. Format 1 (no digest: `btbnet-cpu`)
still loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import BTBNetConfig
from .io import atomic_output, load_torch_file
from .model import MultiStreamBTBNet, build_model

FORMAT_VERSION = 2  # 2: with `digest`


def unwrap(model: nn.Module) -> MultiStreamBTBNet:
    """The bare model inside DistributedDataParallel and/or torch.compile (or the model itself)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(model: nn.Module, path: str | Path, **extra: float | int | str) -> Path:
    """Write {config, state_dict, extra} atomically: a crash never leaves a partial file.

    Identical weights, config and extra give identical bytes (torch.save is given an open
    file, so its archive is not named after the temporary path).
    """
    model = unwrap(model)
    config = model.config.to_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # NCHW even from channels_last
    payload = {"format_version": FORMAT_VERSION, "config": config, "state_dict": state, "extra": dict(extra), "digest": digest(config, state)}
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)
    return path


def digest(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a checkpoint's config (canonical JSON) and tensors (name, dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name]
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload {format_version, config, state_dict, extra[, digest]}, checked.

    Loaded with weights_only=True (no code runs from the file) and memory-mapped, so reading
    only the config does not pull the weights into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    payload = load_torch_file(path, "a btbnet checkpoint", map_location, mmap=True)
    if not isinstance(payload, Mapping) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path}: not a btbnet checkpoint (no config/state_dict)")
    recorded = payload.get("digest")
    if recorded is not None and recorded != (actual := digest(payload["config"], payload["state_dict"])):
        raise ValueError(
            f"{path}: its config or weights were changed after it was saved (digest {actual[:12]}…, recorded "
            f"{str(recorded)[:12]}…; config now {json.dumps(payload['config'], sort_keys=True)})"
        )
    return dict(payload)


def read_config(path: str | Path) -> BTBNetConfig:
    """The `BTBNetConfig` stored in a checkpoint, without building the model."""
    return BTBNetConfig.from_dict(read_checkpoint(path)["config"], prefix=f"{path}: config.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MultiStreamBTBNet:
    """The model saved by `save_checkpoint`, in eval mode (loaded with weights_only=True)."""
    return model_from(read_checkpoint(path, map_location), path, map_location)


def model_from(payload: Mapping[str, Any], path: str | Path, map_location: str | torch.device = "cpu") -> MultiStreamBTBNet:
    """The model of a checkpoint already read by `read_checkpoint` (`path` names it in errors)."""
    model = build_model(BTBNetConfig.from_dict(payload["config"], prefix=f"{path}: config."))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:  # torch's message: a header line, then a line per kind of mismatch
        detail = "; ".join(line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip())
        raise ValueError(f"{path}: weights do not match the stored config ({detail[:400] or str(exc)})") from None
    return model.to(map_location).eval()
