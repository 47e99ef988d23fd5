"""Training objective: pixel-wise sigmoid cross-entropy with auxiliary stream losses.

Section 3.3: the main loss (eq. 6) compares the final map M_final with the ground truth G;
an auxiliary loss of the same form is applied to every stream's map Mⁿ, and eq. 7 adds
them with trade-off weights αₙ (1 in the paper):

    L_final = L_main + Σₙ αₙ · Lⁿ_aux

Every map is a logit map, so each term is `binary_cross_entropy_with_logits` (numerically
stable: it never takes log(sigmoid(x)) of a saturated sigmoid).

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


def loss_terms(
    prediction: Prediction,
    target: torch.Tensor,
    aux_weight: float | Sequence[float] = 1.0,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Every term of eq. 7, for logging: {"main", "aux_0", …, "aux_{N-1}", "total"}.

    prediction: logit maps, final and streams each [B, 1, H, W].
    target:     ground truth G [B, 1, H, W] with 1 = in focus, 0 = blurred (any dtype).
    The "aux_n" entries are the unweighted Lⁿ_aux; "total" = main + Σ αₙ · aux_n.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")
    if target.shape != prediction.final.shape:
        raise ValueError(
            f"target: shape {tuple(target.shape)} does not match the prediction's {tuple(prediction.final.shape)}"
        )
    alphas = aux_weights(aux_weight, len(prediction.streams))
    target = target.to(prediction.final.dtype)

    terms = {"main": pixel_bce(prediction.final, target, reduction)}
    total = terms["main"]
    for n, (alpha, stream) in enumerate(zip(alphas, prediction.streams)):
        terms[f"aux_{n}"] = pixel_bce(stream, target, reduction)
        total = total + alpha * terms[f"aux_{n}"]
    terms["total"] = total
    return terms
