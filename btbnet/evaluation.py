"""Scoring detectors on a test set with the criteria of section 4.2 (`btbnet.metrics`).

A *predictor* maps an RGB image (uint8 [H, W, 3]) to its focus map at the same size: uint8
with 255 = in focus (what `btbnet.predict.predict_map` returns), or float in [0, 1] with 1 =
in focus. `evaluate` reads each pair of a test set once and scores every predictor on it, so
a model and the baselines it is compared with see exactly the same images and masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import check_polarity, find_pairs, load_pair
from .metrics import PROTOCOLS, SetMetrics

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TestSet:
    """A test set: `folder` holds image/ and gt/ matched by stem; `polarity` says what white
    means in its masks ("blurred": Shi's set; "in_focus": DUT's original release)."""

    name: str
    folder: str
    polarity: str = "blurred"

    def __post_init__(self) -> None:
        check_polarity(self.polarity)


@dataclass
class Evaluation:
    """What `evaluate` returns: `results[predictor][protocol]`, the set's averages under each
    protocol of `btbnet.metrics` (`SetMetrics.result()`), and up to `examples` rows of
    [image, ground-truth mask, map of the first predictor]."""

    results: dict[str, dict[str, dict]] = field(default_factory=dict)
    examples: list[list[np.ndarray]] = field(default_factory=list)


def as_probability(focus_map: np.ndarray) -> np.ndarray:
    """A predictor's map as float64 in [0, 1]: uint8 maps are divided by 255."""
    return focus_map.astype(np.float64) / 255.0 if focus_map.dtype == np.uint8 else focus_map.astype(np.float64)


def evaluate(
    predictors: Mapping[str, Predictor],
    folder: str | Path,
    polarity: str,
    examples: int = 0,
    desc: str = "evaluate",
    progress: bool = True,
) -> Evaluation:
    """Score every predictor under every protocol on the pairs of `folder` (image/ + gt/,
    masks read with `polarity`), at each image's native resolution."""
    if not predictors:
        raise ValueError("predictors: none given")
    pairs = find_pairs(folder)
    metrics = {name: {p: SetMetrics(p) for p in PROTOCOLS} for name in predictors}
    out = Evaluation()
    for image_path, mask_path in tqdm(pairs, desc=desc, unit="image", disable=not progress):
        image, mask = load_pair(image_path, mask_path, polarity)  # mask: 255 = in focus
        for i, (name, predict) in enumerate(predictors.items()):
            focus = predict(image)
            if focus.shape != mask.shape:
                raise ValueError(f"{name}: map of {image_path} is {focus.shape}, the image {mask.shape}")
            for m in metrics[name].values():
                m.add(as_probability(focus), mask)
            if i == 0 and len(out.examples) < examples:
                out.examples.append([image, mask, focus])
    out.results = {name: {p: m.result() for p, m in by_protocol.items()} for name, by_protocol in metrics.items()}
    return out
