"""Checkpoints: the weights together with the `BTBNetConfig` that builds their model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .config import BTBNetConfig
from .model import MultiStreamBTBNet, build_model

FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> MultiStreamBTBNet:
    """The bare model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def save_checkpoint(model: nn.Module, path: str | Path, **extra: float | int | str) -> Path:
    """Write {config, state_dict, extra} atomically: a crash never leaves a partial file."""
    model = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MultiStreamBTBNet:
    """The model saved by `save_checkpoint`, in eval mode (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable btbnet checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path}: not a btbnet checkpoint (no config/state_dict)")
    model = build_model(BTBNetConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored config ({exc})") from exc
    return model.eval()
