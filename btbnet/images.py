"""uint8 image and mask arrays: the checks every module shares, and resizing.

Images are RGB uint8 [H, W, 3]; masks are uint8 [H, W] in {0, 255}, 255 = in focus.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def check_image(image: object, what: str = "image", min_side: int = 1) -> np.ndarray:
    """`image` itself if it is a uint8 array [H, W, 3] with H, W >= min_side; else ValueError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected a uint8 array [H, W, 3], got {describe(image)}")
    if min(image.shape[:2]) < min_side:
        raise ValueError(f"{what}: must be at least {min_side}×{min_side} pixels, got {image.shape[0]}×{image.shape[1]}")
    return image


def check_mask(mask: object, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """`mask` itself if it is uint8 [H, W] in {0, 255} with (H, W) == shape; else ValueError."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"{what}: expected a uint8 array [H, W], got {describe(mask)}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{what}: shape {list(mask.shape)} does not match the image's {list(shape)}")
    if not np.isin(mask, (0, 255)).all():
        raise ValueError(f"{what}: values must be 0 or 255")
    return mask


def describe(a: object) -> str:
    return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


def fit_within(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """(h, w) scaled so that max(h, w) <= max_size, aspect ratio kept; unchanged if it fits."""
    h, w = size
    if max_size is None or max(h, w) <= max_size:
        return h, w
    scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """uint8 image or mask resized to (h, w) with PIL (a copy-free no-op at the same size).

    PIL's bilinear and bicubic filters widen with the scale factor when they shrink, i.e. they
    antialias, as `btbnet.predict` does at inference (`interpolate(..., antialias=True)`).
    """
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def shrink_to(image: np.ndarray, max_size: int | None) -> np.ndarray:
    """`image` downscaled (bicubic) so its longer side is at most `max_size`; None keeps it."""
    return resize(image, fit_within(image.shape[:2], max_size), Image.Resampling.BICUBIC)
