"""Inference: defocus blur detection maps for images (`btbnet.files`: for files and folders).

A map is uint8 [H, W] at the image's own resolution, 255 = in focus, 0 = blurred: the
probability sigmoid(M_final) of the final map (eq. 5) scaled to 0…255. This is the "DBD map"
the paper binarises at every integer threshold for its PR curves (section 4.2).

Memory grows with the pixels the model sees, so an image it would see at more than
`max_pixels` (default MAX_PIXELS, counted after any `max_size` downscale) is refused with
`OverBudget` before anything is allocated. Images the model sees at the same size can go
through it together (`predict_maps`, `btbnet.files.predict_paths(batch_size=N)`); the budget then counts
the whole batch, N images × their pixels, and gives the same maps as one image at a time.

Test-time views (`TestTimeViews`, `with_views`): a wrapped model averages the probabilities of
flipped / turned copies of its input; these functions run whatever model they are given once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, check_int
from .data import to_tensor
from .images import check_image, fit_within
from .model import Prediction, eval_mode
from .speed import SpeedConfig

# Default pixel budget: the most pixels the model may see per image, counted after any max_size
# downscale. Memory grows with them: btbnet-cpu peaks at ~0.35 GB per megapixel it sees
# (bench/bench_predict_memory.py), so 4 MP is ~1.7 GB; an 8000×6000 photo at native size, ~17 GB.
MAX_PIXELS = 4_000_000
# torch's intra-op thread count when this module was imported: `use_all_cores` leaves torch
# alone once anyone in the process has changed it.
_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# Test-time views (`TestTimeViews`): (quarter turns, horizontal flip) of the input whose maps are
# averaged. "dihedral" is the square's 8 symmetries, all among the training augmentation's 16
# versions (section 4.1: 8 orientations × flip), so the model has learnt every one of them.
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "dihedral": tuple((turns, flip) for turns in range(4) for flip in (False, True)),
}
# What `btbnet predict` and `pipeline.commands.batch_predict` use unless told (`--tta`): on the validation
# split (bench/bench_tta.py, README "Test-time views") it raised max-F, per-image F and ddff F
# and lowered MAE, for 7× the forward time. The library functions default to one pass.
DEFAULT_TTA = "dihedral"


class TestTimeViews(nn.Module):
    """`model` applied to several views of its input (see VIEWS), each map turned back and the
    in-focus probabilities averaged: test-time augmentation, not part of the paper's method.

    forward(x [B, 3, H, W]) → Prediction(final = the logit of the mean probability [B, 1, H, W],
    streams = []), so it stands in for the model wherever maps are predicted. One view runs at a
    time: memory as one forward pass (plus the running mean), time × len(views).
    """

    def __init__(self, model: nn.Module, views: str = DEFAULT_TTA):
        super().__init__()
        self.net, self.views = model, check_views(views)  # not `.module`: that would read as a DDP wrapper

    def forward(self, x: torch.Tensor) -> Prediction:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        total = None
        for turns, flip in VIEWS[self.views]:
            view = torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            prob = torch.rot90(self.net(view).final.float().sigmoid(), -turns, dims=(-2, -1))  # [B, 1, H, W]
            prob = prob.flip(-1) if flip else prob
            total = prob if total is None else total.add_(prob)
        mean = total.div_(len(VIEWS[self.views]))
        return Prediction(final=torch.logit(mean, eps=1e-7), streams=[])


def check_views(views: str, key: str = "views") -> str:
    """`views` if it names VIEWS, else a ConfigError (a ValueError) naming `key` and the choices."""
    if views not in VIEWS:
        raise ConfigError(key, f"must be one of {sorted(VIEWS)}, got {views!r}")
    return views


def with_views(model: nn.Module, views: str) -> nn.Module:
    """`model` itself for "none", else `TestTimeViews(model, views)` (a name not in VIEWS: see `check_views`)."""
    return model if views == "none" else TestTimeViews(model, views)


class OverBudget(ValueError):
    """An image the model would see at more than `max_pixels` pixels (raised before any work).

    `fit` is the largest max_size that brings it within the budget, `pixels` the budget it needs.
    """

    def __init__(self, problem: str, fit: int, pixels: int):
        self.problem, self.fit, self.pixels = problem, fit, pixels
        super().__init__(self.advise("max_size={}", "max_pixels={}"))

    def advise(self, max_size: str, max_pixels: str) -> str:
        """The message, the two ways past the budget spelt as given (the CLI: "--max-size {}")."""
        downscale, more = max_size.format(self.fit), max_pixels.format(self.pixels)
        return f"{self.problem}; use {downscale} to downscale, or {more} to raise the budget"


def check_limits(max_size: int | None, max_pixels: int | None) -> None:
    """ConfigError (a ValueError) naming `max_size` or `max_pixels` unless each is an integer
    >= 1 or None: checked once by the public entries (`predict_maps`, `btbnet.files.plan_jobs`)."""
    check_int("max_size", max_size, 1, allow_none=True)
    check_int("max_pixels", max_pixels, 1, allow_none=True)


def check_budget(
    size: tuple[int, int], max_size: int | None, max_pixels: int | None, what: str = "image", count: int = 1
) -> tuple[int, int]:
    """The (h, w) the model sees for an image of `size` = (H, W) under `max_size` (see
    `fit_within`); `OverBudget` naming `what` if `count` such images (a batch) are more than
    `max_pixels` pixels for it (None: no limit). The limits are the caller's, already checked
    (`check_limits`)."""
    seen = fit_within(size, max_size)
    pixels = count * seen[0] * seen[1]
    if max_pixels is None or pixels <= max_pixels:
        return seen
    share = max(1, max_pixels // count)  # the budget of one image of the batch
    fit = max(1, math.isqrt(share * max(size) // min(size)))  # long side of a `share` area
    while fit > 1 and math.prod(fit_within(size, fit)) > share:
        fit -= 1
    scaled = f" ({seen[1]}×{seen[0]} at max_size {max_size})" if seen != tuple(size) else ""
    images = f"{count} × " if count > 1 else ""
    problem = f"{what}: {images}{size[1]}×{size[0]} px{scaled} is {pixels:,} pixels for the model"
    raise OverBudget(f"{problem}, over the budget of {max_pixels:,}", fit, pixels)


def predict_map(
    model: nn.Module,
    image: np.ndarray,
    max_size: int | None = None,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Focus map of one image: uint8 [H, W] with 255 = in focus, at the image's size.

    image:      uint8 [H, W, 3] RGB (as `btbnet.data.load_rgb` returns it).
    max_size:   if the image's longer side exceeds it, the model sees the image downscaled
                (antialiased bilinear) so that side is `max_size`, and the probability map is
                resized back to H×W bilinearly. None: always the native size.
    device:     where the model runs; the model is moved there (a no-op if it already is).
    max_pixels: the pixel budget: an image the model would see at more pixels (after
                `max_size`) raises `OverBudget`, a ValueError, before anything is allocated.
                None: no limit. Memory grows with the pixels seen (see MAX_PIXELS).

    The model runs in eval mode without gradients; its training mode is restored afterwards.
    Outside the model (its input and activations), one full-resolution float channel at a time.
    """
    return predict_maps(model, [image], max_size=max_size, device=device, max_pixels=max_pixels)[0]


def predict_maps(
    model: nn.Module,
    images: Sequence[np.ndarray],
    max_size: int | None = None,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
    speed: SpeedConfig = SpeedConfig(),
) -> list[np.ndarray]:
    """Focus maps of images the model sees at the same size, in one forward pass (a batch).

    As `predict_map` for each image (the same maps, to float rounding), with `max_pixels`
    counting the batch: len(images) × the pixels the model sees of one. The images may differ
    in size as long as `max_size` brings them to the same (h, w); else ValueError.
    speed: precision and layout of the forward pass (`btbnet.speed`; the model already
    `speed.prepare`d); the probabilities are fp32 whatever the precision.
    """
    check_limits(max_size, max_pixels)
    if not images:
        return []
    for image in images:
        check_image(image)
    sizes = [image.shape[:2] for image in images]
    what = "image" if len(images) == 1 else f"batch of {len(images)} images"
    inference_size = check_budget(sizes[0], max_size, max_pixels, what=what, count=len(images))
    if any(fit_within(size, max_size) != inference_size for size in sizes):
        raise ValueError(f"images: the model would see them at different sizes ({sorted(set(sizes))} at max_size {max_size})")
    with eval_mode(model.to(device)), torch.inference_mode():
        batch = speed.layout(torch.cat([model_input(image, inference_size, device) for image in images]))
        with speed.autocast(device):
            logits = model(batch).final  # [B, 1, h, w]; streams dropped
        probs = logits.float().sigmoid_().contiguous()
        return [full_size_map(prob[None], size) for prob, size in zip(probs, sizes)]


def full_size_map(prob: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Probabilities [1, 1, h, w] → the uint8 map [H, W] of `size` (bilinear if h×w differs)."""
    if tuple(prob.shape[-2:]) != tuple(size):
        prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
    return prob_to_uint8(prob[0, 0])


def model_input(image: np.ndarray, size: tuple[int, int], device: str | torch.device) -> torch.Tensor:
    """`image` as the model takes it: float [1, 3, h, w] in [0, 1] on `device`, at `size`.

    A smaller `size` is an antialiased bilinear downscale made one channel at a time, so only
    one full-resolution float channel (4 bytes a pixel, not 12) ever exists.
    """
    if tuple(size) == image.shape[:2]:
        return to_tensor(image).unsqueeze(0).to(device)
    channels = []
    for c in range(3):
        channel = torch.from_numpy(np.ascontiguousarray(image[:, :, c])).to(device).float().div_(255)
        channel = F.interpolate(channel[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)
        channels.append(channel)
    return torch.cat(channels, dim=1)


def prob_to_uint8(prob: torch.Tensor) -> np.ndarray:
    """Probabilities [H, W] in [0, 1] → uint8 [H, W], 1.0 ↦ 255 (rounded); `prob` is overwritten."""
    return prob.mul_(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def use_all_cores() -> int:
    """Run torch on every CPU this process may use (`available_cpus`), unless the thread count
    is someone else's choice: OMP_NUM_THREADS or MKL_NUM_THREADS is set (torch follows it), or
    torch's thread count changed since this module was imported. Returns the threads in use."""
    if not any(var in os.environ for var in THREAD_VARIABLES) and torch.get_num_threads() == _TORCH_THREADS_AT_IMPORT:
        torch.set_num_threads(available_cpus())
    return torch.get_num_threads()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
