"""Peak memory of one prediction at width 1.0, per image size: what inference holds at once.

Each row runs in a fresh Python process (its ru_maxrss is its own peak): a randomly
initialised model (weights do not change memory; ImageNet weights are not needed) of the given
variant at width 1.0, scales (1, 0.8, 0.6), 3 RRNet steps; a random RGB image of W×H; then

    inference   `btbnet.predict.predict_maps` (eval, torch.inference_mode: each layer's input is
                freed as soon as the next layer has it, the streams run one after another and
                keep only their [B, 1, H, W] map)
    autograd    the same forward pass with gradients on, as training does: every activation
                of every stream is kept for the backward pass

and reports peak RSS minus the baseline (interpreter, torch, weights, image) in MB. The
difference between the two is what inference does not hold.

    python bench/bench_inference_memory.py [--sizes 160x120 320x240 640x480] [--variants paper fast]
                                           [--modes inference autograd] [--precision fp32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD_TIMEOUT_S = 1800


def child(variant: str, size: str, mode: str, precision: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from btbnet import BTBNetConfig, build_model
    from btbnet.predict import predict_maps
    from btbnet.speed import SpeedConfig

    w, h = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant=variant, width=1.0, scales=(1.0, 0.8, 0.6), rrnet_steps=3))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    speed = SpeedConfig(precision=precision)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if mode == "inference":
        predict_maps(model, [image], max_pixels=None, speed=speed)
    else:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        with speed.autocast("cpu"):
            kept = model.eval()(x)  # the autograd graph holds every activation until this is dropped
        assert kept.final.requires_grad
    return {"variant": variant, "size": size, "megapixels": w * h / 1e6, "mode": mode, "precision": precision,
            "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "extra_mb": peak_rss_mb() - baseline,
            "seconds": time.perf_counter() - start}  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["160x120", "320x240", "640x480"], metavar="WxH")
    parser.add_argument("--variants", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--modes", nargs="+", default=["inference", "autograd"], choices=["inference", "autograd"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.precision)))
        return
    rows = []
    print(f"# {platform.processor() or platform.machine()}, torch threads: default; precision {args.precision}")
    print(f"{'variant':8} {'size':>9} {'MP':>5} {'mode':>10} {'extra MB':>9} {'seconds':>8}")
    for variant in args.variants:
        for size in args.sizes:
            for mode in args.modes:
                done = subprocess.run([sys.executable, __file__, "--child", variant, size, mode, "--precision", args.precision],
                                      capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)  # fmt: skip
                if done.returncode != 0:
                    raise SystemExit(f"{variant} {size} {mode}: {done.stderr.strip().splitlines()[-1]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{variant:8} {size:>9} {row['megapixels']:5.2f} {mode:>10} {row['extra_mb']:9.0f} {row['seconds']:8.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
