"""Evaluation criteria of section 4.2: PR curve, adaptive precision / recall / F-measure, MAE.

Inputs: `pred`, a DBD map [H, W] of floats in [0, 1] (1 = in focus), and `gt`, a binary mask
[H, W] given as bool, {0, 1} or {0, 255} (in focus = True / 1 / 255).

Conventions (those of common saliency / DBD benchmark code, e.g. PySODMetrics):
  - Positives are in-focus pixels.
  - precision = TP / (TP + FP) and recall = TP / (TP + FN), with 0 / 0 → 0: no predicted
    positive gives precision 0, an all-blurred ground truth gives recall 0.
  - F-measure (eq. 8) with ζ² = 0.3 is 0 when precision and recall are both 0.
  - PR curve: the map is quantised to levels round(pred · 255) (`binarize_levels`, round half
    to even) and binarised at every integer threshold t = 0…255, positive where level >= t.
    At t = 0 every pixel is positive.
  - Adaptive threshold: min(1.5 · mean(pred), 1.0), positive where pred >= threshold; the clamp
    keeps at least the pixels at 1.0 positive when the mean exceeds 2/3.

Averaging over a set (`SetMetrics`): every metric is computed per image, then averaged over
the images. `f_measure` is eq. 8 applied to the set's mean adaptive precision and mean
adaptive recall (not the mean of per-image F values). The PR curve is the per-threshold mean of
the per-image precision and recall curves, and `f_max` is the maximum over the 256 thresholds
of eq. 8 applied to that mean curve.
"""

from __future__ import annotations

import numpy as np

NUM_LEVELS = 256  # integer thresholds 0…255
BETA2 = 0.3  # ζ² of eq. 8
ADAPTIVE_FACTOR = 1.5  # threshold = 1.5 × mean of the DBD map


def binarize_levels(pred: np.ndarray) -> np.ndarray:
    """The map's grey levels round(pred · 255), [H, W] uint8 (round half to even)."""
    pred = _check_pred(pred)
    return np.rint(pred * 255).astype(np.uint8)


def pr_curve(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall [256] float64 at thresholds t = 0…255 (positive: level >= t)."""
    pred, gt = _check_pair(pred, gt)
    levels = np.rint(pred * 255).astype(np.intp)  # [H, W] in 0…255
    in_focus_hist = np.bincount(levels[gt], minlength=NUM_LEVELS)  # [256]
    blurred_hist = np.bincount(levels[~gt], minlength=NUM_LEVELS)  # [256]
    tp = _count_at_or_above(in_focus_hist)  # [256], true positives at threshold t
    fp = _count_at_or_above(blurred_hist)  # [256]
    return _ratio(tp, tp + fp), _ratio(tp, np.full(NUM_LEVELS, gt.sum()))


def adaptive_threshold(pred: np.ndarray) -> float:
    """min(1.5 · mean(pred), 1.0), the per-map threshold of section 4.2."""
    pred = _check_pred(pred)
    return float(min(ADAPTIVE_FACTOR * pred.mean(), 1.0))


def precision_recall_at(pred: np.ndarray, gt: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall of the map binarised at `threshold` (positive: pred >= threshold)."""
    pred, gt = _check_pair(pred, gt)
    positive = pred >= threshold
    tp = np.count_nonzero(positive & gt)
    return float(_ratio(tp, np.count_nonzero(positive))), float(_ratio(tp, np.count_nonzero(gt)))


def f_measure(precision, recall, beta2: float = BETA2):
    """Eq. 8: (1 + ζ²)·P·R / (ζ²·P + R), 0 where P = R = 0. Scalars → float, arrays → array."""
    if not beta2 > 0:
        raise ValueError(f"beta2: must be > 0, got {beta2!r}")
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    f = _ratio((1 + beta2) * p * r, beta2 * p + r)
    return float(f) if f.ndim == 0 else f


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Eq. 9: mean absolute difference between the map and the binary ground truth."""
    pred, gt = _check_pair(pred, gt)
    return float(np.abs(pred - gt).mean())


class SetMetrics:
    """Accumulates per-image metrics over a test set; `result()` averages them (see module doc)."""

    def __init__(self) -> None:
        self.images = 0
        self._precision = 0.0  # sums over images of the adaptive-threshold values
        self._recall = 0.0
        self._mae = 0.0
        self._pr_precision = np.zeros(NUM_LEVELS)  # [256] sums of per-image curves
        self._pr_recall = np.zeros(NUM_LEVELS)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Add one image; returns its own adaptive precision, recall, F-measure and MAE."""
        pred, gt = _check_pair(pred, gt)
        precision, recall = precision_recall_at(pred, gt, adaptive_threshold(pred))
        curve_p, curve_r = pr_curve(pred, gt)
        error = mae(pred, gt)
        self.images += 1
        self._precision += precision
        self._recall += recall
        self._mae += error
        self._pr_precision += curve_p
        self._pr_recall += curve_r
        return {"precision": precision, "recall": recall, "f_measure": f_measure(precision, recall), "mae": error}

    def result(self) -> dict[str, float | int | list[float]]:
        """Set averages: precision, recall, f_measure, mae, f_max, pr_precision, pr_recall, images."""
        if self.images == 0:
            raise ValueError("SetMetrics.result: no images were added")
        n = self.images
        precision, recall = self._precision / n, self._recall / n
        pr_precision, pr_recall = self._pr_precision / n, self._pr_recall / n
        return {
            "precision": precision,
            "recall": recall,
            "f_measure": f_measure(precision, recall),
            "mae": self._mae / n,
            "f_max": float(np.max(f_measure(pr_precision, pr_recall))),
            "pr_precision": pr_precision.tolist(),
            "pr_recall": pr_recall.tolist(),
            "images": n,
        }


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
