"""Classical and trivial defocus blur detectors, the comparison methods of Table 1 / Figures 9-10.

Every detector maps an RGB image uint8 [H, W, 3] (a grey image uint8 [H, W] is also accepted)
to a DBD map float32 [H, W] in [0, 1] with 1 = IN FOCUS, the convention of `btbnet.metrics`.

  - `all_in_focus`, `all_blurred`: constant maps, the trivial references.
  - `lbp_sharpness`, `lbp_multiscale`: the LBP-based sharpness metric of Yi & Eramian, "LBP-based
    segmentation of defocus blur", IEEE TIP 25(4), 2016 (ref. [31] of the paper), following the
    authors' released code (github.com/xinario/defocus_segmentation: lbpCode.m, lbpSharpness.m,
    lbpSharpness.cpp, demo.m) with its published parameters:
      * grey image: MATLAB rgb2gray of the uint8 RGB image, round(0.2989 R + 0.5870 G + 0.1140 B)
        (lbpSharpness.m; the mex variant calls OpenCV's BGR2GRAY on the RGB array instead);
      * rotation-invariant uniform LBP^riu2_{8,1} (eq. 14): 8 neighbours on the radius-1
        circle, the 4 diagonal ones bilinearly interpolated and then floored to integer grey
        levels, replicate padding; a neighbour's bit is 1 where g_p - g_c > T_LBP · 255 with
        T_LBP = 0.016 (so g_p - g_c >= 5 grey levels); the code is the number of 1 bits when
        the circular pattern has at most 2 bit transitions, else 9 (non-uniform);
      * sharpness (eq. 15): m_LBP = (1/N) Σ_{i=6..9} n(LBP^riu2_{8,1} = i), the fraction of codes
        6, 7, 8 and 9 in the s × s window centred on each pixel (the LBP map replicate-padded by
        (s - 1)/2), computed with an integral image; window sizes s = 11, 15, 21 (demo.m);
      * min-max normalisation of each scale's map to [0, 1] (normPatch.m / cv::normalize; the
        mex variant also rounds it to 8 bits, we keep floats).
    (The authors' later python demo, lbpSharpness.py, differs: it min-max rescales the grey
    image to [0, 1] and skips the flooring; we follow the MATLAB / mex code the paper used.)
    NOT implemented: the rest of the TIP 2016 pipeline, i.e. the double-threshold trimap
    (eq. 21, T_m1 = 0.3, T_m2 = 0.01), the closed-form alpha matting of each scale (eqs. 16-18,
    Levin et al.; a large sparse linear system) and the multi-scale inference on a 3-layer
    graphical model by loopy belief propagation (eq. 19, α = 0.5). `lbp_multiscale` replaces
    matting + eq. 19 by the plain mean of the three normalised maps; `lbp_sharpness` at s = 21
    alone is what the authors' own python demo (lbpSharpness.py) displays. The maps are
    therefore those of the sharpness metric, not the paper's final segmentation.

`BASELINES` maps a name to each detector with default parameters.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

T_LBP = 0.016  # LBP threshold on [0, 1] intensities (Yi & Eramian 2016, demo.m blurSensitivity)
LBP_SCALES = (11, 15, 21)  # window sizes s of the three scales (demo.m)
SHARP_CODES_FROM = 6  # eq. 15 counts LBP^riu2 codes 6, 7, 8 and 9
NON_UNIFORM = 9  # the riu2 code of patterns with more than 2 bit transitions
RGB_TO_GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # MATLAB rgb2gray


def all_in_focus(image: np.ndarray) -> np.ndarray:
    """Trivial detector: every pixel in focus, float32 [H, W] of ones."""
    return np.ones(_check_image(image).shape[:2], dtype=np.float32)


def all_blurred(image: np.ndarray) -> np.ndarray:
    """Trivial detector: every pixel blurred, float32 [H, W] of zeros."""
    return np.zeros(_check_image(image).shape[:2], dtype=np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB → uint8 [H, W] grey as MATLAB rgb2gray (grey [H, W] passes through)."""
    image = _check_image(image)
    if image.ndim == 2:
        return image
    weights = np.array(RGB_TO_GREY)  # [3]
    return np.rint(image.astype(np.float64) @ weights).clip(0, 255).astype(np.uint8)  # [H, W]


def lbp_codes(grey: np.ndarray, t_lbp: float = T_LBP) -> np.ndarray:
    """LBP^riu2_{8,1} code 0…9 of every pixel of a grey uint8 [H, W] image → uint8 [H, W].

    Eq. 14 of Yi & Eramian (2016) as in lbpCode.m: neighbours g_0…g_7 counter-clockwise from the
    right one (g_0 right, g_2 above, g_4 left, g_6 below; g_1, g_3, g_5, g_7 the diagonals at
    distance 1, bilinear and floored), border pixels replicated. Bit p is 1 where
    g_p - g_c > t_lbp · 255; uniform patterns (<= 2 circular transitions) get their number of
    1 bits (0…8), the others 9.
    """
    grey = _check_image(grey)
    if grey.ndim != 2:
        raise ValueError(f"grey: expected a uint8 grey image [H, W], got shape {grey.shape}")
    centre = grey.astype(np.float64)  # [H, W]
    padded = np.pad(centre, 1, mode="edge")  # [H + 2, W + 2]
    h, w = centre.shape

    def shifted(dy: int, dx: int) -> np.ndarray:  # the neighbour at row offset dy, column dx
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    right, left, above, below = shifted(0, 1), shifted(0, -1), shifted(-1, 0), shifted(1, 0)
    d = np.sqrt(2) / 2  # offset of a diagonal neighbour along each axis

    def diagonal(side: np.ndarray, vertical: np.ndarray, corner: np.ndarray) -> np.ndarray:
        # Bilinear at (d, d) from the centre, in lbpCode.m's order of operations, then floored.
        return np.floor((1 - d) * ((1 - d) * centre + d * side) + d * ((1 - d) * vertical + d * corner))

    neighbours = [  # g_0 … g_7, each [H, W]
        right,
        diagonal(right, above, shifted(-1, 1)),
        above,
        diagonal(left, above, shifted(-1, -1)),
        left,
        diagonal(left, below, shifted(1, -1)),
        below,
        diagonal(right, below, shifted(1, 1)),
    ]
    bits = np.stack([g - centre > t_lbp * 255 for g in neighbours])  # [8, H, W] bool
    transitions = np.count_nonzero(bits != np.roll(bits, 1, axis=0), axis=0)  # [H, W], circular
    ones = np.count_nonzero(bits, axis=0)  # [H, W] in 0…8
    return np.where(transitions <= 2, ones, NON_UNIFORM).astype(np.uint8)


def window_fraction(mask: np.ndarray, size: int) -> np.ndarray:
    """Fraction of True pixels of `mask` [H, W] in the size × size window centred on each pixel.

    The mask is replicate-padded by (size - 1) / 2 as in lbpSharpness.m; the window sums come
    from an integral image (cumulative sums), so the cost does not depend on `size`.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd window size >= 1, got {size!r}")
    r = (size - 1) // 2
    padded = np.pad(np.asarray(mask, dtype=np.float64), r, mode="edge")  # [H + 2r, W + 2r]
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))  # [H + 2r + 1, W + 2r + 1]
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    h, w = np.shape(mask)
    sums = (
        integral[size : size + h, size : size + w]
        - integral[:h, size : size + w]
        - integral[size : size + h, :w]
        + integral[:h, :w]
    )  # [H, W]
    return sums / size**2


def lbp_sharpness(image: np.ndarray, size: int = 21, t_lbp: float = T_LBP, normalise: bool = True) -> np.ndarray:
    """Eq. 15 of Yi & Eramian (2016) at one scale: float32 [H, W] in [0, 1], 1 = sharpest.

    m_LBP = share of LBP^riu2_{8,1} codes 6…9 in the size × size window of each pixel, then
    (normalise=True) min-max normalised over the image as the authors' code does. A constant
    map (e.g. a flat image) is returned unnormalised, since min-max is undefined there.
    """
    codes = lbp_codes(to_grey(image), t_lbp)  # [H, W] in 0…9
    sharpness = window_fraction(codes >= SHARP_CODES_FROM, size)  # [H, W] in [0, 1]
    if normalise:
        sharpness = _min_max(sharpness)
    return sharpness.astype(np.float32)


def lbp_multiscale(image: np.ndarray, scales: tuple[int, ...] = LBP_SCALES, t_lbp: float = T_LBP) -> np.ndarray:
    """Mean of the min-max normalised eq. 15 maps at window sizes 11, 15, 21: float32 [H, W].

    Our stand-in for the paper's per-scale matting and multi-scale inference (eq. 19), which are
    not implemented (module doc). The LBP codes are computed once and shared by the scales.
    """
    sharp = lbp_codes(to_grey(image), t_lbp) >= SHARP_CODES_FROM  # [H, W] bool
    maps = [_min_max(window_fraction(sharp, s)) for s in scales]  # each [H, W] in [0, 1]
    return np.mean(maps, axis=0).astype(np.float32)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "all_in_focus": all_in_focus,
    "all_blurred": all_blurred,
    "lbp": lbp_multiscale,  # mean of scales 11, 15, 21
    "lbp_s21": lbp_sharpness,  # scale 21 alone (the authors' python demo)
}


def _min_max(values: np.ndarray) -> np.ndarray:
    """(v - min) / (max - min) as normPatch.m; a constant map is returned as it is."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else values


def _check_image(image: np.ndarray) -> np.ndarray:
    """`image` as uint8 [H, W, 3] or [H, W]; ValueError otherwise."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 array, got {getattr(image, 'dtype', type(image).__name__)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise ValueError(f"image: expected [H, W, 3] RGB or [H, W] grey, got shape {image.shape}")
    return image
