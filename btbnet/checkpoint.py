"""Checkpoints: the weights together with the `BTBNetConfig` that builds their model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import BTBNetConfig
from .io import atomic_output, load_torch_file
from .model import MultiStreamBTBNet, build_model

FORMAT_VERSION = 1


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
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},  # NCHW even from channels_last
        "extra": dict(extra),
    }
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload {format_version, config, state_dict, extra}, checked.

    Loaded with weights_only=True (no code runs from the file) and memory-mapped, so reading
    only the config does not pull the weights into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    payload = load_torch_file(path, "a btbnet checkpoint", map_location, mmap=True)
    if not isinstance(payload, Mapping) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path}: not a btbnet checkpoint (no config/state_dict)")
    return dict(payload)


def read_config(path: str | Path) -> BTBNetConfig:
    """The `BTBNetConfig` stored in a checkpoint, without building the model."""
    return BTBNetConfig.from_dict(read_checkpoint(path)["config"], prefix=f"{path}: config.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MultiStreamBTBNet:
    """The model saved by `save_checkpoint`, in eval mode (loaded with weights_only=True)."""
    payload = read_checkpoint(path, map_location)
    model = build_model(BTBNetConfig.from_dict(payload["config"], prefix=f"{path}: config."))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored config ({str(exc).splitlines()[0]})") from None
    return model.to(map_location).eval()
