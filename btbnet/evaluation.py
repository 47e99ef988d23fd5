"""Scoring detectors on a test set with the criteria of section 4.2 (`btbnet.metrics`).

A *predictor* maps an RGB image (uint8 [H, W, 3]) to its focus map at the same size: uint8
with 255 = in focus (what `btbnet.predict.predict_map` returns), or float in [0, 1] with 1 =
in focus. `evaluate` reads each pair of a test set once and scores every predictor on it, so
a model and the baselines it is compared with see exactly the same images and masks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import Polarity, find_pairs, load_pair, pairs_by_stem
from .metrics import PROTOCOLS, SetMetrics

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TestSet:
    """A test set: `folder` holds image/ and gt/ matched by stem; `polarity` says what white
    means in its masks ("blurred": Shi's set; "in_focus": DUT's original release); `stems`, a
    file listing the stems that form the set (None: every pair; e.g. a validation split held
    out of a training folder); `optional`: a set whose folder is absent is skipped, not an error."""

    name: str
    folder: str
    polarity: Polarity = Polarity.BLURRED
    stems: str | None = None
    optional: bool = False


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
    polarity: Polarity | str,
    examples: int = 0,
    desc: str = "evaluate",
    progress: bool = True,
    stems: Collection[str] | None = None,
) -> Evaluation:
    """Score every predictor under every protocol on the pairs of `folder` (image/ + gt/,
    masks read with `polarity`; only those whose stem is in `stems`, if given), at each
    image's native resolution."""
    if not predictors:
        raise ValueError("predictors: none given")
    pairs = find_pairs(folder) if stems is None else pairs_by_stem(find_pairs(folder), stems, folder, keep=True)
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


# Table 1's columns per test set: (protocol, key, header).
TABLE_COLUMNS = (
    ("paper", "f_measure", "F"),
    ("paper", "f_measure_per_image", "F/img"),
    ("paper", "mae", "MAE"),
    ("ddff", "f_measure", "F ddff"),
)


def comparison_table(results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> str:
    """The paper's Table 1 as markdown: a row per method, per test set the columns of
    TABLE_COLUMNS. `results[method][test_set][protocol][key]`; sets a method lacks stay empty.

    "F" is eq. 8 on the set's mean precision and recall (section 4.2), "F/img" the mean of
    per-image F, "F ddff" the per-image F of blurred pixels at threshold 0.5; MAE is eq. 9.
    """
    sets = list(dict.fromkeys(s for by_set in results.values() for s in by_set))
    header = ["method"] + [f"{s} {h}" for s in sets for _, _, h in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, by_set in results.items():
        cells = [method]
        for s in sets:
            for protocol, key, _ in TABLE_COLUMNS:
                value = by_set.get(s, {}).get(protocol, {}).get(key)
                cells.append("" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
