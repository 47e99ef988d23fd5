"""Simulated defocus images for pre-training (paper, section 4.1, "Implementation").

Each clear image yields 20 samples: one half of the image (up, down, left or right) is
out of focus, smoothed by a 7×7 Gaussian with σ = 2 applied 1…5 times; the other half keeps
the original pixels. The blurred half is cut from the blurred *whole* image, so the boundary
between the halves is a natural blur edge rather than a padding artefact.

Odd sizes: the blurred half is always the floor half, H // 2 rows or W // 2 columns, so the
in-focus half gets the middle row or column. For "up" the blurred half is rows [0, H // 2),
for "down" rows [H - H // 2, H), and likewise for "left" / "right" with columns.

Masks follow the project convention: 255 = in focus, 0 = blurred.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")  # the half that is blurred
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)  # applications of the 7×7, σ = 2 Gaussian

KERNEL_SIZE = 7
KERNEL_SIGMA = 2.0


class Sample(NamedTuple):
    """One simulated training pair."""

    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8 in {0, 255}, 255 = in focus
    direction: str  # which half is blurred, one of DIRECTIONS
    level: int  # number of Gaussian applications, one of LEVELS

    def name(self, stem: str) -> str:
        """File stem of this sample for source image `stem`, see `sample_name`."""
        return sample_name(stem, self.direction, self.level)


def sample_name(stem: str, direction: str, level: int) -> str:
    """Stem of a simulated sample, e.g. ``sample_name("beach", "up", 3) == "beach_up_3"``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: must be one of {DIRECTIONS}, got {direction!r}")
    if level not in LEVELS:
        raise ValueError(f"level: must be one of {LEVELS}, got {level!r}")
    return f"{stem}_{direction}_{level}"


def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """The normalised 2-D Gaussian window, [size, size] float64 summing to 1.

    It is the outer product of `_gaussian_1d(size, sigma)` with itself, which is why `blur`
    can apply it as two 1-D passes.
    """
    g = _gaussian_1d(size, sigma)
    return np.outer(g, g)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps [size] float64, centred on the middle tap."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size: must be an odd integer >= 1, got {size!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: must be a number > 0, got {sigma!r}")
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def blur(image: np.ndarray, times: int) -> np.ndarray:
    """`image` [H, W, 3] uint8 smoothed `times` times by the 7×7, σ = 2 Gaussian → uint8.

    Each application is separable (a vertical then a horizontal 1-D pass) with reflect
    padding (the edge pixel is not repeated, ``np.pad(mode="reflect")``, OpenCV's default
    BORDER_REFLECT_101). All passes run in float64 and the result is rounded to uint8 once,
    at the end, so repeated blurring does not accumulate rounding error. ``times == 0``
    returns a copy.
    """
    _check_image(image)
    if isinstance(times, bool) or not isinstance(times, (int, np.integer)) or times < 0:
        raise ValueError(f"times: must be an integer >= 0, got {times!r}")
    smooth = image.astype(np.float64)
    for _ in range(times):
        smooth = _blur_once(smooth)
    return _to_uint8(smooth)


def synthesize(image: np.ndarray) -> list[Sample]:
    """The 20 simulated samples of one clear image (section 4.1).

    Ordered direction-major: up 1…5, down 1…5, left 1…5, right 1…5. Pure and
    deterministic: the same input gives byte-identical samples. The in-focus half is the
    input's bytes; the blurred half equals ``blur(image, level)`` there.
    """
    _check_image(image)
    blurred = _blur_levels(image)  # level → [H, W, 3] uint8
    samples = []
    for direction in DIRECTIONS:
        in_focus = _in_focus_mask(image.shape[:2], direction)  # [H, W] bool
        for level in LEVELS:
            composite = np.where(in_focus[:, :, None], image, blurred[level])
            mask = np.where(in_focus, 255, 0).astype(np.uint8)
            samples.append(Sample(composite, mask, direction, level))
    return samples


def _blur_levels(image: np.ndarray) -> dict[int, np.ndarray]:
    """``{level: blur(image, level)}`` for every level, sharing the float passes."""
    smooth = image.astype(np.float64)
    levels = {}
    for level in range(1, max(LEVELS) + 1):
        smooth = _blur_once(smooth)
        if level in LEVELS:
            levels[level] = _to_uint8(smooth)
    return levels


def _blur_once(image: np.ndarray) -> np.ndarray:
    """One 7×7 Gaussian application to [H, W, C] float64, as two 1-D passes."""
    taps = _gaussian_1d(KERNEL_SIZE, KERNEL_SIGMA)
    return _convolve_axis(_convolve_axis(image, taps, axis=0), taps, axis=1)


def _convolve_axis(image: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlate `image` with symmetric 1-D `taps` along `axis`, reflect padding, same size."""
    radius = len(taps) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="reflect")
    n = image.shape[axis]
    out = np.zeros_like(image)
    for k, weight in enumerate(taps):
        out += weight * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


def _in_focus_mask(shape: tuple[int, int], direction: str) -> np.ndarray:
    """[H, W] bool, True on the in-focus half; the blurred half is H // 2 rows or W // 2 cols."""
    h, w = shape
    in_focus = np.ones((h, w), dtype=bool)
    if direction == "up":
        in_focus[: h // 2, :] = False
    elif direction == "down":
        in_focus[h - h // 2 :, :] = False
    elif direction == "left":
        in_focus[:, : w // 2] = False
    elif direction == "right":
        in_focus[:, w - w // 2 :] = False
    else:
        raise ValueError(f"direction: must be one of {DIRECTIONS}, got {direction!r}")
    return in_focus


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _check_image(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is a uint8 [H, W, 3] array with H, W >= 2."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image: must be at least 2×2 pixels, got {image.shape[0]}×{image.shape[1]}")
