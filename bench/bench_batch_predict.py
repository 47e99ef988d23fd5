"""Throughput of batch inference: `btbnet predict` at batch 1 and 4, the Ray Data path with 1 and 2 actors.

N synthetic photographs of one size (JPEG, a sharp half and a blurred half) in a temporary
folder, a released model (default `btbnet-cpu`) or a checkpoint, at `--max-size` (default: the model's own scale):

    predict   `btbnet.files.predict_paths`, what `btbnet predict --batch-size B` runs, in this
              process on torch's threads as the CLI sets them (`use_all_cores`; `--threads`
              to choose), after a
              warm-up on two images; its own decode/encode threads;
    ray       `pipeline.commands.batch_predict.batch_predict` on a local Ray instance (or `--address`):
              A actors of one CPU and one thread each, Ray Data batches of `--ray-batch-size`.
              Its time runs from the first batch sent to the last map back, so it includes the
              actors' start-up (a Python worker, torch, the model); Ray's own start is measured
              apart, once. "images/s after it": the rate once the first batch of maps is back
              (the actors are up), what a large folder sees.
Every run writes all N maps into a fresh folder; images/s = N / seconds; each row is the median
of `--repeats` runs, the rows taking turns (every run's seconds are in the JSON).

    python bench/bench_batch_predict.py [--images 32] [--size 640x480] [--model NAME_OR_CKPT] [--max-size N]
                                        [--batch-sizes 1 4] [--actors 1 2] [--ray-batch-size 4]
                                        [--threads N] [--repeats 3] [--address HOST:PORT] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet.files import predict_paths  # noqa: E402
from btbnet.predict import use_all_cores  # noqa: E402
from btbnet.pretrained import DEFAULT, load_model  # noqa: E402
from pipeline.commands import batch_predict  # noqa: E402


def make_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` JPEGs (quality 90) of size (W, H): random texture, its right half blurred."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        texture = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        texture.paste(texture.crop((w // 2, 0, w, h)).filter(ImageFilter.GaussianBlur(6)), (w // 2, 0))
        texture.save(folder / f"{i:04d}.jpg", quality=90)


def bench_predict(model_name: str, folder: Path, tmp: Path, batch_size: int, threads: int, max_size: int | None) -> dict[str, Any]:
    """One `predict_paths` run over `folder` after a warm-up, at `max_size` (None: the model's own); its row."""
    model, scale = load_model(model_name)
    max_size = max_size or scale
    warm = sorted(folder.iterdir())[:2]
    predict_paths(model, warm, tmp / f"warm-{batch_size}", max_size=max_size, progress=False, batch_size=batch_size)
    start = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix=f"predict-{batch_size}-", dir=tmp))
    written = predict_paths(model, [folder], out, max_size=max_size, progress=False, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"path": "btbnet predict", "actors": "–", "batch": batch_size, "threads": threads,
            "images": len(written), "seconds": seconds, "first_s": None, "steady": None}  # fmt: skip


def bench_ray(model_name: str, folder: Path, tmp: Path, actors: int, batch_size: int, max_size: int | None) -> dict[str, Any]:
    """One `batch_predict` run on the connected Ray instance; its row."""
    out = Path(tempfile.mkdtemp(prefix=f"ray-{actors}-", dir=tmp))
    summary = batch_predict.batch_predict(folder, out, model_name, max_size=max_size, batch_size=batch_size, actors=actors)
    assert summary.done and not summary.errors and not summary.skipped, summary
    t = summary.timing
    return {"path": "Ray Data", "actors": actors, "batch": batch_size, "threads": batch_predict.CPUS_PER_ACTOR,
            "images": summary.done, "seconds": t.seconds, "first_s": t.first_s, "steady": t.steady_rate(summary.done)}  # fmt: skip


def median_runs(runs: list[Callable[[], dict[str, Any]]], repeats: int) -> list[dict[str, Any]]:
    """Each of `runs` `repeats` times, taking turns (so a change in the machine's load falls on
    all of them alike); per run, the row of its median time, with every repeat's seconds."""
    results: list[list[dict[str, Any]]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, rows in zip(runs, results):
            rows.append(run())
    medians = []
    for rows in results:
        rows.sort(key=lambda r: r["seconds"])
        medians.append(rows[len(rows) // 2] | {"all_seconds": [r["seconds"] for r in rows]})
    return medians


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| path | actors | batch | torch threads | images | s | images/s | first map back, s | images/s after it |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        first = "–" if r["first_s"] is None else f"{r['first_s']:.1f}"
        steady = "–" if r["steady"] is None else f"{r['steady']:.2f}"
        lines.append(f"| {r['path']} | {r['actors']} | {r['batch']} | {r['threads']} | {r['images']} "
                     f"| {r['seconds']:.1f} | {r['images'] / r['seconds']:.2f} | {first} | {steady} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="synthetic images (default 32)")
    parser.add_argument("--size", default="640x480", help="their size, WxH (default 640x480)")
    parser.add_argument("--model", default=DEFAULT, help=f"a released model or a checkpoint (default {DEFAULT})")
    parser.add_argument("--max-size", type=int, help="longer side the model sees (default: the model's own scale)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="btbnet predict's --batch-size")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray Data actor pool sizes")
    parser.add_argument("--ray-batch-size", type=int, default=4, help="batch_predict's --batch-size (default 4)")
    parser.add_argument("--threads", type=int, help="torch threads of the btbnet predict rows (default: as the CLI sets them)")
    parser.add_argument("--address", help="a running Ray cluster (default: a local instance)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the table shows the median (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    import ray
    import torch

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = tmp / "in"
        folder.mkdir()
        make_images(folder, args.images, size)
        threads = use_all_cores() if args.threads is None else args.threads
        torch.set_num_threads(threads)
        start = time.perf_counter()
        batch_predict.connect(args.address)
        ray_start = time.perf_counter() - start
        runs = [partial(bench_predict, args.model, folder, tmp, b, threads, args.max_size) for b in args.batch_sizes]
        runs += [partial(bench_ray, args.model, folder, tmp, a, args.ray_batch_size, args.max_size) for a in args.actors]
        try:
            rows = median_runs(runs, args.repeats)
        finally:
            ray.shutdown()
    print(f"torch {torch.__version__}, {platform.machine()}, {args.images} images of {size[0]}×{size[1]}, "
          f"model {args.model}; median of {args.repeats} runs per row; Ray start-up {ray_start:.1f} s (not in the table)\n")  # fmt: skip
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
