"""How a forward pass runs: numeric precision, memory layout and compilation.

The paper trains and tests in fp32 (Caffe, section 4.1); these settings trade exactness for
speed on GPUs, and are off by default:

    precision:      "fp32"; "bf16" or "fp16": the model runs under `torch.autocast` (convolutions
                    and matrix products in that type, reductions and the loss in fp32); fp16
                    training scales the loss (`torch.amp.GradScaler`) so small gradients do
                    not underflow; bf16 needs no scaling.
    channels_last:  weights and inputs in NHWC memory layout (what tensor cores and oneDNN
                    prefer); the values are the same as NCHW up to rounding.
    compile:        `torch.compile` the model (one compilation per input shape; worth it for
                    long runs at fixed sizes).

Loss terms and metrics are always computed in fp32 from fp32 logits (`fp32_logits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import ConfigError
from .model import Prediction

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedConfig:
    """See the module doc."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    @contextlib.contextmanager
    def autocast(self, device: str | torch.device) -> Iterator[None]:
        """The block under autocast to `precision` on `device`'s type (fp32: no autocast)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            yield

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` in channels_last layout and compiled, as set (the weights stay fp32)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model = torch.compile(model)
        return model

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input [B, C, H, W] in the model's memory layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def scaler(self, device: str | torch.device) -> torch.amp.GradScaler:
        """A loss scaler, enabled for fp16 only (a no-op otherwise)."""
        return torch.amp.GradScaler(torch.device(device).type, enabled=self.precision == "fp16")


def fp32_logits(prediction: Prediction) -> Prediction:
    """The prediction's logits as fp32 (loss and metrics are computed in fp32)."""
    return Prediction(prediction.final.float(), [s.float() for s in prediction.streams], [r.float() for r in prediction.refinements])
