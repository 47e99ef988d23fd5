"""Inference speed per speed setting (btbnet.speed): ms per image against the FLOP floor.

For each variant at the given width (scales and RRNet steps as given), batch size and setting

    fp32          eager, NCHW
    bf16          bf16 autocast
    bf16+cl       bf16 autocast, channels_last
    bf16+cl+c     the same, torch.compile'd (compilation is warm-up, not timed)

it times `repeats` forward passes of a random [B, 3, S, S] batch (after `warmup` untimed
ones; on CUDA every pass is synchronised) and reports the median in ms per image, and the
ratio to the FLOP floor: 2 × MACs per image (btbnet.summary.count_macs) / the peak FLOP/s given
with --peak-tflops (default 989: an H200's dense bf16 tensor-core peak). A ratio of 2 means
twice the floor.

    python bench/bench_speed.py --device cuda --width 1.0 [--variants paper fast] [--size 320]
                                [--batch-sizes 1 8] [--settings fp32 bf16 bf16+cl bf16+cl+c]
                                [--repeats 20] [--peak-tflops 989] [--json OUT]
    python bench/bench_speed.py --device cpu --width 0.0625 --size 64 --repeats 3   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from btbnet import BTBNetConfig, build_model
from btbnet.speed import SpeedConfig
from btbnet.summary import count_macs

SETTINGS = {
    "fp32": SpeedConfig(),
    "bf16": SpeedConfig(precision="bf16"),
    "bf16+cl": SpeedConfig(precision="bf16", channels_last=True),
    "bf16+cl+c": SpeedConfig(precision="bf16", channels_last=True, compile=True),
}


def time_forward(model: torch.nn.Module, batch: torch.Tensor, speed: SpeedConfig, warmup: int, repeats: int) -> float:
    """Median seconds of one forward pass of `batch`."""
    device = batch.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            with speed.autocast(device):
                model(batch)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows = []
    for variant in args.variants:
        config = BTBNetConfig(variant=variant, width=args.width, scales=tuple(args.scales), rrnet_steps=args.rrnet_steps)
        macs = count_macs(build_model(config), args.size)
        floor_ms = 2 * macs / (args.peak_tflops * 1e12) * 1e3
        for name in args.settings:
            speed = SETTINGS[name]
            torch.manual_seed(0)
            model = speed.prepare(build_model(config).to(device).eval())
            for b in args.batch_sizes:
                batch = speed.layout(torch.rand(b, 3, args.size, args.size, device=device))
                seconds = time_forward(model, batch, speed, args.warmup + (2 if speed.compile else 0), args.repeats)
                ms = 1e3 * seconds / b
                row = {"variant": variant, "width": args.width, "size": args.size, "batch": b, "setting": name,
                       "ms_per_image": ms, "gmacs": macs / 1e9, "floor_ms": floor_ms, "x_floor": ms / floor_ms,
                       "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}  # fmt: skip
                rows.append(row)
                print(f"| {variant} | {b} | {name} | {ms:.2f} | {ms / floor_ms:.1f}× |", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("--rrnet-steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{args.device}: width {args.width}, {args.size}², scales {args.scales}, {args.rrnet_steps} RRNet steps; "
          f"floor = 2 × MACs / {args.peak_tflops:g} TFLOP/s\n")  # fmt: skip
    print("| variant | batch | setting | ms / image | × floor |\n|---|---:|---|---:|---:|")
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
