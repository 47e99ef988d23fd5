"""Model size and cost: parameter counts and multiply-accumulates (MACs) of one forward pass.

MACs are counted from the shapes the layers see, with forward hooks on every `nn.Conv2d`
and `nn.Linear`. The forward pass runs on PyTorch's "meta" device, where tensors carry
shapes but no data: no arithmetic happens, so counting is instant at any image size
(the paper's three-stream model on 320×320 is ~3.7 TMAC) and allocates nothing.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from .config import BTBNetConfig
from .model import build_model, eval_mode


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int | tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass on one RGB image of `size` (H×W or H).

    Counted, biases excluded:
      nn.Conv2d: output elements × in_channels / groups × kH × kW
      nn.Linear: output elements × in_features
    Not counted (each costs O(1) per element, negligible next to the convs): bilinear
    resizes, pooling, ReLU, sigmoid, concatenation, element-wise additions and the input
    normalisation.

    The pass runs under torch.no_grad() in eval mode on a zero image [1, 3, H, W], on the
    meta device (shapes only, see the module docstring); a model whose forward cannot run
    there (say it calls `.item()`) is run for real on its own device instead. The model's
    weights and training mode are left as they were.
    """
    height, width = (size, size) if isinstance(size, int) else size
    counter = _MacCounter(model)
    with counter, eval_mode(model), torch.no_grad():
        try:
            _forward_on_meta(model, height, width)
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel, or data access
            counter.reset()
            model(torch.zeros(1, 3, height, width, dtype=_dtype(model), device=_device(model)))
    return counter.macs


def summarize(config: BTBNetConfig, size: int) -> dict[str, Any]:
    """Size and cost of the model `config` builds, on a `size`×`size` image.

    Keys: variant, width, scales, rrnet_steps, size, params, gmacs (billions of MACs,
    rounded to 3 decimals). The model is built on the meta device: no weights are
    allocated, so this is instant even for the paper's full-width network.
    """
    with torch.device("meta"):
        model = build_model(config)
    return {
        "variant": config.variant,
        "width": config.width,
        "scales": list(config.scales),
        "rrnet_steps": config.rrnet_steps,
        "size": size,
        "params": count_parameters(model),
        "gmacs": round(count_macs(model, size) / 1e9, 3),
    }


# --- helpers -------------------------------------------------------------------------------


class _MacCounter:
    """Context manager: forward hooks on every Conv2d / Linear add their MACs to `macs`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.macs = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "_MacCounter":
        for module in self.model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.macs = 0

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            self.macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:  # nn.Linear
            self.macs += output.numel() * module.in_features


def _forward_on_meta(model: nn.Module, height: int, width: int) -> None:
    """Run `model` with every parameter and buffer swapped for a data-less meta twin."""
    tensors = {
        name: torch.empty_like(t, device="meta")
        for name, t in chain(model.named_parameters(), model.named_buffers())
    }
    image = torch.zeros(1, 3, height, width, dtype=_dtype(model), device="meta")
    functional_call(model, tensors, (image,))


def _dtype(model: nn.Module) -> torch.dtype:
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floating[0] if floating else torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    return next(chain(model.parameters(), model.buffers()), torch.zeros(())).device
