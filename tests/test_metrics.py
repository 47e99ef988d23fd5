"""Evaluation criteria under the "paper" (section 4.2) and "ddff" protocols, checked by hand."""

import numpy as np
import pytest

from btbnet.metrics import (
    PROTOCOLS,
    SetMetrics,
    adaptive_threshold,
    blurred_precision_recall,
    f_measure,
    mae,
    pr_curve,
    precision_recall_at,
    reported_keys,
)

# Image A: grey levels 204, 51 / 128, 26; in focus everywhere except the top-right pixel.
PRED_A = np.array([[204, 51], [128, 26]]) / 255
GT_A = np.array([[1, 0], [1, 1]])
# Image B: confidently wrong; the only in-focus pixel is predicted blurred.
PRED_B = np.array([[255, 0], [0, 0]]) / 255
GT_B = np.array([[0, 255], [0, 0]], dtype=np.uint8)


@pytest.mark.parametrize(
    "t, precision, recall",
    [
        (0, 3 / 4, 1.0),  # every pixel positive
        (26, 3 / 4, 1.0),
        (27, 2 / 3, 2 / 3),  # level 26 drops out
        (52, 1.0, 2 / 3),  # the false positive (51) drops out
        (129, 1.0, 1 / 3),
        (204, 1.0, 1 / 3),
        (205, 0.0, 0.0),  # nothing predicted: 0 / 0 → 0
        (255, 0.0, 0.0),
    ],
)
def test_pr_curve_by_hand(t, precision, recall):
    p, r = pr_curve(PRED_A, GT_A)
    assert p.shape == r.shape == (256,) and p.dtype == r.dtype == np.float64
    assert p[t] == pytest.approx(precision) and r[t] == pytest.approx(recall)


def test_pr_curve_matches_thresholding_each_level():
    rng = np.random.default_rng(0)
    levels, gt = rng.integers(0, 256, (9, 11)), rng.random((9, 11)) > 0.6
    p, r = pr_curve(levels / 255, gt)
    for t in range(256):
        positive = levels >= t
        tp = (positive & gt).sum()
        assert p[t] == pytest.approx(tp / positive.sum() if positive.any() else 0.0)
        assert r[t] == pytest.approx(tp / gt.sum())
    assert (np.diff(r) <= 0).all()  # recall never grows with the threshold


def test_pr_curve_with_empty_ground_truth_is_zero():
    p, r = pr_curve(np.full((3, 3), 0.7), np.zeros((3, 3), dtype=bool))
    assert (p == 0).all() and (r == 0).all()


def test_adaptive_threshold_is_1_5_mean_clamped_to_1():
    assert adaptive_threshold(PRED_A) == pytest.approx(1.5 * 409 / 1020)
    assert adaptive_threshold(np.full((2, 2), 0.9)) == 1.0
    assert adaptive_threshold(np.zeros((2, 2))) == 0.0


def test_precision_recall_at_by_hand():
    assert precision_recall_at(PRED_A, GT_A, adaptive_threshold(PRED_A)) == pytest.approx((1.0, 1 / 3))
    assert precision_recall_at(PRED_A, GT_A, 0.11) == pytest.approx((2 / 3, 2 / 3))
    assert precision_recall_at(PRED_A, GT_A, 0.0) == pytest.approx((3 / 4, 1.0))  # threshold inclusive


def test_precision_recall_degenerate_cases():
    # Clamped threshold 1.0 and no pixel at 1.0: no predicted positive → precision 0.
    assert precision_recall_at(np.full((2, 2), 0.9), GT_A, 1.0) == (0.0, 0.0)
    # All-zero map: threshold 0 marks everything in focus → precision = in-focus share.
    zeros = np.zeros((2, 2))
    assert precision_recall_at(zeros, GT_A, adaptive_threshold(zeros)) == pytest.approx((3 / 4, 1.0))
    # Empty ground truth: recall 0.
    assert precision_recall_at(PRED_A, np.zeros((2, 2)), 0.5) == (0.0, 0.0)


def test_f_measure_eq8_by_hand():
    assert f_measure(1.0, 1 / 3) == pytest.approx(1.3 / 1.9)  # 1.3·(1/3) / (0.3 + 1/3)
    assert f_measure(0.5, 0.25) == pytest.approx(1.3 * 0.125 / (0.15 + 0.25))
    assert f_measure(0.0, 0.0) == 0.0
    assert f_measure(0.8, 0.8) == pytest.approx(0.8)
    assert f_measure(0.5, 0.25, beta2=1.0) == pytest.approx(1 / 3)  # the harmonic mean
    assert isinstance(f_measure(0.5, 0.5), float)


def test_f_measure_on_arrays():
    f = f_measure(np.array([1.0, 0.0, 0.5]), np.array([1 / 3, 0.0, 0.25]))
    assert isinstance(f, np.ndarray)
    np.testing.assert_allclose(f, [1.3 / 1.9, 0.0, 1.3 * 0.125 / 0.4])


def test_f_measure_rejects_bad_beta2():
    with pytest.raises(ValueError, match="beta2"):
        f_measure(0.5, 0.5, beta2=0)


def test_mae_eq9_by_hand():
    assert mae(PRED_A, GT_A) == pytest.approx((51 + 51 + 127 + 229) / 255 / 4)
    assert mae(PRED_B, GT_B) == pytest.approx(0.5)
    assert mae(np.array([[0.25, 0.75]]), np.array([[True, False]])) == pytest.approx(0.75)


def test_ground_truth_encodings_are_equivalent():
    pred = np.array([[0.9, 0.1], [0.4, 0.6]])
    as_bool = np.array([[True, False], [False, True]])
    for gt in (as_bool, as_bool.astype(int), as_bool.astype(np.uint8) * 255):
        assert mae(pred, gt) == pytest.approx(0.25)
        np.testing.assert_array_equal(pr_curve(pred, gt)[0], pr_curve(pred, as_bool)[0])


def test_set_metrics_averages_two_images_by_hand():
    metrics = SetMetrics()
    first = metrics.add(PRED_A, GT_A)
    assert first == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f_measure": 1.3 / 1.9, "mae": 458 / 1020})
    second = metrics.add(PRED_B, GT_B)  # threshold 0.375: one false positive → P = R = 0
    assert second == pytest.approx({"precision": 0.0, "recall": 0.0, "f_measure": 0.0, "mae": 0.5})
    result = metrics.result()
    assert result["images"] == 2
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(1 / 6)
    # eq. 8 on the mean precision and recall, not the mean of per-image F (which is 0.342…/2).
    assert result["f_measure"] == pytest.approx(1.3 * 0.5 / 6 / (0.15 + 1 / 6))
    assert result["f_measure_per_image"] == pytest.approx((1.3 / 1.9 + 0.0) / 2)
    assert result["mae"] == pytest.approx((458 / 1020 + 0.5) / 2)
    p, r = np.array(result["pr_precision"]), np.array(result["pr_recall"])
    assert len(p) == len(r) == 256
    # Per threshold: A's curve (test_pr_curve_by_hand) averaged with B's (1/4, 1) at t = 0, else (0, 0).
    np.testing.assert_allclose(p[[0, 1, 27, 52, 129, 205]], [0.5, 0.375, 1 / 3, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(r[[0, 1, 27, 52, 129, 205]], [1.0, 0.5, 1 / 3, 1 / 3, 1 / 6, 0.0])
    # F on the mean curve peaks at t = 0: 1.3·0.5·1 / (0.15 + 1) = 13 / 23.
    assert result["f_max"] == pytest.approx(13 / 23)


def test_perfect_prediction_scores_one():
    gt = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.uint8)
    metrics = SetMetrics()
    metrics.add(gt.astype(np.float64), gt)
    result = metrics.result()
    assert result["f_measure"] == pytest.approx(1.0)
    assert result["f_max"] == pytest.approx(1.0)
    assert result["precision"] == result["recall"] == 1.0
    assert result["mae"] == 0.0


def test_result_values_are_plain_python():
    metrics = SetMetrics()
    metrics.add(PRED_A, GT_A)
    result = metrics.result()
    assert all(type(result[k]) is float for k in reported_keys("paper"))
    assert type(result["images"]) is int and type(result["pr_precision"][0]) is float
    ddff = SetMetrics("ddff")
    ddff.add(PRED_A, GT_A)
    result = ddff.result()
    assert set(result) == set(reported_keys("ddff")) | {"f_measure_code", "images"}
    assert all(type(result[k]) is float for k in reported_keys("ddff")) and type(result["images"]) is int


def test_empty_set_raises():
    with pytest.raises(ValueError, match="no images"):
        SetMetrics().result()


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(2, 2\) vs gt \(3, 2\)"):
        mae(PRED_A, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        SetMetrics().add(PRED_A, np.zeros((2, 3)))


@pytest.mark.parametrize(
    "pred, message",
    [
        (np.array([[0.5, 1.2], [0.0, 0.1]]), "within"),
        (np.array([[0.5, np.nan], [0.0, 0.1]]), "finite"),
        (np.zeros((2, 2, 1)), "2-D"),
        (np.zeros((2, 2), dtype=bool), "dtype"),
    ],
)
def test_bad_pred_raises(pred, message):
    with pytest.raises(ValueError, match=f"pred: .*{message}"):
        pr_curve(pred, np.zeros(pred.shape))


def test_non_binary_gt_raises():
    with pytest.raises(ValueError, match="gt: expected a binary mask"):
        mae(PRED_A, np.array([[0, 128], [255, 0]]))


# ---------------------------------------------------------------- protocols


def test_protocols_and_their_reported_keys():
    assert SetMetrics().protocol == "paper" and {SetMetrics(protocol=p).protocol for p in PROTOCOLS} == {"paper", "ddff"}
    assert reported_keys() == reported_keys("paper")
    assert {"f_measure", "f_measure_per_image", "precision", "recall", "mae", "f_max"} <= set(reported_keys("paper"))
    assert {"f_measure", "precision", "recall", "mae"} == set(reported_keys("ddff"))  # f_measure_code: in result(), not reported
    with pytest.raises(ValueError, match="protocol"):
        SetMetrics("sod")
    with pytest.raises(ValueError, match="protocol"):
        reported_keys("Paper")


def test_blurred_precision_recall_by_hand():
    # A: predicted blurred where pred < 0.5, i.e. 51/255 and 26/255; only 51/255 is blurred.
    assert blurred_precision_recall(PRED_A, GT_A) == pytest.approx((1 / 2, 1.0))
    # B: three pixels predicted blurred, two of the three blurred ones among them.
    assert blurred_precision_recall(PRED_B, GT_B) == pytest.approx((2 / 3, 2 / 3))


def test_ddff_threshold_is_half_with_half_counted_in_focus():
    # Both pixels are blurred; 0.5 counts as in focus (D-DFFNet: y_pred >= 0.5 → 1), 0.49 as blurred.
    pred, gt = np.array([[0.5, 0.49]]), np.array([[0, 0]])
    assert blurred_precision_recall(pred, gt) == (1.0, 0.5)
    metrics = SetMetrics("ddff")
    assert metrics.add(pred, gt)["f_measure"] == pytest.approx(1.3 * 0.5 / (0.3 + 0.5))  # 0.8125


def test_ddff_set_averages_per_image_f_by_hand():
    metrics = SetMetrics("ddff")
    first = metrics.add(PRED_A, GT_A)
    # P = 1/2, R = 1 → F = 0.65 / 1.15; all-blurred: P = 1/4, R = 1 → F = 0.325 / 1.075, smaller.
    assert first == pytest.approx({"precision": 0.5, "recall": 1.0, "f_measure": 13 / 23, "f_measure_code": 13 / 23, "mae": 458 / 1020})
    second = metrics.add(PRED_B, GT_B)
    # P = R = 2/3 → F = 2/3; all-blurred (P = 3/4, R = 1) gives 0.975 / 1.225 = 39/49, larger.
    assert second == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f_measure": 2 / 3, "f_measure_code": 39 / 49, "mae": 0.5})
    result = metrics.result()
    assert result["images"] == 2
    assert result["f_measure"] == pytest.approx((13 / 23 + 2 / 3) / 2)  # mean of per-image F
    assert result["precision"] == pytest.approx(7 / 12) and result["recall"] == pytest.approx(5 / 6)
    assert result["f_measure_code"] == pytest.approx((13 / 23 + 39 / 49) / 2)
    assert result["mae"] == pytest.approx((458 / 1020 + 0.5) / 2)  # same as under "paper"


# 2 × 3 ground truth: two in-focus pixels (top left), four blurred ones.
GT_POLARITY = np.array([[1, 1, 0], [0, 0, 0]], dtype=np.uint8)


@pytest.mark.parametrize(
    "name, pred, paper_f, paper_f_max, ddff_f, ddff_f_code, error",
    [
        # Perfect: in focus exactly on the in-focus pixels. Paper threshold 1.5 · 1/3 = 0.5.
        ("perfect", GT_POLARITY.astype(float), 1.0, 1.0, 1.0, 1.0, 0.0),
        # Inverted: paper threshold clamps to 1 → the 4 blurred pixels positive, TP = 0. Max-F at
        # t = 0 (all positive, P = 1/3, R = 1): 1.3/3 / 1.1 = 13/33. ddff: the 2 in-focus pixels
        # are predicted blurred, TP = 0; all-blurred (P = 2/3, R = 1): 2.6/3 / 1.2 = 13/18.
        ("inverted", 1.0 - GT_POLARITY, 0.0, 13 / 33, 0.0, 13 / 18, 1.0),
        # All ones: paper marks all in focus (P = 1/3, R = 1); ddff predicts nothing blurred.
        ("all ones", np.ones((2, 3)), 13 / 33, 13 / 33, 0.0, 13 / 18, 4 / 6),
        # All zeros: paper threshold 0 again marks all in focus; ddff predicts all blurred, and
        # scores the blurred positives: P = 4/6, R = 1.
        ("all zeros", np.zeros((2, 3)), 13 / 33, 13 / 33, 13 / 18, 13 / 18, 2 / 6),
    ],
)
def test_polarity_of_both_protocols(name, pred, paper_f, paper_f_max, ddff_f, ddff_f_code, error):
    paper, ddff = SetMetrics("paper"), SetMetrics("ddff")
    paper.add(pred, GT_POLARITY)
    ddff.add(pred, GT_POLARITY)
    p, d = paper.result(), ddff.result()
    assert p["f_measure"] == pytest.approx(paper_f)
    assert p["f_measure_per_image"] == pytest.approx(paper_f)  # one image: both averages agree
    assert p["f_max"] == pytest.approx(paper_f_max)
    assert d["f_measure"] == pytest.approx(ddff_f)
    assert d["f_measure_code"] == pytest.approx(ddff_f_code)
    assert p["mae"] == pytest.approx(error) and d["mae"] == pytest.approx(error)
