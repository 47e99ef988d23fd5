"""The "lens" synthesis mode's model of defocus: subjects, disc blur, depth (not in the paper).

Closer to real defocus than section 4.1's half-blurred images (`btbnet.synthesis`, mode
"paper"): the in-focus region is shaped like a photographed subject (a wobbly blob, a figure
of stacked parts, a subject cut by the frame's lower edge, or a few separate ones) and keeps
its pixels; the rest is seen through a defocused thin lens, a disc (pillbox) point-spread
function, whose radius varies over the background (constant, a ramp as on a receding ground
plane, or two depth planes), LENS_RADII px at the synthesis scale. One sample in five instead
has a sharp scene behind an out-of-focus occluder, blurred together with its own outline so
that its blur spreads over the sharp scene, as a near object's does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .images import check_image

LENS_RADII = (1.5, 8.0)  # disc PSF radii of the background, px at the synthesis scale
LENS_STEP = 0.5  # the radii blurred once per source; a pixel between two is interpolated
OCCLUDER_P = 0.2  # share of samples with a sharp scene behind an out-of-focus occluder
SUBJECT_AREA = (0.1, 0.6)  # share of the frame the in-focus subject covers
SUBJECT_KINDS = ("blob", "figure", "grounded", "group")
SUPERSAMPLE = 4  # outlines are drawn at 4× and averaged down: anti-aliased edges


def disc_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Pillbox PSF of a defocused thin lens: [K, K] float64 summing to 1.

    Each tap is the share of its pixel covered by the disc of `radius` (sampled on a
    `supersample`² grid), so non-integer radii give a smooth, anti-aliased rim. The pixel
    at offset d spans [d - 0.5, d + 0.5], so K = 2·(ceil(r + 0.5) - 1) + 1 holds the disc.
    """
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: must be a number > 0, got {radius!r}")
    half = int(math.ceil(radius + 0.5)) - 1
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5  # sub-pixel centres
    taps = np.arange(-half, half + 1, dtype=np.float64)
    fine = (taps[:, None] + offsets[None, :]).reshape(-1)  # [K·s]
    inside = fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2  # [K·s, K·s]
    k = 2 * half + 1
    kernel = inside.reshape(k, supersample, k, supersample).mean(axis=(1, 3))
    return kernel / kernel.sum()


def disc_blur_stack(image: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """`image` [H, W, C] seen through the disc PSF of each radius: [R, H, W, C] float64.

    One FFT of the image (reflect-padded by the largest kernel's half, so borders see a mirror,
    not the opposite edge) serves every radius.
    """
    h, w = image.shape[:2]
    half = max(disc_kernel(r).shape[0] for r in radii) // 2
    if half >= min(h, w):
        raise ValueError(f"image: {h}×{w} px is too small for a disc of radius {max(radii):g}")
    padded = np.pad(image.astype(np.float64), ((half, half), (half, half), (0, 0)), mode="reflect")
    shape = padded.shape[:2]
    spectrum = np.fft.rfft2(padded, axes=(0, 1))
    out = np.empty((len(radii), h, w, image.shape[2]))
    for i, radius in enumerate(radii):
        kernel = disc_kernel(radius)
        k = kernel.shape[0] // 2
        centred = np.zeros(shape)
        centred[: 2 * k + 1, : 2 * k + 1] = kernel
        centred = np.roll(centred, (-k, -k), axis=(0, 1))  # the kernel's centre at (0, 0)
        blurred = np.fft.irfft2(spectrum * np.fft.rfft2(centred)[:, :, None], s=shape, axes=(0, 1))
        out[i] = blurred[half : half + h, half : half + w]
    return out


def blur_field(stack: np.ndarray, radii: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Each pixel blurred by its own radius `field` [H, W]: linear between the two stack
    entries (`disc_blur_stack` at the sorted, evenly spaced `radii`) around it; [H, W, C]."""
    position = np.clip((field - radii[0]) / (radii[1] - radii[0]), 0, len(radii) - 1)  # [H, W]
    lo = np.minimum(np.floor(position).astype(int), len(radii) - 2)
    frac = (position - lo)[..., None]
    rows, cols = np.indices(field.shape)
    return (1 - frac) * stack[lo, rows, cols] + frac * stack[lo + 1, rows, cols]


def subject_alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An in-focus subject's outline, [H, W] float in [0, 1] (anti-aliased), one of
    SUBJECT_KINDS: "blob" (a wobbly ellipse), "figure" (two or three parts stacked, head on
    body), "grounded" (cut by the frame's lower edge, as a standing subject is) or "group"
    (two or three separate subjects); its area is about SUBJECT_AREA of the frame."""
    kind = SUBJECT_KINDS[int(rng.integers(len(SUBJECT_KINDS)))]
    s = SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    area = rng.uniform(*SUBJECT_AREA) * width * height * s * s
    cx, cy = rng.uniform(0.3, 0.7) * width * s, rng.uniform(0.3, 0.7) * height * s
    if kind == "group":
        for _ in range(int(rng.integers(2, 4))):
            r = math.sqrt(area / 3 / math.pi)
            draw.polygon(_blob(rng, rng.uniform(0.15, 0.85) * width * s, rng.uniform(0.2, 0.8) * height * s, r), fill=255)
    elif kind == "figure":
        parts = int(rng.integers(2, 4))
        r = math.sqrt(area / parts / math.pi)
        for i in range(parts):  # each part below the last, a little wider
            draw.polygon(_blob(rng, cx + rng.uniform(-0.2, 0.2) * r, cy + (i - (parts - 1) / 2) * 1.4 * r, r * (0.7 + 0.3 * i)), fill=255)
    else:
        r = math.sqrt(area / math.pi)
        draw.polygon(_blob(rng, cx, cy, r), fill=255)
        if kind == "grounded":  # the subject's body down to the frame's lower edge
            half_width = r * rng.uniform(0.5, 0.9)
            draw.rectangle((cx - half_width, cy, cx + half_width, height * s), fill=255)
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 64) -> list[tuple[float, float]]:
    """A rotated ellipse of mean radius `r` (aspect up to 1.6), its rim wobbled by three
    random low-order cosines."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    wobble = 1 + sum(rng.uniform(0.0, 0.2 / (k - 1)) * np.cos(k * t + rng.uniform(0, 2 * math.pi)) for k in range(2, 5))
    aspect, rot = rng.uniform(1.0, 1.6), rng.uniform(0.0, math.pi)
    x, y = r * math.sqrt(aspect) * wobble * np.cos(t), r / math.sqrt(aspect) * wobble * np.sin(t)
    xs, ys = cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)
    return list(zip(xs.tolist(), ys.tolist()))


def radius_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The background's blur radius per pixel, [H, W] within LENS_RADII: one depth (a
    constant), a ramp along a random direction (a receding ground plane), or two depth planes
    meeting along a random line (a soft step, 2 % of the frame wide)."""
    lo, hi = LENS_RADII
    a, b = rng.uniform(lo, hi, size=2)
    kind = int(rng.integers(3))
    if kind == 0:
        return np.full((height, width), a)
    theta = rng.uniform(0, 2 * math.pi)
    rows, cols = np.indices((height, width), dtype=np.float64)
    along = (cols / max(width - 1, 1) - 0.5) * math.cos(theta) + (rows / max(height - 1, 1) - 0.5) * math.sin(theta)
    if kind == 1:
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    else:
        t = 1 / (1 + np.exp(-(along - rng.uniform(-0.25, 0.25)) / 0.02))
    return a + (b - a) * t


def lens_samples(image: np.ndarray, seed: int | Sequence[int], count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (image uint8 [H, W, 3], mask uint8 [H, W], 255 = in focus) pairs of one clear
    image (see the module doc). Deterministic in (image, seed); `seed` is what
    `np.random.default_rng` takes (`btbnet.synthesis.encode_samples` passes (seed, crc32 of
    the source's name)).

    In-focus subject: image = α·I + (1 − α)·B, with α the subject's outline feathered by a
    one-pixel disc and B the image blurred per pixel by `radius_field`; mask: α > ½.
    Occluder: image = D(β·J) + (1 − D(β))·I, with J the image mirrored (another texture of
    the same photograph), β the occluder's outline, D the disc blur of one radius; mask: in
    focus where D(β) ≤ ½.
    """
    check_image(image, min_side=2 * int(math.ceil(LENS_RADII[1] + 0.5)))
    h, w = image.shape[:2]
    radii = np.arange(LENS_RADII[0], LENS_RADII[1] + LENS_STEP / 2, LENS_STEP)
    stack = disc_blur_stack(image, radii)  # [R, H, W, 3]
    sharp = image.astype(np.float64)
    samples = []
    for k in range(1, count + 1):
        rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), k])
        if rng.random() < OCCLUDER_P:
            beta = subject_alpha(rng, h, w)
            index = int(rng.integers(len(radii)))
            mirrored = sharp[:, ::-1] if rng.random() < 0.5 else sharp[::-1]
            spread = disc_blur_stack(np.concatenate([beta[..., None] * mirrored, beta[..., None]], axis=2), [radii[index]])[0]
            composite = spread[..., :3] + (1 - spread[..., 3:]) * sharp
            in_focus = spread[..., 3] <= 0.5
        else:
            alpha = subject_alpha(rng, h, w)
            soft = disc_blur_stack(alpha[..., None], [1.0])[0]  # the outline feathered by a 1-px disc
            composite = soft * sharp + (1 - soft) * blur_field(stack, radii, radius_field(rng, h, w))
            in_focus = alpha > 0.5
        mask = np.where(in_focus, 255, 0).astype(np.uint8)
        samples.append((np.clip(np.rint(composite), 0, 255).astype(np.uint8), mask))
    return samples
