"""Training objective: pixel-wise sigmoid cross-entropy with auxiliary stream losses.

Section 3.3: the main loss (eq. 6) compares the final map M_final with the ground truth G;
an auxiliary loss of the same form is applied to every stream's map Mⁿ, and eq. 7 adds
them with trade-off weights αₙ (1 in the paper):

    L_final = L_main + Σₙ αₙ · Lⁿ_aux

Every map is a logit map, so each term is `binary_cross_entropy_with_logits` (numerically
stable: it never takes log(sigmoid(x)) of a saturated sigmoid).

Beyond the paper (both off by default, so the loss is eq. 7 exactly):
    region term   each map's term adds λ × the soft IoU loss of its in-focus region,
                  1 − Σ p·g / Σ (p + g − p·g) per image (Rahman & Wang 2016; BASNet's region
                  term), which rewards whole, calibrated regions where BCE weighs pixels alone.
    deep supervision  FNet's map M̂ᶠ and every RRNet step before the last get the main term
                  too (`Prediction.refinements`), so each recurrent step learns to improve
                  on a map that is already supervised (section 3.2's "correcting its mistakes").

Reductions:
    "mean"  mean over pixels and batch: the loss does not grow with the image size. This is
            Caffe's SigmoidCrossEntropyLoss with its default normalisation (VALID: divided
            by the number of pixels), the framework the paper used.
    "sum"   eq. 6 read literally per image: sum over the pixels of each image, mean over the
            batch (Caffe's normalisation BATCH_SIZE); "sum" = "mean" × H × W.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .model import Prediction

REDUCTIONS = ("mean", "sum")


def aux_weights(aux_weight: float | Sequence[float], num_streams: int) -> list[float]:
    """One αₙ per stream (eq. 7): a single number is shared, a sequence must have N entries."""
    if isinstance(aux_weight, (int, float)):
        return [float(aux_weight)] * num_streams
    weights = [float(a) for a in aux_weight]
    if len(weights) != num_streams:
        raise ValueError(
            f"aux_weight: expected one weight per stream ({num_streams}), got {len(weights)}: {weights}"
        )
    return weights


def pixel_bce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 6 for one logit map: logits, target [B, 1, H, W] → scalar loss (see module doc)."""
    if reduction == "mean":
        return F.binary_cross_entropy_with_logits(logits, target)
    if reduction == "sum":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return per_pixel.flatten(1).sum(dim=1).mean()  # sum over pixels, mean over the batch
    raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft IoU of the in-focus region, per image, averaged over the batch.

    logits, target [B, 1, H, W] (target 1 = in focus) → scalar in [0, 1]; p = sigmoid(logits),
    IoU = (Σ p·g + eps) / (Σ (p + g − p·g) + eps), sums over each image's pixels. `eps` keeps
    an all-blurred image (no in-focus pixel) defined: a map of zeros scores a loss of 0 there.
    """
    p = torch.sigmoid(logits).flatten(1)
    g = target.flatten(1)
    intersection = (p * g).sum(dim=1)
    union = (p + g - p * g).sum(dim=1)
    return (1 - (intersection + eps) / (union + eps)).mean()


def loss_terms(
    prediction: Prediction,
    target: torch.Tensor,
    aux_weight: float | Sequence[float] = 1.0,
    reduction: str = "mean",
    iou_weight: float = 0.0,
    deep_supervision: bool = False,
) -> dict[str, torch.Tensor]:
    """Every term of eq. 7, for logging: {"main", "aux_0", …, "aux_{N-1}", ["refine_0", …], "total"}.

    prediction: logit maps, final, streams and refinements each [B, 1, H, W].
    target:     ground truth G [B, 1, H, W] with 1 = in focus, 0 = blurred (any dtype).
    Each entry is one map's term, eq. 6 (+ iou_weight × `soft_iou_loss`, see the module doc):
    "main" of M_final, "aux_n" of stream n (unweighted), "refine_k" of `prediction.refinements[k]`
    (with deep_supervision only); "total" = main + Σ αₙ · aux_n + Σ refine_k.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")
    if target.shape != prediction.final.shape:
        raise ValueError(
            f"target: shape {tuple(target.shape)} does not match the prediction's {tuple(prediction.final.shape)}"
        )
    alphas = aux_weights(aux_weight, len(prediction.streams))
    target = target.to(prediction.final.dtype)

    def term(logits: torch.Tensor) -> torch.Tensor:
        bce = pixel_bce(logits, target, reduction)
        return bce + iou_weight * soft_iou_loss(logits, target) if iou_weight else bce

    terms = {"main": term(prediction.final)}
    total = terms["main"]
    for n, (alpha, stream) in enumerate(zip(alphas, prediction.streams)):
        terms[f"aux_{n}"] = term(stream)
        total = total + alpha * terms[f"aux_{n}"]
    for k, refinement in enumerate(prediction.refinements if deep_supervision else []):
        terms[f"refine_{k}"] = term(refinement)
        total = total + terms[f"refine_{k}"]
    terms["total"] = total
    return terms
