"""Simulated defocus images for pre-training (paper, section 4.1, "Implementation").

Two modes, 20 samples per clear image each (`MODES`):

"paper" (the default, section 4.1): one half of the image (up, down, left or right) is out
of focus, smoothed by a 7×7 Gaussian with σ = 2 applied 1…5 times; the other half keeps the
original pixels. The blurred half is cut from the blurred *whole* image, so the boundary
between the halves is a natural blur edge rather than a padding artefact.

"lens" (not in the paper; closer to real defocus, `btbnet.lens`): in-focus regions shaped
like photographed subjects keep their pixels, the rest is seen through a defocused thin lens
(a disc point-spread function) whose radius varies over the background, and one sample in five
has a sharp scene behind an out-of-focus occluder. Draws are seeded from (seed, the source's
name, the sample's index): deterministic, whatever order the sources are processed in.

Odd sizes: the blurred half is always the floor half, H // 2 rows or W // 2 columns, so the
in-focus half gets the middle row or column. For "up" the blurred half is rows [0, H // 2),
for "down" rows [H - H // 2, H), and likewise for "left" / "right" with columns.

Masks follow the project convention: 255 = in focus, 0 = blurred. On disk the set is
``<out>/image/<source>_<direction>_<level>.png`` (lens: ``<source>_lens_<k>.png``, k = 1…20)
with its mask at ``<out>/gt/<same>.png`` (`write_samples`), the layout
`btbnet.data.PairDataset` reads.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import DataError, list_images, load_rgb
from .images import check_image, shrink_to
from .io import png_bytes
from .lens import lens_samples

DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")  # the half that is blurred
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)  # applications of the 7×7, σ = 2 Gaussian

KERNEL_SIZE = 7
KERNEL_SIGMA = 2.0

LENS = "lens"  # the "direction" of every lens sample; its "level" is the sample's index 1…20
MODES = ("paper", LENS)
LENS_SAMPLES = len(DIRECTIONS) * len(LEVELS)  # 20, as the paper's mode


class Sample(NamedTuple):
    """One simulated training pair."""

    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8 in {0, 255}, 255 = in focus
    direction: str  # which half is blurred, one of DIRECTIONS
    level: int  # number of Gaussian applications, one of LEVELS


def sample_name(stem: str, direction: str, level: int) -> str:
    """Stem of a simulated sample, e.g. ``sample_name("beach", "up", 3) == "beach_up_3"``,
    ``sample_name("beach", "lens", 17) == "beach_lens_17"``."""
    if direction == LENS:
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= LENS_SAMPLES:
            raise ValueError(f"level: a lens sample's index must be in 1…{LENS_SAMPLES}, got {level!r}")
        return f"{stem}_{LENS}_{level}"
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: must be one of {DIRECTIONS} or {LENS!r}, got {direction!r}")
    if level not in LEVELS:
        raise ValueError(f"level: must be one of {LEVELS}, got {level!r}")
    return f"{stem}_{direction}_{level}"


def sample_names(stem: str, mode: str) -> list[list[str]]:
    """The stems of one source's 20 samples in a 4 × 5 grid: the paper's a row per direction
    and a column per level; the lens mode's five per row in order."""
    if mode == LENS:
        return [[sample_name(stem, LENS, r * len(LEVELS) + c + 1) for c in range(len(LEVELS))] for r in range(len(DIRECTIONS))]
    check_mode(mode)
    return [[sample_name(stem, d, lv) for lv in LEVELS] for d in DIRECTIONS]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps [size] float64, centred on the middle tap.

    The 7×7 window of section 4.1 is the outer product of these taps with themselves, which is
    why one application is two 1-D passes (`_blur_once`).
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def synthesize(image: np.ndarray) -> list[Sample]:
    """The 20 simulated samples of one clear image (section 4.1).

    Ordered direction-major: up 1…5, down 1…5, left 1…5, right 1…5. Pure and
    deterministic: the same input gives byte-identical samples. The in-focus half is the
    input's bytes; the blurred half is the whole image smoothed `level` times there.

    Each smoothing is separable (a vertical then a horizontal 1-D pass) with reflect padding
    (the edge pixel is not repeated, ``np.pad(mode="reflect")``, OpenCV's default
    BORDER_REFLECT_101). All passes run in float64 and each level is rounded to uint8 once,
    so repeated blurring does not accumulate rounding error.
    """
    check_image(image, min_side=2)
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
    """``{level: image smoothed level times}`` for every level, sharing the float passes."""
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


def synthesize_lens(image: np.ndarray, seed: int | Sequence[int]) -> list[Sample]:
    """The 20 "lens" samples of one clear image (`btbnet.lens.lens_samples`), as `Sample`s
    with direction "lens" and level 1…20."""
    return [Sample(composite, mask, LENS, k) for k, (composite, mask) in enumerate(lens_samples(image, seed, LENS_SAMPLES), 1)]


# --- the synthetic data set on disk ---------------------------------------------------------


class Source(NamedTuple):
    """A clear source image and the name its samples are filed under."""

    path: Path
    name: str


def find_sources(root: str | Path, folders: Sequence[str]) -> list[Source]:
    """Every image under `root / folder` (searched recursively), for each folder in order.

    Names are the image's path below its folder with separators as "-" (BSDS500's
    ``train/2092.jpg`` → ``train-2092``), prefixed by the folder (``bsds500-train-2092``) when
    several folders are given, so they are unique and stable across runs. A clash, an empty
    folder or a missing one raises DataError naming it.
    """
    root = Path(root)
    sources: list[Source] = []
    seen: dict[str, Path] = {}
    for folder in folders:
        prefix = "" if len(folders) == 1 else _safe(folder) + "-"
        base = root / folder
        for path in list_images(base, recursive=True):
            name = prefix + _safe(str(path.relative_to(base).with_suffix("")))
            if name in seen:
                raise DataError(f"{path}: its sample name {name!r} clashes with {seen[name]}")
            seen[name] = path
            sources.append(Source(path, name))
    return sources


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")


def sample_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Where a sample goes: ``out_dir/image/<stem>.png`` and ``out_dir/gt/<stem>.png``."""
    return out_dir / "image" / f"{stem}.png", out_dir / "gt" / f"{stem}.png"


def encode_samples(
    source: Source, max_size: int | None = None, content: bytes | None = None, mode: str = "paper", seed: int = 0
) -> list[tuple[str, bytes]]:
    """One source's 20 samples as PNG files (masks 255 = in focus): ("image/<stem>.png",
    bytes) and ("gt/<stem>.png", bytes) for each, the layout `sample_paths` gives.

    The source is first shrunk (bicubic) so its longer side is at most `max_size` (None: kept).
    `content`: the source file's bytes when they were read elsewhere (a Ray node that cannot see
    the file). `mode`: one of MODES; the lens mode draws from (seed, crc32 of the source's name).
    A bad source raises DataError naming it.
    """
    check_mode(mode)
    try:
        image = shrink_to(load_rgb(source.path, content), max_size)
        samples = synthesize(image) if mode == "paper" else synthesize_lens(image, (seed, zlib.crc32(source.name.encode())))
    except ValueError as exc:  # DataError is a ValueError; a too-small image is one too
        raise DataError(str(exc) if str(source.path) in str(exc) else f"{source.path}: {exc}") from None
    files = []
    for sample in samples:
        image_path, mask_path = sample_paths(Path(), sample_name(source.name, sample.direction, sample.level))
        files += [(image_path.as_posix(), png_bytes(sample.image)), (mask_path.as_posix(), png_bytes(sample.mask))]
    return files


def write_samples(source: Source, out_dir: str | Path, max_size: int | None = None, mode: str = "paper", seed: int = 0) -> tuple[int, int]:
    """`encode_samples` written into `out_dir`; returns (samples written, bytes written)."""
    files = encode_samples(source, max_size, mode=mode, seed=seed)
    for name, content in files:
        (Path(out_dir) / name).write_bytes(content)
    return len(files) // 2, sum(len(content) for _, content in files)
