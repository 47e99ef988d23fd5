"""Inference: defocus blur detection maps for images and files.

A map is uint8 [H, W] at the image's own resolution, 255 = in focus, 0 = blurred: the
probability sigmoid(M_final) of the final map (eq. 5) scaled to 0…255. This is the "DBD map"
the paper binarises at every integer threshold for its PR curves (section 4.2).

Memory grows with the pixels the model sees, so an image it would see at more than
`max_pixels` (default MAX_PIXELS, counted after any `max_size` downscale) is refused with
`OverBudget` before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .checkpoint import unwrap
from .data import list_images, load_rgb, to_tensor
from .images import check_image, fit_within
from .io import save_png
from .model import eval_mode

# Third panel of `overlay`: blurred pixels are blended towards this colour, by this much.
BLUR_TINT = np.array([20, 50, 150], dtype=np.float32)  # dark blue
BLUR_STRENGTH = 0.65  # 0 keeps the image, 1 paints fully blurred pixels in BLUR_TINT
# Default pixel budget: the most pixels the model may see per image, counted after any max_size
# downscale. Memory grows with them: btbnet-cpu peaks at ~0.35 GB per megapixel it sees
# (bench/bench_predict_memory.py), so 4 MP is ~1.7 GB; an 8000×6000 photo at native size, ~17 GB.
MAX_PIXELS = 4_000_000


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


def check_budget(
    size: tuple[int, int], max_size: int | None, max_pixels: int | None, what: str = "image"
) -> tuple[int, int]:
    """The (h, w) the model sees for an image of `size` = (H, W) under `max_size` (see
    `fit_within`); `OverBudget` naming `what` if that is more than `max_pixels` (None: no limit)."""
    for name, value in (("max_size", max_size), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: must be a positive integer or None, got {value!r}")
    seen = fit_within(size, max_size)
    pixels = seen[0] * seen[1]
    if max_pixels is None or pixels <= max_pixels:
        return seen
    fit = max(1, math.isqrt(max_pixels * max(size) // min(size)))  # long side of a max_pixels area
    while fit > 1 and math.prod(fit_within(size, fit)) > max_pixels:
        fit -= 1
    scaled = f" ({seen[1]}×{seen[0]} at max_size {max_size})" if seen != tuple(size) else ""
    problem = f"{what}: {size[1]}×{size[0]} px{scaled} is {pixels:,} pixels for the model"
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
    check_image(image)
    size = image.shape[:2]
    inference_size = check_budget(size, max_size, max_pixels)
    with eval_mode(model.to(device)), torch.inference_mode():
        logits = model(model_input(image, inference_size, device)).final  # [1, 1, h, w]; streams dropped
        prob = logits.sigmoid_()
        if inference_size != size:
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


def overlay(image: np.ndarray, focus_map: np.ndarray) -> np.ndarray:
    """Side-by-side picture for eyes: uint8 [H, 3·W, 3].

    Panels, left to right:
      1. the image itself;
      2. the focus map as grey (white = in focus, black = blurred);
      3. the image with its blurred part shaded: each pixel is blended towards BLUR_TINT
         (dark blue) by BLUR_STRENGTH × (1 − map / 255), so in-focus pixels keep their
         colours and fully blurred ones are darkened and tinted.

    image: uint8 [H, W, 3] RGB; focus_map: uint8 [H, W], 255 = in focus.
    """
    check_image(image)
    if focus_map.shape != image.shape[:2] or focus_map.dtype != np.uint8:
        raise ValueError(
            f"focus_map: expected uint8 {list(image.shape[:2])} like the image, "
            f"got {focus_map.dtype} {list(focus_map.shape)}"
        )
    grey = np.repeat(focus_map[:, :, None], 3, axis=2)  # [H, W, 3]
    blurred = BLUR_STRENGTH * (1.0 - focus_map[:, :, None].astype(np.float32) / 255)  # [H, W, 1]
    shaded = image.astype(np.float32) * (1 - blurred) + BLUR_TINT * blurred  # [H, W, 3]
    shaded = np.clip(np.rint(shaded), 0, 255).astype(np.uint8)
    return np.concatenate([image, grey, shaded], axis=1)


def predict_paths(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    overlay: bool = False,
    max_size: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
) -> list[Path]:
    """Write a focus map for every input image; returns the written paths in order.

    inputs:  image files and folders (a folder contributes `btbnet.data.list_images`).
    Writes `out_dir/<stem>.png` (8-bit grey, mode "L") per image and, with `overlay`,
    `out_dir/<stem>_overlay.png` (see `overlay`). All inputs are checked before anything
    is written: a missing path raises FileNotFoundError, two inputs claiming the same output
    name (same stem) raise ValueError naming both, and an image the model would see at more
    than `max_pixels` pixels (see `predict_map`; read from its header) raises `OverBudget`
    naming it. Each PNG is written to a temporary file
    and renamed into place, so `out_dir` never holds a partial file; an unreadable image
    raises `btbnet.data.DataError` naming it (maps written before it stay).
    A tqdm bar on stderr shows progress when `progress` and there are several images.
    """
    jobs = plan_outputs(expand_inputs(inputs), Path(out_dir), overlay)
    for source, _, _ in jobs:
        if (size := header_size(source)) is not None:
            check_budget(size, max_size, max_pixels, what=str(source))
    written: list[Path] = []
    for source, map_path, overlay_path in tqdm(
        jobs, desc="btbnet predict", unit="image", disable=not progress or len(jobs) < 2
    ):
        written += predict_file(model, source, map_path, overlay_path, max_size, device, max_pixels)
    return written


def predict_file(
    model: nn.Module,
    source: Path,
    map_path: Path,
    overlay_path: Path | None,
    max_size: int | None,
    device: str | torch.device,
    max_pixels: int | None,
) -> list[Path]:
    """Read `source`, write its map (and overlay, if a path is given); the written paths."""
    image = load_rgb(source)
    focus_map = predict_map(unwrap(model), image, max_size=max_size, device=device, max_pixels=max_pixels)
    written = [save_png(focus_map, map_path)]
    if overlay_path is not None:
        written.append(save_png(overlay(image, focus_map), overlay_path))
    return written


def header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of the image file from its header, without decoding it; None if PIL cannot
    open it (`load_rgb` then says why). EXIF orientation is ignored, as `load_rgb` does."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception:  # unreadable, or a decompression bomb: left to load_rgb's error
        return None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of `inputs`, folders expanded, in order; a file listed twice counts once."""
    if not inputs:
        raise ValueError("inputs: no image or folder given")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    unique = {f.resolve(): f for f in reversed(files)}  # keeps each file's first occurrence
    return [f for f in files if unique[f.resolve()] is f]


def plan_outputs(files: list[Path], out_dir: Path, overlay: bool) -> list[tuple[Path, Path, Path | None]]:
    """(source, map path, overlay path or None) per file; ValueError on a name clash."""
    sources = {f.resolve() for f in files}
    claimed: dict[Path, Path] = {}  # output path → the input that writes it
    jobs = []
    for source in files:
        map_path = out_dir / f"{source.stem}.png"
        overlay_path = out_dir / f"{source.stem}_overlay.png" if overlay else None
        for out in filter(None, (map_path, overlay_path)):
            if out in claimed:
                raise ValueError(f"{claimed[out]} and {source} would both be written to {out} (same file name stem)")
            if out.resolve() in sources:
                raise ValueError(f"{out}: output would overwrite an input image; choose another output folder")
            claimed[out] = source
        jobs.append((source, map_path, overlay_path))
    return jobs
