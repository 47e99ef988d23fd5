"""The paper's optimisation recipe (section 4.1) and a plain, reusable training loop.

Recipe: SGD with momentum 0.9 and weight decay 5e-4; learning rate 1e-4 for the VGG16
backbone (ImageNet-initialised) and 1e-3 for the layers the paper adds (top-bottom stream,
FNet, RRNet). The loss is eq. 7 (`btbnet.losses`).

Batches: a loader yields either `(images, masks)` pairs or mappings with keys "image" and
"mask"; images [B, 3, H, W] float RGB in [0, 1], masks [B, 1, H, W] with 1 = in focus.
Nothing here knows about distributed training: a DistributedDataParallel-wrapped model
works as is (its gradients are synchronised in `backward`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .checkpoint import unwrap
from .config import ConfigError, check_int, check_number
from .losses import REDUCTIONS, loss_terms
from .speed import SpeedConfig, fp32_logits

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor]
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and loss settings; defaults are the paper's (sections 3.3 and 4.1).

    optimizer:       "sgd" (the paper's) or "adamw" (Loshchilov & Hutter; trains a randomly
                     initialised network much faster, for recipes without ImageNet weights).
    lr_backbone:     learning rate of the VGG16 backbones.
    lr_new:          learning rate of the randomly initialised layers.
    momentum:        SGD momentum, in [0, 1); AdamW's β₁.
    weight_decay:    SGD's L2 penalty, AdamW's decoupled decay; >= 0.
    aux_weight:      αₙ of eq. 7: one number for every stream, or one per stream.
    loss_reduction:  "mean" (over pixels and batch) or "sum" (over pixels, mean over the
                     batch); see `btbnet.losses`.
    iou_weight:      λ of the soft IoU region term added to every map's term (0: eq. 6 alone,
                     the paper's); `btbnet.losses.soft_iou_loss`.
    deep_supervision: the main term on FNet's map and every RRNet step too (false: the paper's
                     eq. 7, on M_final and the streams only).
    schedule:        "constant" (the paper's) or "cosine": both rates decay along a half
                     cosine to min_lr_ratio × themselves at the last step of the run.
    warmup_steps:    linear warm-up from 0 over this many first steps (0: none).
    min_lr_ratio:    the cosine's floor, as a fraction of the initial rates.
    clip_grad_norm:  rescale the gradients so their global L2 norm is at most this (None: off).
    """

    optimizer: str = "sgd"
    lr_backbone: float = 1e-4
    lr_new: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float | tuple[float, ...] = 1.0
    loss_reduction: str = "mean"
    iou_weight: float = 0.0
    deep_supervision: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for key in ("lr_backbone", "lr_new", "weight_decay"):
            check_number(key, getattr(self, key), low=0.0)
        check_number("momentum", self.momentum, low=0.0, high=1.0)
        if isinstance(self.aux_weight, (list, tuple)):
            object.__setattr__(self, "aux_weight", tuple(self.aux_weight))
            if not self.aux_weight:
                raise ConfigError("aux_weight", "must be a number or a non-empty list of numbers, got []")
            for a in self.aux_weight:
                check_number("aux_weight", a, low=0.0)
        else:
            check_number("aux_weight", self.aux_weight, low=0.0)
        check_number("iou_weight", self.iou_weight, low=0.0)
        if self.loss_reduction not in REDUCTIONS:
            raise ConfigError("loss_reduction", f"must be one of {REDUCTIONS}, got {self.loss_reduction!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        check_int("warmup_steps", self.warmup_steps, 0)
        check_number("min_lr_ratio", self.min_lr_ratio, 0.0)
        if self.min_lr_ratio > 1:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.clip_grad_norm is not None:
            check_number("clip_grad_norm", self.clip_grad_norm, 0.0, low_open=True)


@dataclass(frozen=True)
class LoopConfig:
    """Length and batching of a training run.

    epochs:               passes over the data set.
    batch_size:           images per optimiser step, over all workers together.
    max_steps_per_epoch:  cut each epoch after this many steps (None: the whole data set).
    seed:                 initialisation, data order and augmentation draws.
    """

    epochs: int = 1
    batch_size: int = 1
    max_steps_per_epoch: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_steps_per_epoch", self.max_steps_per_epoch, 1, allow_none=True)
        check_int("seed", self.seed, 0)


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) with two parameter groups (section 4.1), named by their "name" entry.

    "backbone": `model.backbone_parameters()` at `lr_backbone`;
    "new":      `model.new_parameters()` at `lr_new`.
    Both share momentum and weight decay. A DDP-wrapped model is unwrapped first.
    """
    net = unwrap(model)
    groups = [
        {"name": "backbone", "params": net.backbone_parameters(), "lr": config.lr_backbone},
        {"name": "new", "params": net.new_parameters(), "lr": config.lr_new},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr_new, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr_new, momentum=config.momentum, weight_decay=config.weight_decay)


def lr_factor(config: OptimConfig, step: int, total_steps: int) -> float:
    """The multiplier of both learning rates at `step` (0-based) of a `total_steps` run."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "constant":
        return warm
    progress = min(1.0, step / max(1, total_steps - 1))
    return warm * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a scheduler: call `.step()` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, total_steps))


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: OptimConfig,
    *,
    step: int | None = None,
    speed: SpeedConfig = SpeedConfig(),
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One SGD step on a batch; returns the loss terms of eq. 7 as floats (before the update).

    images [B, 3, H, W] and masks [B, 1, H, W] must already be on the model's device.
    `speed`: the forward pass's precision and layout (`btbnet.speed`; the loss is fp32);
    `scaler`: fp16's loss scaler, kept across steps (`SpeedConfig.scaler`; None: a fresh one).
    Raises FloatingPointError (naming `step` when given) if the loss is not finite; the
    weights are left untouched in that case.
    """
    scaler = scaler if scaler is not None else speed.scaler(images.device)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with speed.autocast(images.device):
        prediction = model(speed.layout(images))
    terms = loss_terms(fp32_logits(prediction), masks, config.aux_weight, config.loss_reduction, config.iou_weight, config.deep_supervision)
    check_finite(terms, step)
    scaler.scale(terms["total"]).backward()
    if config.clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
    scaler.step(optimizer)  # skipped by an fp16 scaler when a gradient overflowed
    scaler.update()
    return {k: float(v.detach()) for k, v in terms.items()}


def train_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    config: OptimConfig,
    device: str | torch.device = "cpu",
    on_step: StepCallback | None = None,
    max_steps: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    speed: SpeedConfig = SpeedConfig(),
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One pass over `loader` (at most `max_steps` batches); mean of each loss term.

    The means are weighted by batch size, i.e. per-sample averages over the epoch.
    `on_step(step_index, terms)` is called after every step, step_index counting from 0;
    `scheduler` (see `make_scheduler`), if given, steps after every optimiser step.
    """
    totals = _RunningMean()
    scaler = scaler if scaler is not None else speed.scaler(device)
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        images, masks = to_device(batch, device)
        terms = train_step(model, images, masks, optimizer, config, step=step, speed=speed, scaler=scaler)
        if scheduler is not None:
            scheduler.step()
        totals.add(terms, weight=images.shape[0])
        if on_step is not None:
            on_step(step, terms)
    if not totals.weight:
        raise ValueError("loader: yielded no batches")
    return totals.mean()


def to_device(batch: Batch, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks) of a batch, as float tensors on `device`."""
    if isinstance(batch, Mapping):
        missing = [k for k in ("image", "mask") if k not in batch]
        if missing:
            raise KeyError(f"{missing[0]}: missing from the batch (keys: {sorted(batch)})")
        images, masks = batch["image"], batch["mask"]
    else:
        images, masks = batch
    return images.to(device, torch.float32), masks.to(device, torch.float32)


def check_finite(terms: Mapping[str, torch.Tensor], step: int | None) -> None:
    """FloatingPointError naming the step and the term if any loss term is NaN or infinite."""
    for name, value in terms.items():
        if not torch.isfinite(value):
            where = f"step {step}" if step is not None else "this step"
            raise FloatingPointError(f"{where}: loss term {name!r} is {float(value.detach())} (diverged or NaN input)")


class _RunningMean:
    """Weighted running mean of several named values."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def add(self, values: Mapping[str, float], weight: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.weight += weight

    def mean(self) -> dict[str, float]:
        return {key: s / self.weight for key, s in self.sums.items()} if self.weight else {}
