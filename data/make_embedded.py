"""Generate the embedded default data that `dvc repro` uses on a fresh clone.

Two small data sets are cut from real photographs shipped inside the scikit-image wheel
(public domain / CC0, see data/README.md), so that the pipeline runs end to end with no
download:

* ``sources/``  clear RGB images for the simulated pre-training set (paper, section 4.1,
  "Implementation": the paper used 2000 BSDS500 + UCID photographs).
* ``defocus/{train,test}/{image,gt}/`` partially defocused images with binary masks, laid
  out like Shi's (CUHK) data set (paper, section 4.1, "Datasets"). As in Shi's files the
  masks mark the BLURRED region with 255 and the in-focus region with 0; the pipeline
  reads them with polarity "blurred", exactly like the real data.

A defocus image is a two-layer scene, a near object (a random shape) in front of a far
layer. One of the two layers is defocused with a disc (pillbox) point-spread function of
random radius, the model of an out-of-focus thin lens; the other stays sharp. Mostly the
object is in focus and the background blurred, as in real photographs.

Run once, as a developer tool (scikit-image is not a dependency of the project):

    pip install scikit-image
    python data/make_embedded.py

A fixed seed makes two runs byte-identical (given the same numpy, Pillow and zlib).
Everything above `main` is pure numpy + Pillow, so tests can import this module without
scikit-image.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from btbnet.lens import disc_kernel  # the thin-lens PSF of the "lens" synthesis mode

SEED = 2018
DEFAULT_OUT = Path(__file__).resolve().parent / "embedded"

N_SOURCES = 28
N_TRAIN = 40
N_TEST = 16
SOURCE_SIZES: tuple[tuple[int, int], ...] = ((96, 96), (112, 112), (128, 128), (128, 96), (96, 128))  # (W, H)
DEFOCUS_SIZE = (96, 96)  # (W, H)

# Photographs are split by column: sources and training pairs are cut from the left part,
# test pairs from the right part, so no test pixel was ever seen in training.
TRAIN_REGION = (0.0, 0.7)
TEST_REGION = (0.7, 1.0)

MIN_SCALE = 0.35  # smallest down-scaling of a photo crop (larger crops, finer texture)
MIN_TEXTURE = 0.035  # mean gradient magnitude (luminance in [0, 1]) of each half of a source
MIN_LAYER_TEXTURE = 0.025  # mean gradient magnitude of the in-focus layer of a defocus pair
BLUR_RADII = (2.0, 6.0)  # disc PSF radius range in pixels
MASK_FRACTION = (0.15, 0.85)  # share of blurred pixels allowed in a mask
MIN_SHARPNESS_RATIO = 2.0  # sharp-region gradient over blurred-region gradient
OBJECT_IN_FOCUS_P = 0.7  # otherwise the object is the defocused layer
SAME_SCENE_P = 0.5  # near and far layer cut from one crop (a single scene)
SHAPE_KINDS = ("ellipse", "blob", "polygon", "rectangle", "split")
SHAPE_WEIGHTS = (0.2, 0.25, 0.2, 0.15, 0.2)
MAX_TRIES = 500


@dataclass(frozen=True)
class Photo:
    """A photograph inside the scikit-image wheel (skimage/data/<file>)."""

    file: str
    sha256: str  # from skimage/data/_registry.py; pins the exact bytes used
    licence: str  # as stated in the docstring of its skimage.data loader
    source_weight: float  # relative chance of being drawn for a source image
    defocus_weight: float  # relative chance of being drawn for a defocus layer


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
          "public domain (NASA)", 1.0, 1.0),
    Photo("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
          "CC0 (Stefan van der Walt)", 1.0, 1.0),
    Photo("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
          "CC0 (Rachel Michetti)", 1.0, 1.0),
    Photo("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
          "public domain (SpaceX)", 1.0, 1.0),
    Photo("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
          "CC0 (Lav Varshney)", 0.5, 0.5),
    Photo("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
          "CC0 (CC0Textures, Bricks25)", 0.25, 0.25),
    Photo("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
          "CC0 (DeviantArt, linolafett)", 0.25, 0.25),
    Photo("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
          "CC0 (CC0Textures, Gravel04)", 0.25, 0.25),
)


# --------------------------------------------------------------------------- defocus model


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter [H, W] or [H, W, C] float `image` with a symmetric odd [K, K] kernel, reflect padding."""
    k = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"kernel: must be square with an odd side, got shape {kernel.shape}")
    half = k // 2
    h, w = image.shape[:2]
    if half >= min(h, w):
        raise ValueError(f"kernel: side {k} is too large for an image of {h}×{w} pixels")
    pad = ((half, half), (half, half)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image.astype(np.float64), pad, mode="reflect")
    out = np.zeros(image.shape, dtype=np.float64)
    for dy, dx in zip(*np.nonzero(kernel)):
        out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


def defocus(image: np.ndarray, radius: float) -> np.ndarray:
    """Float [H, W, C] `image` as seen out of focus: convolved with the disc PSF of `radius`."""
    return convolve(image, disc_kernel(radius))


def composite_defocus(
    near: np.ndarray, far: np.ndarray, shape: np.ndarray, radius: float, blurred_layer: str
) -> tuple[np.ndarray, np.ndarray]:
    """Layer a near object over a far layer with one of the two defocused.

    near, far:      [H, W, 3] uint8 layers (may be the same crop: one scene).
    shape:          [H, W] bool, where the near object is.
    blurred_layer:  "far" (object in focus, the usual case) or "near" (an out-of-focus
                    occluder over a sharp background).

    Returns (image [H, W, 3] uint8, blurred [H, W] bool). The in-focus object's edge is
    feathered by one pixel; a defocused object is blurred together with its own alpha, so
    its blur spreads over the sharp background as it does through a real lens. The
    returned mask stays binary: the object's shape or its complement.
    """
    if near.shape != far.shape or near.shape[:2] != shape.shape or near.ndim != 3:
        raise ValueError(
            f"near, far, shape: need [H, W, 3], [H, W, 3], [H, W]; got {near.shape}, {far.shape}, {shape.shape}"
        )
    fg = near.astype(np.float64)
    bg = far.astype(np.float64)
    alpha = shape.astype(np.float64)[..., None]  # [H, W, 1]
    if blurred_layer == "far":
        alpha = convolve(alpha, disc_kernel(1.0))
        image = alpha * fg + (1.0 - alpha) * defocus(bg, radius)
        blurred = ~shape
    elif blurred_layer == "near":
        image = defocus(alpha * fg, radius) + (1.0 - defocus(alpha, radius)) * bg
        blurred = shape.copy()
    else:
        raise ValueError(f"blurred_layer: must be 'near' or 'far', got {blurred_layer!r}")
    return to_uint8(image), blurred


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip float pixel values to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- measurements


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """[H, W] gradient magnitude of the luminance of uint8 [H, W, 3] `image`, in [0, 1] units."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    gy, gx = np.gradient(luma)
    return np.hypot(gx, gy)


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion of [H, W] bool `mask` by a 3×3 square, `steps` times (outside = False)."""
    h, w = mask.shape
    out = mask.copy()
    for _ in range(steps):
        p = np.pad(out, 1, constant_values=False)  # [H + 2, W + 2]
        out = np.logical_and.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return out


def sharpness_ratio(image: np.ndarray, blurred: np.ndarray, margin: int) -> float:
    """Mean gradient of the sharp region over that of the blurred region, `margin` px from the edge.

    The band around the boundary is left out: the boundary itself is an edge in both cases.
    Returns 0.0 when either eroded region is empty.
    """
    grad = gradient_magnitude(image)
    sharp, soft = erode(~blurred, margin), erode(blurred, margin)
    if not sharp.any() or not soft.any():
        return 0.0
    return float(grad[sharp].mean() / max(grad[soft].mean(), 1e-6))


def is_textured_source(image: np.ndarray) -> bool:
    """Enough texture in every half (top, bottom, left, right) that its blur would show.

    The synthesis stage blurs one half at a time (paper, section 4.1), so a flat half (sky,
    an out-of-focus backdrop) would give a sample whose label cannot be seen.
    """
    grad = gradient_magnitude(image)
    h, w = grad.shape
    halves = (grad[: h // 2], grad[h - h // 2 :], grad[:, : w // 2], grad[:, w - w // 2 :])
    return all(float(g.mean()) >= MIN_TEXTURE for g in halves)


def is_textured_layer(image: np.ndarray) -> bool:
    """Enough texture overall for an in-focus layer; `make_defocus_pair` checks the rest."""
    return float(gradient_magnitude(image).mean()) >= MIN_LAYER_TEXTURE


# --------------------------------------------------------------------------- shapes


def shape_polygon(kind: str, rng: np.random.Generator, width: int, height: int) -> list[tuple[float, float]]:
    """Vertices (x, y) of a random near-object outline of `kind` (one of SHAPE_KINDS)."""
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    size = min(width, height)
    if kind == "ellipse":
        return _radial(rng, cx, cy, rng.uniform(0.2, 0.45) * size, rng.uniform(0.2, 0.45) * size, harmonics=0)
    if kind == "blob":
        r = rng.uniform(0.22, 0.4) * size
        return _radial(rng, cx, cy, r, r, harmonics=4)
    if kind == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0.0, 2 * math.pi, n))
        radii = rng.uniform(0.2, 0.5, n) * size
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]
    if kind == "rectangle":
        hw, hh = rng.uniform(0.15, 0.4) * width, rng.uniform(0.15, 0.4) * height
        theta = rng.uniform(-0.5, 0.5)
        c, s = math.cos(theta), math.sin(theta)
        corners = ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]
    if kind == "split":
        # a straight boundary across the frame, e.g. ground in focus below a soft horizon
        theta = rng.uniform(0.0, 2 * math.pi)
        nx, ny = math.cos(theta), math.sin(theta)  # normal pointing into the shape
        far = 2.0 * (width + height)
        tx, ty = -ny, nx
        return [(cx + tx * far, cy + ty * far), (cx + tx * far + nx * far, cy + ty * far + ny * far),
                (cx - tx * far + nx * far, cy - ty * far + ny * far), (cx - tx * far, cy - ty * far)]
    raise ValueError(f"kind: must be one of {SHAPE_KINDS}, got {kind!r}")


def _radial(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, harmonics: int, n: int = 72
) -> list[tuple[float, float]]:
    """A rotated ellipse, its radius wobbled by `harmonics` random low-order cosines (a blob)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    wobble = np.ones(n)
    for k in range(2, 2 + harmonics):
        wobble += rng.uniform(0.0, 0.25 / (k - 1)) * np.cos(k * t + rng.uniform(0.0, 2 * math.pi))
    rot = rng.uniform(0.0, math.pi)
    x, y = rx * wobble * np.cos(t), ry * wobble * np.sin(t)
    xs = cx + x * math.cos(rot) - y * math.sin(rot)
    ys = cy + x * math.sin(rot) + y * math.cos(rot)
    return list(zip(xs.tolist(), ys.tolist()))


def rasterize(polygon: list[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """[H, W] bool mask of the pixels inside `polygon` (Pillow's scan conversion)."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=255)
    return np.asarray(canvas) > 0


# --------------------------------------------------------------------------- photographs


def find_photo_dir() -> Path:
    """skimage/data inside the installed wheel, located without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-image is not installed: run `pip install scikit-image` (generator only)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photos(photo_dir: Path) -> dict[str, np.ndarray]:
    """Every photo of PHOTOS as [H, W, 3] uint8 (grey ones repeated over 3 channels).

    The bytes are checked against the pinned sha256, so a changed or missing file stops the
    run instead of silently changing the generated data.
    """
    photos = {}
    for photo in PHOTOS:
        path = photo_dir / photo.file
        if not path.is_file():
            raise SystemExit(f"{path}: photo not found in the scikit-image wheel")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != photo.sha256:
            raise SystemExit(f"{path}: sha256 {digest} differs from the pinned {photo.sha256}")
        with Image.open(path) as im:
            photos[photo.file] = np.asarray(im.convert("RGB"))
    return photos


def random_crop(
    rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int], region: tuple[float, float]
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random crop inside the column band `region` of `photo`, resized to `size` = (W, H).

    The crop has the output's aspect ratio and is down-scaled by 1 to 1/MIN_SCALE with a
    Lanczos filter, which keeps it sharp; half the crops are mirrored left to right.
    """
    w, h = size
    ph, pw = photo.shape[:2]
    x_lo, x_hi = int(region[0] * pw), int(region[1] * pw)
    max_zoom = min((x_hi - x_lo) / w, ph / h, 1.0 / MIN_SCALE)
    if max_zoom < 1.0:
        raise ValueError(f"region: {x_hi - x_lo}×{ph} px of the photo cannot hold a {w}×{h} crop")
    zoom = rng.uniform(1.0, max_zoom)
    cw, ch = w * zoom, h * zoom
    x0 = rng.uniform(x_lo, x_hi - cw)
    y0 = rng.uniform(0.0, ph - ch)
    box = (x0, y0, x0 + cw, y0 + ch)
    crop = Image.fromarray(photo).resize((w, h), Image.Resampling.LANCZOS, box=box)
    flip = bool(rng.random() < 0.5)
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    meta = {"box": [round(v, 1) for v in box], "flip": flip}
    return np.asarray(crop), meta


def pick_photo(rng: np.random.Generator, weight: str) -> Photo:
    """A photo drawn with the relative `weight` attribute ("source_weight" or "defocus_weight")."""
    p = np.array([getattr(photo, weight) for photo in PHOTOS])
    return PHOTOS[int(rng.choice(len(PHOTOS), p=p / p.sum()))]


def textured_crop(
    rng: np.random.Generator, photos: dict[str, np.ndarray], size: tuple[int, int],
    region: tuple[float, float], weight: str, accept: Callable[[np.ndarray], bool],
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random crop that passes the texture test `accept` (rejection sampling)."""
    for _ in range(MAX_TRIES):
        photo = pick_photo(rng, weight)
        crop, meta = random_crop(rng, photos[photo.file], size, region)
        if accept(crop):
            return crop, {"photo": photo.file, **meta}
    raise RuntimeError(f"no textured {size} crop found in {MAX_TRIES} tries")


# --------------------------------------------------------------------------- samples


def make_source(rng: np.random.Generator, photos: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """One clear source image for the simulated pre-training set."""
    size = SOURCE_SIZES[int(rng.integers(len(SOURCE_SIZES)))]
    return textured_crop(rng, photos, size, TRAIN_REGION, "source_weight", is_textured_source)


def make_defocus_pair(
    rng: np.random.Generator, photos: dict[str, np.ndarray], region: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One partially defocused image, its blurred mask [H, W] bool, and how it was made.

    Drawn again until the mask's blurred share lies in MASK_FRACTION and the sharp region
    is visibly sharper than the blurred one (MIN_SHARPNESS_RATIO), so every label can be
    read off the pixels.
    """
    w, h = DEFOCUS_SIZE
    for _ in range(MAX_TRIES):
        blurred_layer = "far" if rng.random() < OBJECT_IN_FOCUS_P else "near"
        kind = SHAPE_KINDS[int(rng.choice(len(SHAPE_KINDS), p=SHAPE_WEIGHTS))]
        shape = rasterize(shape_polygon(kind, rng, w, h), w, h)
        blurred_share = float(shape.mean()) if blurred_layer == "near" else 1.0 - float(shape.mean())
        if not MASK_FRACTION[0] <= blurred_share <= MASK_FRACTION[1]:
            continue
        # the in-focus layer must carry texture; the defocused one may be anything
        sharp, sharp_meta = textured_crop(
            rng, photos, DEFOCUS_SIZE, region, "defocus_weight", is_textured_layer
        )
        if rng.random() < SAME_SCENE_P:
            soft, soft_meta = sharp, sharp_meta
        else:
            photo = pick_photo(rng, "defocus_weight")
            soft, crop_meta = random_crop(rng, photos[photo.file], DEFOCUS_SIZE, region)
            soft_meta = {"photo": photo.file, **crop_meta}
        near, far = (soft, sharp) if blurred_layer == "near" else (sharp, soft)
        radius = float(rng.uniform(*BLUR_RADII))
        image, blurred = composite_defocus(near, far, shape, radius, blurred_layer)
        ratio = sharpness_ratio(image, blurred, margin=int(math.ceil(radius)) + 2)
        if ratio < MIN_SHARPNESS_RATIO:
            continue
        meta = {
            "shape": kind,
            "blurred_layer": blurred_layer,
            "blur_radius": round(radius, 3),
            "blurred_fraction": round(float(blurred.mean()), 4),
            "sharpness_ratio": round(ratio, 3),
            "near": sharp_meta if blurred_layer == "far" else soft_meta,
            "far": soft_meta if blurred_layer == "far" else sharp_meta,
        }
        return image, blurred, meta
    raise RuntimeError(f"no acceptable defocus pair found in {MAX_TRIES} tries")


# --------------------------------------------------------------------------- output


def save_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 [H, W] or [H, W, 3] `array` as PNG with fixed options (byte-reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=9)


def generate(out: Path, photos: dict[str, np.ndarray], seed: int = SEED) -> dict[str, Any]:
    """Write sources/, defocus/ and manifest.json under `out`; returns the manifest.

    Old outputs under those names are removed first, so no stale file survives.
    """
    for name in ("sources", "defocus"):
        shutil.rmtree(out / name, ignore_errors=True)
    rng = np.random.default_rng(seed)
    manifest: dict[str, Any] = {"seed": seed, "sources": {}, "defocus": {"train": {}, "test": {}}}

    for i in range(N_SOURCES):
        image, meta = make_source(rng, photos)
        stem = f"source_{i:03d}"
        save_png(out / "sources" / f"{stem}.png", image)
        manifest["sources"][stem] = meta

    # one numbering over both splits, as in Shi's file names: stems never repeat
    splits = [("train", TRAIN_REGION)] * N_TRAIN + [("test", TEST_REGION)] * N_TEST
    for i, (split, region) in enumerate(splits):
        image, blurred, meta = make_defocus_pair(rng, photos, region)
        stem = f"defocus_{i:04d}"
        save_png(out / "defocus" / split / "image" / f"{stem}.png", image)
        save_png(out / "defocus" / split / "gt" / f"{stem}.png", np.where(blurred, 255, 0).astype(np.uint8))
        manifest["defocus"][split][stem] = meta

    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    args = parser.parse_args(argv)

    photos = load_photos(find_photo_dir())
    manifest = generate(args.out, photos, args.seed)
    n_train, n_test = len(manifest["defocus"]["train"]), len(manifest["defocus"]["test"])
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(manifest['sources'])} sources, {n_train} train + {n_test} test pairs, "
          f"{total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
