"""Forward-pass speed of BTBNet on this machine's CPUs, against a bare conv stack of equal MACs.

For each variant × width × size: the median time of a no-grad, eval-mode forward pass on one
image (after warm-up), and the same for a plain stack of 3×3 convs at the input resolution
whose MAC count matches the model's within a few percent. Their ratio is the price of what
BTBNet does besides big convolutions: bilinear resizes of the streams (section 3.1), the many
thin layers of the top-bottom stream and FRRNet, concatenations, pooling in the fast variant.

    python bench/bench_forward.py [--sizes 64 128] [--widths 0.0625 0.125 0.25] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from btbnet import BTBNetConfig, build_model
from btbnet.summary import count_macs, summarize

WARMUP = 2
MAX_BARE_LAYERS = 32
BARE_DEPTH = 8
MAC_TOLERANCE = 0.02
PAPER_SUMMARY_SIZE = 320


def bare_conv_macs(channels: int, layers: int, area: int) -> int:
    """MACs of conv 3→C, (layers − 1) × conv C→C, conv C→1; all 3×3 at `area` pixels."""
    return area * 9 * (3 * channels + (layers - 1) * channels**2 + channels)


def bare_conv_stack(target_macs: int, size: int) -> nn.Sequential:
    """A 3×3 Conv+ReLU stack at size×size with `target_macs` MACs (within MAC_TOLERANCE if possible).

    Of the depths whose best channel count is within tolerance, the one closest to BARE_DEPTH
    (a VGG-like stack, neither 2 huge layers nor 30 thin ones); else the closest MAC count.
    """
    area = size * size
    candidates = []  # (error, layers, channels)
    for layers in range(1, MAX_BARE_LAYERS + 1):
        # solve (layers − 1)·C² + 4·C = target / (9·area) for C, then try both integer neighbours
        a, b, c = layers - 1, 4, -target_macs / (9 * area)
        root = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
        for channels in {max(1, math.floor(root)), max(1, math.ceil(root))}:
            candidates.append((abs(bare_conv_macs(channels, layers, area) / target_macs - 1), layers, channels))
    close = [cand for cand in candidates if cand[0] <= MAC_TOLERANCE]
    if close:
        _, layers, channels = min(close, key=lambda cand: (abs(cand[1] - BARE_DEPTH), cand[0]))
    else:
        _, layers, channels = min(candidates)
    modules: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(layers - 1):
        modules += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    modules.append(nn.Conv2d(channels, 1, 3, padding=1))
    return nn.Sequential(*modules)


def median_forward_ms(model: nn.Module, image: torch.Tensor, repeats: int) -> float:
    """Median wall time of model(image) in milliseconds, no grad, eval mode, after warm-up."""
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(WARMUP + repeats):
            start = time.perf_counter()
            model(image)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_one(config: BTBNetConfig, size: int, repeats: int) -> dict[str, Any]:
    model = build_model(config)
    macs = count_macs(model, size)
    bare = bare_conv_stack(macs, size)
    bare_macs = count_macs(bare, size)
    image = torch.rand(1, 3, size, size)
    ms = median_forward_ms(model, image, repeats)
    bare_ms = median_forward_ms(bare, image, repeats)
    return {
        "variant": config.variant,
        "width": config.width,
        "size": size,
        "gmacs": macs / 1e9,
        "ms": ms,
        "bare_ms": bare_ms,
        "bare_gmacs": bare_macs / 1e9,
        "bare_layers": sum(isinstance(m, nn.Conv2d) for m in bare),
        "bare_channels": bare[0].out_channels,
        "ratio": ms / bare_ms,
        "gmac_per_s": macs / 1e9 / (ms / 1000),
    }


def forward_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | width | size | GMACs | ms | bare-conv ms | ratio | GMAC/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['width']:g} | {r['size']} | {r['gmacs']:.3f} | {r['ms']:.1f} "
            f"| {r['bare_ms']:.1f} | {r['ratio']:.2f} | {r['gmac_per_s']:.1f} |"
        )
    return "\n".join(lines)


def summary_table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | width | scales | rrnet steps | size | params | GMACs |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        scales = ", ".join(f"{x:g}" for x in s["scales"])
        lines.append(
            f"| {s['variant']} | {s['width']:g} | {scales} | {s['rrnet_steps']} | {s['size']} "
            f"| {s['params'] / 1e6:.2f} M | {s['gmacs']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="square image sizes")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.0625, 0.125, 0.25])
    parser.add_argument("--variants", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("--rrnet-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: must be >= 1, got {args.repeats}")
    if args.threads < 1:
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    rows = []
    for variant in args.variants:
        for width in args.widths:
            config = BTBNetConfig(variant=variant, width=width, scales=tuple(args.scales), rrnet_steps=args.rrnet_steps)
            for size in args.sizes:
                rows.append(bench_one(config, size, args.repeats))
                print(f"  {variant} width {width:g} size {size}: {rows[-1]['ms']:.1f} ms", file=sys.stderr)
    summaries = [
        summarize(BTBNetConfig(variant=v, width=1.0, scales=(1, 0.8, 0.6), rrnet_steps=3), PAPER_SUMMARY_SIZE)
        for v in ("paper", "fast")
    ]

    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} of {os.cpu_count()} cores, {load}")
    print(f"scales {args.scales}, rrnet_steps {args.rrnet_steps}, batch 1, median of {args.repeats}\n")
    print(forward_table(rows))
    print(f"\nFull-size models on {PAPER_SUMMARY_SIZE}×{PAPER_SUMMARY_SIZE} (btbnet.summary.summarize):\n")
    print(summary_table(summaries))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average_before": load_before,
        }
        args.json.write_text(json.dumps({"machine": machine, "forward": rows, "summary": summaries}, indent=2))


if __name__ == "__main__":
    main()
