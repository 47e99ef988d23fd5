"""Evaluation criteria for DBD maps under two scoring protocols: "paper" and "ddff".

Inputs: `pred`, a DBD map [H, W] of floats in [0, 1] (1 = in focus), and `gt`, a binary mask
[H, W] given as bool, {0, 1} or {0, 255} (in focus = True / 1 / 255).

Protocol "paper": section 4.2 of Zhao et al. (CVPR 2018), with the conventions of common
saliency / DBD benchmark code (e.g. PySODMetrics).
  - Positives are IN-FOCUS pixels.
  - precision = TP / (TP + FP) and recall = TP / (TP + FN), with 0 / 0 → 0: no predicted
    positive gives precision 0, an all-blurred ground truth gives recall 0.
  - F-measure (eq. 8) with ζ² = 0.3 is 0 when precision and recall are both 0.
  - PR curve: the map is quantised to levels round(pred · 255) (round half to even) and
    binarised at every integer threshold t = 0…255, positive where level >= t. At t = 0 every
    pixel is positive.
  - Adaptive threshold: min(1.5 · mean(pred), 1.0), positive where pred >= threshold; the clamp
    keeps at least the pixels at 1.0 positive when the mean exceeds 2/3. An all-zero map has
    threshold 0 and so marks every pixel in focus, exactly like an all-one map.
  - Averaging over a set: every metric is computed per image, then averaged over the images.
    `f_measure` is eq. 8 applied to the set's mean adaptive precision and mean adaptive recall;
    `f_measure_per_image` is the mean of the per-image eq. 8 values (the literature uses both;
    the former is the usual reading of "average precision, recall and F-measure").
    The PR curve is the per-threshold mean of the per-image curves, and `f_max` is the maximum
    over the 256 thresholds of eq. 8 applied to that mean curve.

Protocol "ddff": the scoring of D-DFFNet (Jin et al., "Depth and DOF cues make better defocus
blur detection", ICME 2023; released code yuxinjin-whu/D-DFFNet, `utils.F_score1`,
`utils.eval_mae`) and of the DBD works that reuse it.
  - Positives are BLURRED pixels: the blur score 1 - pred is compared with the blurred mask ~gt.
  - The map is binarised at 0.5 as in the released code (`y_pred[y_pred >= 0.5] = 1`, i.e. a
    pixel is in focus where pred >= 0.5): a pixel is predicted BLURRED where pred < 0.5
    (equivalently 1 - pred > 0.5, strictly). Precision, recall and eq. 8 (ζ² = 0.3) of that
    binary map are computed per image with 0 / 0 → 0.
  - `f_measure`, `precision`, `recall` are the means over images of the per-image values (F is
    averaged per image, not recomputed from the mean P and R).
  - `f_measure_code`: the released `F_score1` sweeps thresholds linspace(0, 1, 255) over the
    already binarised blur map and keeps the maximum F. Threshold 0 marks every pixel blurred,
    so its per-image value is max(F of the binary map, F of the all-blurred map); this key is
    the mean of that value, for comparison with published D-DFFNet-style figures.
  - `mae` is eq. 9, which is the same under either polarity since |p - g| = |(1-p) - (1-g)|.
"""

from __future__ import annotations

import numpy as np

NUM_LEVELS = 256  # integer thresholds 0…255
BETA2 = 0.3  # ζ² of eq. 8
ADAPTIVE_FACTOR = 1.5  # threshold = 1.5 × mean of the DBD map
DDFF_THRESHOLD = 0.5  # "ddff": in focus where pred >= 0.5, blurred where pred < 0.5

PROTOCOLS = ("paper", "ddff")
# Scalar keys of `SetMetrics(protocol).result()` worth reporting (besides "images" and curves).
_REPORTED = {
    "paper": ("f_measure", "f_measure_per_image", "precision", "recall", "mae", "f_max"),
    "ddff": ("f_measure", "precision", "recall", "mae"),  # f_measure_code is in result() but, nearly always equal to f_measure, not reported
}


def reported_keys(protocol: str = "paper") -> tuple[str, ...]:
    """The scalar result keys reported under `protocol` (see the module doc for their meaning)."""
    return _REPORTED[_check_protocol(protocol)]


def pr_curve(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """"paper": precision and recall [256] float64 at thresholds t = 0…255 (positive: level >= t)."""
    pred, gt = _check_pair(pred, gt)
    levels = np.rint(pred * 255).astype(np.intp)  # [H, W] in 0…255
    in_focus_hist = np.bincount(levels[gt], minlength=NUM_LEVELS)  # [256]
    blurred_hist = np.bincount(levels[~gt], minlength=NUM_LEVELS)  # [256]
    tp = _count_at_or_above(in_focus_hist)  # [256], true positives at threshold t
    fp = _count_at_or_above(blurred_hist)  # [256]
    return _ratio(tp, tp + fp), _ratio(tp, np.full(NUM_LEVELS, gt.sum()))


def adaptive_threshold(pred: np.ndarray) -> float:
    """"paper": min(1.5 · mean(pred), 1.0), the per-map threshold of section 4.2."""
    pred = _check_pred(pred)
    return float(min(ADAPTIVE_FACTOR * pred.mean(), 1.0))


def precision_recall_at(pred: np.ndarray, gt: np.ndarray, threshold: float) -> tuple[float, float]:
    """In-focus precision and recall of the map binarised at `threshold` (positive: pred >= threshold)."""
    pred, gt = _check_pair(pred, gt)
    return _precision_recall(pred >= threshold, gt)


def blurred_precision_recall(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """"ddff": precision and recall of BLURRED pixels, predicted blurred where pred < 0.5."""
    pred, gt = _check_pair(pred, gt)
    return _precision_recall(pred < DDFF_THRESHOLD, ~gt)


def f_measure(precision, recall, beta2: float = BETA2):
    """Eq. 8: (1 + ζ²)·P·R / (ζ²·P + R), 0 where P = R = 0. Scalars → float, arrays → array."""
    if not beta2 > 0:
        raise ValueError(f"beta2: must be > 0, got {beta2!r}")
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    f = _ratio((1 + beta2) * p * r, beta2 * p + r)
    return float(f) if f.ndim == 0 else f


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Eq. 9: mean absolute difference between the map and the binary ground truth (either protocol)."""
    pred, gt = _check_pair(pred, gt)
    return float(np.abs(pred - gt).mean())


class SetMetrics:
    """Accumulates per-image metrics over a test set under one protocol ("paper" or "ddff").

    `add(pred, gt)` scores one image and returns its own values; `result()` returns the set
    averages described in the module doc, with keys `reported_keys(protocol)` plus "images"
    (and, for "paper", the mean PR curve "pr_precision" / "pr_recall", 256 values each).
    """

    def __init__(self, protocol: str = "paper") -> None:
        self.protocol = _check_protocol(protocol)
        self.images = 0
        self._sums: dict[str, float] = {}  # per-image scalar values summed over images
        self._pr_precision = np.zeros(NUM_LEVELS)  # [256] sums of per-image curves ("paper")
        self._pr_recall = np.zeros(NUM_LEVELS)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Add one image; returns its precision, recall, f_measure and mae (+ f_measure_code for ddff)."""
        pred, gt = _check_pair(pred, gt)
        if self.protocol == "paper":
            precision, recall = precision_recall_at(pred, gt, adaptive_threshold(pred))
            curve_p, curve_r = pr_curve(pred, gt)
            self._pr_precision += curve_p
            self._pr_recall += curve_r
            values = {"precision": precision, "recall": recall, "f_measure": f_measure(precision, recall)}
        else:
            precision, recall = blurred_precision_recall(pred, gt)
            f = f_measure(precision, recall)
            # Threshold 0 of F_score1's sweep: every pixel predicted blurred.
            f_all_blurred = f_measure(*blurred_precision_recall(np.zeros_like(pred), gt))
            values = {"precision": precision, "recall": recall, "f_measure": f, "f_measure_code": max(f, f_all_blurred)}
        values["mae"] = mae(pred, gt)
        self.images += 1
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        return values

    def result(self) -> dict[str, float | int | list[float]]:
        """Set averages under the protocol (module doc): reported_keys(protocol) (ddff: and
        f_measure_code), images, and for "paper" the PR curve."""
        if self.images == 0:
            raise ValueError("SetMetrics.result: no images were added")
        n = self.images
        mean = {key: total / n for key, total in self._sums.items()}
        if self.protocol == "ddff":
            return mean | {"images": n}  # the reported keys and f_measure_code
        pr_precision, pr_recall = self._pr_precision / n, self._pr_recall / n
        return {
            "precision": mean["precision"],
            "recall": mean["recall"],
            "f_measure": f_measure(mean["precision"], mean["recall"]),  # eq. 8 of the mean P, R
            "f_measure_per_image": mean["f_measure"],
            "mae": mean["mae"],
            "f_max": float(np.max(f_measure(pr_precision, pr_recall))),
            "pr_precision": pr_precision.tolist(),
            "pr_recall": pr_recall.tolist(),
            "images": n,
        }


def _precision_recall(positive: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the bool prediction `positive` against the bool mask `truth`."""
    tp = np.count_nonzero(positive & truth)
    return float(_ratio(tp, np.count_nonzero(positive))), float(_ratio(tp, np.count_nonzero(truth)))


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _count_at_or_above(hist: np.ndarray) -> np.ndarray:
    """[256] counts of pixels with level >= t, from a per-level histogram."""
    return np.cumsum(hist[::-1])[::-1]


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator as float64, 0 where the denominator is 0."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _check_pred(pred: np.ndarray) -> np.ndarray:
    """`pred` as float64 [H, W]; ValueError unless 2-D, finite and within [0, 1]."""
    arr = np.asarray(pred)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"pred: expected a non-empty 2-D map [H, W], got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"pred: expected a float map in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"pred: values must be finite and within [0, 1], got min {arr.min()} max {arr.max()}")
    return arr


def _check_gt(gt: np.ndarray) -> np.ndarray:
    """`gt` as a bool mask (True = in focus) from bool, {0, 1} or {0, 255} values."""
    arr = np.asarray(gt)
    if arr.dtype == bool:
        return arr
    values = np.unique(arr)
    if np.isin(values, (0, 1)).all():
        return arr == 1
    if np.isin(values, (0, 255)).all():
        return arr == 255
    shown = values[:6].tolist() + (["…"] if len(values) > 6 else [])
    raise ValueError(f"gt: expected a binary mask (bool, {{0, 1}} or {{0, 255}}), got values {shown}")


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (pred float64 [H, W], gt bool [H, W]) with matching shapes."""
    pred_shape, gt_shape = np.shape(pred), np.shape(gt)
    if pred_shape != gt_shape:
        raise ValueError(f"pred and gt: shapes differ, pred {pred_shape} vs gt {gt_shape}")
    return _check_pred(pred), _check_gt(gt)
