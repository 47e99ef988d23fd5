"""Synthesis speed: the PNG encoding setting, and the `synthesize` stage per core against a loop.

1. PNG zlib levels: for N sources, the time to encode their 20 samples (image + mask), the
   bytes, and a check that decoding gives the samples back bit for bit (every level is
   lossless; the level only trades time for bytes). `btbnet.io.PNG_COMPRESS_LEVEL` is the one
   the pipeline writes.
2. Throughput per core: `btbnet.synthesis.write_samples` over the sources in a plain
   single-process loop, against the stage's Ray Data path (`pipeline.synthesize.write_all`) on
   a local Ray instance of `--cpus` CPUs; both write the same files. The ratio is
   (stage sources/s ÷ cpus) ÷ (loop sources/s).

    python bench/bench_synthesis_speed.py --sources DIR [--limit N] [--cpus 2] [--levels 0 1 3 6 9] [--png-only] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from btbnet.data import load_rgb
from btbnet.io import PNG_COMPRESS_LEVEL
from btbnet.synthesis import find_sources, synthesize, write_samples

REPO_ROOT = Path(__file__).resolve().parent.parent


def png_levels(sources, levels: list[int]) -> list[dict]:
    samples = [s for src in sources for s in synthesize(load_rgb(src.path))]
    rows = []
    for level in levels:
        size, started = 0, time.perf_counter()
        encoded = []
        for s in samples:
            for array in (s.image, s.mask):
                buf = io.BytesIO()
                Image.fromarray(array).save(buf, format="PNG", compress_level=level)
                size += buf.tell()
                encoded.append((array, buf.getvalue()))
        seconds = time.perf_counter() - started
        lossless = all(np.array_equal(np.asarray(Image.open(io.BytesIO(b))), a) for a, b in encoded)
        rows.append({
            "level": level, "encode_s_per_source": seconds / len(sources),
            "bytes_per_sample": size / len(samples), "lossless": lossless,
        })  # fmt: skip
    return rows


def loop_throughput(sources, out: Path) -> float:
    for sub in ("image", "gt"):
        (out / sub).mkdir(parents=True)
    started = time.perf_counter()
    for src in sources:
        write_samples(src, out)
    return len(sources) / (time.perf_counter() - started)


def stage_throughput(sources, out: Path, cpus: int) -> float:
    import ray

    sys.path.insert(0, str(REPO_ROOT))  # `python bench/…` puts bench/ on the path, not the repo
    from pipeline.synthesize import SynthesizeConfig, write_all

    for sub in ("image", "gt"):
        (out / sub).mkdir(parents=True)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        config = SynthesizeConfig(source_root=".", sources=(".",), out_dir=str(out), metrics="unused.json")
        started = time.perf_counter()
        rows = write_all(sources, out, config)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert not any(r["error"] for r in rows), rows
    return len(sources) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, default=REPO_ROOT / "data" / "embedded" / "sources")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 3, 6, 9])
    parser.add_argument("--png-only", action="store_true", help="only the encoding table (step 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sources = find_sources(args.sources, ["."])[: args.limit]
    result = {"sources": len(sources), "pipeline_level": PNG_COMPRESS_LEVEL, "png": png_levels(sources[:5], args.levels)}
    print("| zlib level | encode s / source (20 samples) | kB / sample | lossless |\n|---:|---:|---:|---|")
    for r in result["png"]:
        print(f"| {r['level']} | {r['encode_s_per_source']:.3f} | {r['bytes_per_sample'] / 1e3:.0f} | {r['lossless']} |")
    if args.png_only:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result["loop_sources_per_s"] = loop_throughput(sources, Path(tmp) / "loop")
        result["stage_sources_per_s"] = stage_throughput(sources, Path(tmp) / "stage", args.cpus)
        same = all(
            (Path(tmp) / "loop" / p.relative_to(Path(tmp) / "stage")).read_bytes() == p.read_bytes()
            for p in (Path(tmp) / "stage").rglob("*.png")
        )
    result["cpus"] = args.cpus
    result["stage_per_core_vs_loop"] = result["stage_sources_per_s"] / args.cpus / result["loop_sources_per_s"]
    result["same_files"] = same
    print(
        f"\nloop: {result['loop_sources_per_s']:.2f} sources/s on 1 process; stage: {result['stage_sources_per_s']:.2f} "
        f"sources/s on {args.cpus} CPUs = {result['stage_per_core_vs_loop']:.2f}× the loop per core; same files: {same}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
