"""Loss of eq. 6–7: values against a hand formula, α weighting, reductions, gradients."""

import math

import pytest
import torch

from btbnet import Prediction
from btbnet.losses import loss_terms


def loss_total(*args, **kwargs) -> torch.Tensor:
    return loss_terms(*args, **kwargs)["total"]


def bce(logit: float, g: float) -> float:
    """Eq. 6 for one pixel, written out with p = 1 / (1 + e^-M)."""
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(g * math.log(p) + (1 - g) * math.log(1 - p))


FINAL = [[0.0, 2.0], [-1.0, 3.0]]
STREAM_A = [[1.0, -2.0], [0.5, 0.0]]
STREAM_B = [[-3.0, 1.5], [2.0, -0.5]]
TARGET = [[1.0, 0.0], [0.0, 1.0]]


def as_map(values: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 2, 2).requires_grad_(requires_grad)


def hand_mean(logits: list[list[float]]) -> float:
    pairs = [(m, g) for row_m, row_g in zip(logits, TARGET) for m, g in zip(row_m, row_g)]
    return sum(bce(m, g) for m, g in pairs) / len(pairs)


def tiny_prediction(requires_grad: bool = False) -> Prediction:
    return Prediction(
        final=as_map(FINAL, requires_grad),
        streams=[as_map(STREAM_A, requires_grad), as_map(STREAM_B, requires_grad)],
    )


def test_terms_equal_the_hand_formula():
    terms = loss_terms(tiny_prediction(), as_map(TARGET))
    assert set(terms) == {"main", "aux_0", "aux_1", "total"}
    assert terms["main"].item() == pytest.approx(hand_mean(FINAL))
    assert terms["aux_0"].item() == pytest.approx(hand_mean(STREAM_A))
    assert terms["aux_1"].item() == pytest.approx(hand_mean(STREAM_B))
    expected = hand_mean(FINAL) + hand_mean(STREAM_A) + hand_mean(STREAM_B)  # eq. 7 with α = 1
    assert terms["total"].item() == pytest.approx(expected)
    assert loss_total(tiny_prediction(), as_map(TARGET)).item() == pytest.approx(expected)


def test_aux_weight_scales_the_auxiliary_terms():
    main, a, b = hand_mean(FINAL), hand_mean(STREAM_A), hand_mean(STREAM_B)
    target = as_map(TARGET)
    assert loss_total(tiny_prediction(), target, aux_weight=0.0).item() == pytest.approx(main)
    assert loss_total(tiny_prediction(), target, aux_weight=0.5).item() == pytest.approx(main + 0.5 * (a + b))
    per_stream = loss_total(tiny_prediction(), target, aux_weight=[2.0, 0.25])
    assert per_stream.item() == pytest.approx(main + 2.0 * a + 0.25 * b)
    # the logged aux terms stay unweighted
    assert loss_terms(tiny_prediction(), target, aux_weight=3.0)["aux_0"].item() == pytest.approx(a)


def test_aux_weight_sequence_needs_one_weight_per_stream():
    with pytest.raises(ValueError, match="aux_weight"):
        loss_total(tiny_prediction(), as_map(TARGET), aux_weight=[1.0, 1.0, 1.0])


def test_sum_reduction_sums_pixels_and_averages_the_batch():
    torch.manual_seed(0)
    b, h, w = 3, 5, 7
    pred = Prediction(final=torch.randn(b, 1, h, w), streams=[torch.randn(b, 1, h, w)])
    target = (torch.rand(b, 1, h, w) > 0.5).float()
    mean = loss_terms(pred, target, reduction="mean")
    total = loss_terms(pred, target, reduction="sum")
    for key in mean:
        assert total[key].item() == pytest.approx(mean[key].item() * h * w, rel=1e-5)
    # Caffe semantics: the sum is per image, so the batch size does not scale it
    one = loss_total(Prediction(pred.final[:1], [pred.streams[0][:1]]), target[:1], reduction="sum")
    dup = loss_total(Prediction(pred.final[:1].repeat(4, 1, 1, 1), [pred.streams[0][:1].repeat(4, 1, 1, 1)]),
                      target[:1].repeat(4, 1, 1, 1), reduction="sum")
    assert dup.item() == pytest.approx(one.item(), rel=1e-6)


def test_gradients_are_finite_even_for_saturated_logits():
    pred = Prediction(
        final=torch.tensor([[[[200.0, -200.0]]]], requires_grad=True),
        streams=[torch.tensor([[[[150.0, -150.0]]]], requires_grad=True)],
    )
    target = torch.tensor([[[[0.0, 1.0]]]])  # maximally wrong: log(sigmoid) would overflow
    loss = loss_total(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (pred.final, *pred.streams):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # d(mean BCE)/d logit = (sigmoid(M) - G) / pixels: here ±1 / 2
    assert pred.final.grad.flatten().tolist() == pytest.approx([0.5, -0.5])


def test_bad_reduction_and_shape_are_rejected():
    with pytest.raises(ValueError, match="reduction"):
        loss_total(tiny_prediction(), as_map(TARGET), reduction="max")
    with pytest.raises(ValueError, match="target"):
        loss_total(tiny_prediction(), torch.zeros(1, 1, 3, 3))


def test_integer_masks_are_accepted():
    target = as_map(TARGET).to(torch.uint8)
    assert loss_total(tiny_prediction(), target).item() == pytest.approx(
        loss_total(tiny_prediction(), as_map(TARGET)).item()
    )
