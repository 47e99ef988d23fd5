"""Scoring predictors on a test set (btbnet.evaluation) and the test sets of the stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btbnet.baselines import all_blurred, all_in_focus
from btbnet.data import DataError
from btbnet.evaluation import TestSet as EvalSet  # a `Test…` name would be collected by pytest
from btbnet.evaluation import comparison_table, evaluate


def write_set(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """A test set of grey images with the given masks (255 = blurred, Shi's convention)."""
    for sub in ("image", "gt"):
        (root / sub).mkdir(parents=True)
    for stem, mask in masks.items():
        Image.fromarray(np.full((*mask.shape, 3), 128, np.uint8)).save(root / "image" / f"{stem}.png")
        Image.fromarray(mask).save(root / "gt" / f"{stem}.png")
    return root


@pytest.fixture
def test_set(tmp_path: Path) -> Path:
    left_blurred = np.zeros((4, 4), np.uint8)
    left_blurred[:, :2] = 255  # half blurred
    one_quarter = np.zeros((4, 4), np.uint8)
    one_quarter[:1] = 255  # a quarter blurred
    return write_set(tmp_path / "set", {"a": left_blurred, "b": one_quarter})


def test_every_predictor_sees_the_same_pairs_under_both_protocols(test_set):
    ev = evaluate({"ones": all_in_focus, "zeros": all_blurred}, test_set, "blurred", examples=1, progress=False)
    ones, zeros = ev.results["ones"], ev.results["zeros"]
    assert ones["paper"]["images"] == zeros["ddff"]["images"] == 2
    assert ones["paper"]["mae"] == pytest.approx((0.5 + 0.25) / 2)  # the blurred fractions
    assert zeros["paper"]["mae"] == pytest.approx((0.5 + 0.75) / 2)  # the in-focus fractions
    assert ones["ddff"]["f_measure"] == 0.0  # predicts no blurred pixel
    assert zeros["ddff"]["recall"] == 1.0
    assert len(ev.examples) == 1 and ev.examples[0][1].dtype == np.uint8


def test_stems_restrict_the_set_and_unknown_stems_are_named(test_set):
    ev = evaluate({"ones": all_in_focus}, test_set, "blurred", stems=["b"], progress=False)
    assert ev.results["ones"]["paper"]["images"] == 1
    assert ev.results["ones"]["paper"]["mae"] == pytest.approx(0.25)
    with pytest.raises(DataError, match="listed stem 'c' has no pair"):
        evaluate({"ones": all_in_focus}, test_set, "blurred", stems=["b", "c"], progress=False)


def test_a_map_of_the_wrong_size_is_named(test_set):
    with pytest.raises(ValueError, match=r"^small: map of .*a\.png is \(2, 2\)"):
        evaluate({"small": lambda image: np.ones((2, 2))}, test_set, "blurred", progress=False)


def test_comparison_table_rows_methods_columns_sets_and_protocols():
    results = {
        "BTBNet": {"shi": {"paper": {"f_measure": 0.8671, "f_measure_per_image": 0.85, "mae": 0.107}, "ddff": {"f_measure": 0.9}}},
        "LBP": {"shi": {"paper": {"f_measure": 0.787, "f_measure_per_image": 0.75, "mae": 0.136}, "ddff": {"f_measure": 0.8}},
                "dut": {"paper": {"f_measure": 0.719, "f_measure_per_image": 0.7, "mae": 0.193}, "ddff": {"f_measure": 0.7}}},
    }  # fmt: skip
    lines = comparison_table(results).splitlines()
    assert lines[0] == "| method | shi F | shi F/img | shi MAE | shi F ddff | dut F | dut F/img | dut MAE | dut F ddff |"
    assert lines[2] == "| BTBNet | 0.867 | 0.850 | 0.107 | 0.900 |  |  |  |  |"
    assert lines[3] == "| LBP | 0.787 | 0.750 | 0.136 | 0.800 | 0.719 | 0.700 | 0.193 | 0.700 |"


def test_optional_test_sets_that_are_absent_are_skipped(tmp_path, test_set, capsys, monkeypatch):
    from pipeline.runtime import testsets

    monkeypatch.setattr(testsets, "resolve", lambda p: tmp_path / p)
    sets = testsets.TestSets(
        data_root=".",
        test_sets=(EvalSet("here", "set"), EvalSet("dut", "dut", polarity="in_focus", optional=True)),
    )
    assert [t.name for t, _, _ in sets.present()] == ["here"]
    assert "test set dut: " in capsys.readouterr().out
    required = testsets.TestSets(data_root=".", test_sets=(EvalSet("dut", "dut"),))
    with pytest.raises(DataError, match="test set 'dut' not found"):
        required.present()
