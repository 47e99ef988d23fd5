"""Peak memory and time of `btbnet.predict.predict_map` against image size: the pixel budget's basis.

Every (size, max_size) pair runs in a fresh Python process, so its ru_maxrss is that run's own
peak. The process loads a released model (default `btbnet-cpu`), makes a random 4:3 RGB image
of about `size` megapixels, notes its peak resident set so far (the baseline: Python, torch,
the weights, the uint8 image), then runs `predict_map` once, cold, as `btbnet predict` does for
its first image, and notes the peak again. Two settings of max_size:

    native   max_size=None: the model sees every pixel (how memory really scales)
    default  the released model's max_size (320 px for btbnet-cpu: what `btbnet predict` does)

The slope of a least-squares line through (megapixels, peak MB) per setting is the memory a
megapixel costs; extrapolated to `btbnet.predict.MAX_PIXELS`, the default pixel budget.

    python bench/bench_predict_memory.py [--sizes 0.25 0.5 1 2 4] [--default-sizes 0.25 1 4 16 48]
                                         [--model btbnet-cpu] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD_TIMEOUT_S = 120


def measure(model_name: str, megapixels: float, native: bool, threads: int | None) -> dict[str, Any]:
    """One run, in this process (it must be fresh): sizes, baseline and peak RSS in MB, seconds."""
    import numpy as np
    import torch

    from btbnet.images import fit_within
    from btbnet.predict import predict_map
    from btbnet.pretrained import load_pretrained, released

    if threads:
        torch.set_num_threads(threads)
    model = load_pretrained(model_name)
    max_size = None if native else released(model_name).max_size
    w = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    h = round(w * 3 / 4)
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    predict_map(model, image, max_size=max_size)
    seconds = time.perf_counter() - start
    sh, sw = fit_within((h, w), max_size)
    return {
        "model": model_name, "max_size": max_size, "height": h, "width": w, "megapixels": h * w / 1e6,
        "seen_megapixels": sh * sw / 1e6, "baseline_mb": baseline, "peak_mb": peak_rss_mb(),
        "seconds": seconds, "threads": torch.get_num_threads(),
    }  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(model_name: str, megapixels: float, native: bool, threads: int | None) -> dict[str, Any]:
    """`measure` in a fresh interpreter; its JSON result."""
    argv = [sys.executable, __file__, "--child", json.dumps([model_name, megapixels, native, threads])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{megapixels} MP, native={native}: exit {result.returncode}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def slope(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least-squares (MB per megapixel, intercept MB) of peak_mb against megapixels; None for one size."""
    xs, ys = [r["megapixels"] for r in rows], [r["peak_mb"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    per_mp = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return per_mp, my - per_mp * mx


def markdown(rows: list[dict[str, Any]], max_pixels: int) -> str:
    lines = [
        "| max_size | image | MP | model sees MP | baseline MB | peak MB | predict MB | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['max_size'] or 'None (native)'} | {r['width']}×{r['height']} | {r['megapixels']:.2f} "
            f"| {r['seen_megapixels']:.2f} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} "
            f"| {r['peak_mb'] - r['baseline_mb']:.0f} | {r['seconds']:.1f} |"
        )
    lines += ["", "| max_size | MB per megapixel (slope of peak MB) | intercept MB | peak at the budget, extrapolated |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for max_size in dict.fromkeys(r["max_size"] for r in rows):
        if (fit := slope([r for r in rows if r["max_size"] == max_size])) is not None:
            per_mp, intercept = fit
            at_budget = f"{intercept + per_mp * max_pixels / 1e6:.0f} MB at {max_pixels / 1e6:g} MP"
            lines.append(f"| {max_size or 'None (native)'} | {per_mp:.0f} | {intercept:.0f} | {at_budget} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4], metavar="MP",
                        help="image sizes run at native resolution (max_size=None)")
    parser.add_argument("--default-sizes", type=float, nargs="+", default=[0.25, 1, 4, 16, 48], metavar="MP",
                        help="image sizes run at the released model's max_size (cheap: the model sees 320 px)")
    parser.add_argument("--model", default="btbnet-cpu", help="a released model (btbnet/pretrained.py)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, as btbnet predict)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return

    from btbnet.predict import MAX_PIXELS

    start = time.perf_counter()
    runs = [(mp, True) for mp in args.sizes] + [(mp, False) for mp in args.default_sizes]
    rows = [run_child(args.model, mp, native, args.threads) for mp, native in runs]
    import torch

    print(f"torch {torch.__version__}, {platform.machine()}, {rows[0]['threads']} thread(s), "
          f"{time.perf_counter() - start:.0f} s in all\n")  # fmt: skip
    print(markdown(rows, MAX_PIXELS))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
