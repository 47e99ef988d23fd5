"""Training throughput of BTBNet: images per second of `btbnet.train.train_step`, CPU or CUDA.

For each variant × width × size × batch size: the median wall time of one SGD step (forward,
eq. 7's loss over every stream, backward, update; section 4.1's optimiser) after warm-up steps,
as images/s; the bytes autograd keeps for the backward pass in the first step (the activations,
weights excluded: on any device, what grows with batch × pixels); and on CUDA the peak memory
(`torch.cuda.max_memory_allocated`: weights, optimiser state, activations, workspace).
`--bf16` wraps each step in `torch.autocast(dtype=torch.bfloat16)` (no grad scaler needed).

Inputs are random tensors, or with `--data DIR` real pairs (image/ + gt/, Shi's polarity,
16× augmented and resized to the size) loaded before timing: with `--loss-reduction sum` and
the default learning rates that is the paper's recipe, and the loss of every step is kept,
so a few steps double as a smoke test. A non-finite loss stops that configuration (status
"non-finite"), running out of memory too ("out of memory"); the exit code is 1 if any did.

    python bench/bench_train.py [--device cpu|cuda|auto] [--widths 0.0625 0.125] [--sizes 64]
                                [--batch-sizes 1 4] [--steps 3] [--bf16] [--data DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from btbnet import BTBNetConfig, build_model
from btbnet.data import InputConfig, PairDataset
from btbnet.losses import REDUCTIONS
from btbnet.summary import count_parameters
from btbnet.train import OptimConfig, make_optimizer, train_step

Batch = tuple[torch.Tensor, torch.Tensor]  # images [B, 3, S, S], masks [B, 1, S, S]


@dataclass
class Row:
    """One configuration's figures, a row of the table."""

    variant: str
    width: float
    size: int
    batch: int
    device: str
    dtype: str
    params: int = 0
    steps: int = 0  # timed steps that ran
    ms_per_step: float | None = None  # median
    images_per_s: float | None = None
    saved_mb: float | None = None  # activations autograd saves for backward, first step
    peak_mb: float | None = None  # CUDA only
    losses: list[float] = field(default_factory=list)  # eq. 7 total, warm-up steps included
    status: str = "ok"


class SavedActivations:
    """While active: the bytes of the distinct storages autograd saves for backward, parameters excluded."""

    def __init__(self, model: torch.nn.Module):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}  # data_ptr → bytes; saved tensors stay alive until backward
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def megabytes(self) -> float:
        return sum(self.storages.values()) / 2**20


def random_batches(count: int, batch: int, size: int, seed: int) -> list[Batch]:
    """`count` batches of uniform noise images and random binary masks (1 = in focus)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images = torch.rand(batch, 3, size, size, generator=generator)
        masks = (torch.rand(batch, 1, size, size, generator=generator) > 0.5).float()
        batches.append((images, masks))
    return batches


def data_batches(root: Path, count: int, batch: int, size: int) -> list[Batch]:
    """`count` batches of real pairs from `root`, items taken in order (cycling), ×16 augmented."""
    dataset = PairDataset(root, "blurred", InputConfig(image_size=size, augment=True))
    items = [dataset[i % len(dataset)] for i in range(count * batch)]
    batches = []
    for b in range(count):
        chunk = items[b * batch : (b + 1) * batch]
        batches.append((torch.stack([image for image, _ in chunk]), torch.stack([mask for _, mask in chunk])))
    return batches


@contextlib.contextmanager
def precision(device: torch.device, bf16: bool) -> Iterator[None]:
    """bf16 autocast around forward, loss and backward, or nothing (fp32)."""
    if bf16:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    optim: OptimConfig,
    batches: list[Batch],
    device: torch.device,
    bf16: bool,
    row: Row,
) -> list[float]:
    """Seconds of one `train_step` per batch (synchronised on CUDA); fills row.losses and row.saved_mb."""
    seconds = []
    for step, (images, masks) in enumerate(batches):
        images, masks = images.to(device), masks.to(device)
        saved = SavedActivations(model) if step == 0 else contextlib.nullcontext()
        synchronize(device)
        start = time.perf_counter()
        with precision(device, bf16), saved:
            terms = train_step(model, images, masks, optimizer, optim, step=step)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        row.losses.append(terms["total"])
        if step == 0:
            row.saved_mb = saved.megabytes
    return seconds


def bench_one(config: BTBNetConfig, size: int, batch: int, device: torch.device, args: argparse.Namespace) -> Row:
    """Time `args.steps` train steps after `args.warmup`; a non-finite loss or OOM ends up in `status`."""
    row = Row(config.variant, config.width, size, batch, str(device), "bf16 autocast" if args.bf16 else "fp32")
    model = optimizer = batches = None
    try:
        torch.manual_seed(args.seed)
        model = build_model(config).to(device)
        row.params = count_parameters(model)
        optim = OptimConfig(loss_reduction=args.loss_reduction)  # the paper's learning rates
        optimizer = make_optimizer(model, optim)
        count = args.warmup + args.steps
        if args.data:
            batches = data_batches(args.data, count, batch, size)
        else:
            batches = random_batches(count, batch, size, args.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # from here: weights + optimiser state + activations
        seconds = timed_steps(model, optimizer, optim, batches, device, args.bf16, row)[args.warmup :]
        row.steps = len(seconds)
        row.ms_per_step = 1000 * statistics.median(seconds)
        row.images_per_s = batch / statistics.median(seconds)
    except FloatingPointError as exc:
        row.status = f"non-finite: {exc}"
    except torch.cuda.OutOfMemoryError:
        row.status = "out of memory"
    finally:
        if device.type == "cuda":
            row.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        del model, optimizer, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| variant | width | size | batch | device | dtype | ms / step | images / s | saved activations MB "
        "| peak GPU MB | loss first → last | status |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ms = f"{r.ms_per_step:.1f}" if r.ms_per_step is not None else "–"
        ips = f"{r.images_per_s:.2f}" if r.images_per_s is not None else "–"
        peak = f"{r.peak_mb:,.0f}" if r.peak_mb is not None else "–"
        saved = f"{r.saved_mb:,.0f}" if r.saved_mb is not None else "–"
        loss = f"{r.losses[0]:.4g} → {r.losses[-1]:.4g}" if r.losses else "–"
        lines.append(
            f"| {r.variant} | {r.width:g} | {r.size} | {r.batch} | {r.device} | {r.dtype} "
            f"| {ms} | {ips} | {saved} | {peak} | {loss} | {r.status} |"
        )
    return "\n".join(lines)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch.cuda.is_available() is False (torch {torch.__version__})")
    return torch.device(name)


def describe(device: torch.device) -> str:
    """The machine in one line: torch, the GPU or the CPU threads, and what affects the figures."""
    if device.type == "cuda":
        tf32 = torch.backends.cudnn.allow_tf32
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, TF32 convs {tf32}"
    else:
        where = f"{torch.get_num_threads()} of {os.cpu_count()} CPU threads"
    return f"torch {torch.__version__}, {where}, 1-min load average {os.getloadavg()[0]:.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--variants", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.0625, 0.125])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="square image sizes")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("--rrnet-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around each step")
    parser.add_argument("--loss-reduction", default="mean", choices=REDUCTIONS)
    parser.add_argument("--data", type=Path, help="train on this pair folder (image/ + gt/) instead of noise")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every row (with per-step losses) to this JSON file")
    args = parser.parse_args(argv)
    for name in ("steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name}: must be >= 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup: must be >= 0, got {args.warmup}")
    for name in ("sizes", "batch_sizes"):
        bad = [v for v in getattr(args, name) if v < 1]
        if bad:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {bad[0]}")
    return args


def configurations(args: argparse.Namespace) -> Iterator[tuple[BTBNetConfig, int, int]]:
    """(model config, size, batch size) of every combination asked for, in table order."""
    for variant in args.variants:
        for width in args.widths:
            config = BTBNetConfig(variant=variant, width=width, scales=tuple(args.scales), rrnet_steps=args.rrnet_steps)
            for size in args.sizes:
                for batch in args.batch_sizes:
                    yield config, size, batch


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = []
    for config, size, batch in configurations(args):
        r = bench_one(config, size, batch, device, args)
        rows.append(r)
        speed = f"{r.images_per_s:.2f} img/s" if r.images_per_s else "–"
        print(f"  {r.variant} width {r.width:g} size {size} batch {batch}: {speed}, {r.status}", file=sys.stderr)

    machine = describe(device)
    inputs = f"data {args.data}" if args.data else "random inputs"
    print(machine)
    print(
        f"scales {args.scales}, rrnet_steps {args.rrnet_steps}, loss_reduction {args.loss_reduction}, {inputs}, "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        report = {"machine": machine, "args": settings, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
