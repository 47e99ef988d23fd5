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


# --- beyond the paper: the soft IoU region term and deep supervision ---------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_iou_loss(logits: list[list[float]], eps: float = 1.0) -> float:
    """1 − (Σ p·g + eps) / (Σ (p + g − p·g) + eps) over the one 2×2 image, written out."""
    pairs = [(sigmoid(m), g) for row_m, row_g in zip(logits, TARGET) for m, g in zip(row_m, row_g)]
    inter = sum(p * g for p, g in pairs)
    union = sum(p + g - p * g for p, g in pairs)
    return 1 - (inter + eps) / (union + eps)


REFINED = [[2.0, -1.0], [-2.0, 1.0]]


def test_iou_term_adds_lambda_times_the_soft_iou_loss_to_every_map():
    terms = loss_terms(tiny_prediction(), as_map(TARGET), iou_weight=0.5)
    assert set(terms) == {"main", "aux_0", "aux_1", "total"}
    for name, logits in [("main", FINAL), ("aux_0", STREAM_A), ("aux_1", STREAM_B)]:
        assert terms[name].item() == pytest.approx(hand_mean(logits) + 0.5 * hand_iou_loss(logits))
    assert terms["total"].item() == pytest.approx(sum(terms[k].item() for k in ("main", "aux_0", "aux_1")))


def test_soft_iou_loss_bounds_and_the_all_blurred_image():
    from btbnet.losses import soft_iou_loss

    target = as_map([[1.0, 1.0], [0.0, 0.0]])
    perfect = as_map([[30.0, 30.0], [-30.0, -30.0]])
    assert soft_iou_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-9)
    assert soft_iou_loss(-perfect, target).item() == pytest.approx(1 - 1 / 5, abs=1e-9)  # no overlap: only eps left
    blurred = torch.zeros_like(target)  # no in-focus pixel at all: a map of zeros is right, loss 0
    assert soft_iou_loss(as_map([[-30.0, -30.0], [-30.0, -30.0]]), blurred).item() == pytest.approx(0.0, abs=1e-9)
    two = torch.cat([perfect, -perfect])  # per image, then the batch mean
    assert soft_iou_loss(two, torch.cat([target, target])).item() == pytest.approx(0.4, abs=1e-9)


def test_deep_supervision_adds_a_term_per_refinement_and_only_when_asked():
    prediction = tiny_prediction()._replace(refinements=[as_map(REFINED), as_map(STREAM_B)])
    plain = loss_terms(prediction, as_map(TARGET))
    assert "refine_0" not in plain  # eq. 7 as the paper has it
    deep = loss_terms(prediction, as_map(TARGET), deep_supervision=True, aux_weight=0.5)
    assert deep["refine_0"].item() == pytest.approx(hand_mean(REFINED))
    assert deep["refine_1"].item() == pytest.approx(hand_mean(STREAM_B))
    expected = hand_mean(FINAL) + 0.5 * (hand_mean(STREAM_A) + hand_mean(STREAM_B)) + hand_mean(REFINED) + hand_mean(STREAM_B)
    assert deep["total"].item() == pytest.approx(expected)


def test_deep_supervision_reaches_every_rrnet_step_of_the_model():
    """The model's refinements are FNet's map and each RRNet step before the last; with deep
    supervision each one's term sends a gradient into FNet directly."""
    from btbnet import BTBNetConfig, build_model

    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0,), rrnet_steps=3))
    image, target = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    out = model(image)
    assert len(out.refinements) == 3
    with torch.no_grad():
        fused = model.fnet(out.streams, (image - model.mean) / model.std)
    torch.testing.assert_close(out.refinements[0], fused)
    terms = loss_terms(out, target, deep_supervision=True, iou_weight=1.0)
    assert [k for k in terms if k.startswith("refine_")] == ["refine_0", "refine_1", "refine_2"]
    grad = torch.autograd.grad(terms["refine_0"], model.fnet.convs[-1].weight)[0]
    assert grad.abs().sum() > 0  # the unrolled path ends at FNet's output: its own term reaches it
