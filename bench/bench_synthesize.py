"""Cost of the simulated pre-training set (section 4.1): synthesis time and disk, at the paper's scale.

On N clear source images, single process:
  - the time of `btbnet.synthesis.synthesize` (20 samples per source);
  - the bytes of a sample (image + mask) written as PNG with compress_level 6, as
    pipeline/synthesize.py writes it, and with the image as JPEG quality 95 (masks stay PNG:
    JPEG would smear their 0/255 edge);
  - the 16× rotation/flip augmentation (`btbnet.augment.augment`, indices 0…15) on a few
    samples per source: materialised on disk (bytes of the 16 versions, encode time) versus
    applied at load time (the augment time alone, paid on every read; the PNG decode time is
    shown beside it because every read pays that too).
Then extrapolates to the paper: 2000 sources → 40,000 samples (640,000 with augmentation).

    python bench/bench_synthesize.py [--sources DIR] [--limit N] [--augmented-per-source K] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from btbnet.augment import NUM_AUGMENTATIONS, augment
from btbnet.data import DataError, list_images, load_rgb
from btbnet.synthesis import DIRECTIONS, LEVELS, Sample, synthesize

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCES = REPO_ROOT / "data" / "embedded" / "sources"

SAMPLES_PER_SOURCE = len(DIRECTIONS) * len(LEVELS)  # 20
PAPER_SOURCES = 2000  # BSDS500 + UCID, section 4.1
PAPER_SAMPLES = PAPER_SOURCES * SAMPLES_PER_SOURCE  # 40,000
PAPER_AUGMENTED = PAPER_SAMPLES * NUM_AUGMENTATIONS  # 640,000

PNG_OPTIONS = {"format": "PNG", "compress_level": 6}  # as pipeline/synthesize.py writes
JPEG_OPTIONS = {"format": "JPEG", "quality": 95}


@dataclass
class SourceFigures:
    """What one source image costs. Bytes are per sample (image + mask), averaged over its samples."""

    name: str
    height: int
    width: int
    synth_s: float  # synthesize(): all 20 samples
    png_encode_s: float  # encode all 20 samples (image + mask) as PNG
    png_bytes: float  # per sample: image PNG + mask PNG
    jpeg_bytes: float  # per sample: image JPEG q95 + mask PNG
    png_decode_s: float  # per sample: decode image PNG + mask PNG
    augmented_png_bytes: float = 0.0  # per sample: the 16 versions, image + mask PNG
    augmented_jpeg_bytes: float = 0.0  # per sample: the 16 versions, image JPEG q95 + mask PNG
    augment_s: list[float] = field(default_factory=list)  # one augment() call, per version
    materialise_s: float = 0.0  # per sample: augment + PNG-encode all 16 versions


def encode(array: np.ndarray, options: dict[str, Any]) -> bytes:
    """`array` encoded in memory with PIL (uint8 [H, W, 3] or [H, W])."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, **options)
    return buffer.getvalue()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def chosen_samples(k: int) -> list[int]:
    """Indices of `k` of the 20 samples with varied direction and level.

    Sample j is (direction j mod 4, level j mod 5): distinct for j < 20 (4 and 5 are coprime),
    so k = 4 gives up 1, down 2, left 3, right 4 and k = 20 gives all of them.
    """
    return [(j % len(DIRECTIONS)) * len(LEVELS) + j % len(LEVELS) for j in range(k)]


def measure_source(path: Path, augmented_per_source: int) -> SourceFigures:
    image = load_rgb(path)  # [H, W, 3] uint8
    samples, synth_s = timed(lambda: synthesize(image))
    pngs, png_encode_s = timed(lambda: [(encode(s.image, PNG_OPTIONS), encode(s.mask, PNG_OPTIONS)) for s in samples])
    jpeg_images = [encode(s.image, JPEG_OPTIONS) for s in samples]
    _, decode_s = timed(lambda: [(decode(img), decode(mask)) for img, mask in pngs])
    figures = SourceFigures(
        name=path.name,
        height=image.shape[0],
        width=image.shape[1],
        synth_s=synth_s,
        png_encode_s=png_encode_s,
        png_bytes=statistics.mean(len(img) + len(mask) for img, mask in pngs),
        jpeg_bytes=statistics.mean(len(jpg) + len(mask) for jpg, (_, mask) in zip(jpeg_images, pngs)),
        png_decode_s=decode_s / len(pngs),
    )
    if augmented_per_source:
        measure_augmentation(figures, [samples[i] for i in chosen_samples(augmented_per_source)])
    return figures


def measure_augmentation(figures: SourceFigures, samples: list[Sample]) -> None:
    """Fill in the augmentation figures of `figures` from the 16 versions of each of `samples`."""
    png_bytes, jpeg_bytes, materialise_s = [], [], []
    for sample in samples:
        png_total, versions = 0, []
        start = time.perf_counter()  # materialising = augment + PNG-encode every version
        for index in range(NUM_AUGMENTATIONS):
            (image, mask), seconds = timed(lambda: augment(sample.image, sample.mask, index))
            figures.augment_s.append(seconds)
            mask_png = encode(mask, PNG_OPTIONS)
            png_total += len(encode(image, PNG_OPTIONS)) + len(mask_png)
            versions.append((image, len(mask_png)))
        materialise_s.append(time.perf_counter() - start)
        png_bytes.append(png_total)
        jpeg_bytes.append(sum(len(encode(image, JPEG_OPTIONS)) + mask_bytes for image, mask_bytes in versions))
    figures.augmented_png_bytes = statistics.mean(png_bytes)
    figures.augmented_jpeg_bytes = statistics.mean(jpeg_bytes)
    figures.materialise_s = statistics.mean(materialise_s)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


@dataclass(frozen=True)
class Summary:
    """Means over the measured sources, and the same extrapolated to the paper's scale."""

    sources: int
    mean_megapixels: float
    synth_s_per_source: float
    png_encode_s_per_sample: float
    png_decode_s_per_sample: float
    png_bytes_per_sample: float
    jpeg_bytes_per_sample: float
    augmented_png_bytes_per_sample: float  # 16 versions
    augmented_jpeg_bytes_per_sample: float  # 16 versions
    augment_s_per_version: float
    materialise_s_per_sample: float  # augment + PNG-encode 16 versions


def summarize(figures: list[SourceFigures]) -> Summary:
    mean = statistics.mean
    augment_times = [t for f in figures for t in f.augment_s]
    return Summary(
        sources=len(figures),
        mean_megapixels=mean(f.height * f.width / 1e6 for f in figures),
        synth_s_per_source=mean(f.synth_s for f in figures),
        png_encode_s_per_sample=mean(f.png_encode_s for f in figures) / SAMPLES_PER_SOURCE,
        png_decode_s_per_sample=mean(f.png_decode_s for f in figures),
        png_bytes_per_sample=mean(f.png_bytes for f in figures),
        jpeg_bytes_per_sample=mean(f.jpeg_bytes for f in figures),
        augmented_png_bytes_per_sample=mean(f.augmented_png_bytes for f in figures),
        augmented_jpeg_bytes_per_sample=mean(f.augmented_jpeg_bytes for f in figures),
        augment_s_per_version=mean(augment_times) if augment_times else 0.0,
        materialise_s_per_sample=mean(f.materialise_s for f in figures),
    )


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def human_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{1000 * s:.1f} ms"


def disk_table(s: Summary, with_augmentation: bool) -> str:
    """Disk of each storage choice for the paper's 40,000 samples."""
    lines = [
        "| images stored as | 16× augmentation | files on disk (image + mask) | bytes per stored pair "
        "| disk at paper scale |",
        "|---|---|---:|---:|---:|",
        f"| PNG, level 6 (the pipeline) | at load time | {PAPER_SAMPLES:,} × 2 "
        f"| {human_bytes(s.png_bytes_per_sample)} | {human_bytes(s.png_bytes_per_sample * PAPER_SAMPLES)} |",
        f"| JPEG q95 (masks PNG) | at load time | {PAPER_SAMPLES:,} × 2 "
        f"| {human_bytes(s.jpeg_bytes_per_sample)} | {human_bytes(s.jpeg_bytes_per_sample * PAPER_SAMPLES)} |",
    ]
    if with_augmentation:
        for label, per_sample in (
            ("PNG, level 6", s.augmented_png_bytes_per_sample),
            ("JPEG q95 (masks PNG)", s.augmented_jpeg_bytes_per_sample),
        ):
            lines.append(
                f"| {label} | materialised | {PAPER_AUGMENTED:,} × 2 | {human_bytes(per_sample / NUM_AUGMENTATIONS)} "
                f"| {human_bytes(per_sample * PAPER_SAMPLES)} |"
            )
    return "\n".join(lines)


def time_table(s: Summary, with_augmentation: bool) -> str:
    """CPU time of each step, measured and at the paper's scale (one core)."""
    lines = [
        "| step | measured | at paper scale, one core |",
        "|---|---:|---:|",
        f"| synthesize 20 samples (`btbnet.synthesis.synthesize`) | {human_seconds(s.synth_s_per_source)} / source "
        f"| {human_seconds(s.synth_s_per_source * PAPER_SOURCES)} for {PAPER_SOURCES:,} sources |",
        f"| write a sample as PNG (image + mask) | {human_seconds(s.png_encode_s_per_sample)} / sample "
        f"| {human_seconds(s.png_encode_s_per_sample * PAPER_SAMPLES)} for {PAPER_SAMPLES:,} |",
        f"| read a sample's PNGs (every training read) | {human_seconds(s.png_decode_s_per_sample)} / read "
        f"| {human_seconds(s.png_decode_s_per_sample * PAPER_AUGMENTED)} per epoch of {PAPER_AUGMENTED:,} |",
    ]
    if with_augmentation:
        lines += [
            f"| augment at load time (one `augment` call) | {human_seconds(s.augment_s_per_version)} / read "
            f"| {human_seconds(s.augment_s_per_version * PAPER_AUGMENTED)} per epoch of {PAPER_AUGMENTED:,} |",
            f"| materialise 16 versions (augment + PNG) | {human_seconds(s.materialise_s_per_sample)} / sample "
            f"| {human_seconds(s.materialise_s_per_sample * PAPER_SAMPLES)} once, for {PAPER_SAMPLES:,} |",
        ]
    return "\n".join(lines)


def measured_table(s: Summary) -> str:
    """Means per sample (image + mask); the ×16 columns hold all 16 augmented versions of a sample."""
    return "\n".join(
        [
            "| sources | mean size | PNG bytes / sample | JPEG q95 bytes / sample | ×16 PNG bytes / sample "
            "| ×16 JPEG bytes / sample |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {s.sources} | {s.mean_megapixels:.3f} MP | {human_bytes(s.png_bytes_per_sample)} "
            f"| {human_bytes(s.jpeg_bytes_per_sample)} | {human_bytes(s.augmented_png_bytes_per_sample)} "
            f"| {human_bytes(s.augmented_jpeg_bytes_per_sample)} |",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="folder of clear images")
    parser.add_argument("--limit", type=int, help="use only the first N images (sorted by name)")
    parser.add_argument(
        "--augmented-per-source",
        type=int,
        default=4,
        help="samples per source whose 16 versions are measured (0…20; 0 skips the augmentation figures)",
    )
    parser.add_argument("--json", type=Path, help="also write the per-source figures and the summary here")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: must be >= 1, got {args.limit}")
    if not 0 <= args.augmented_per_source <= SAMPLES_PER_SOURCE:
        parser.error(f"--augmented-per-source: must be in 0…{SAMPLES_PER_SOURCE}, got {args.augmented_per_source}")
    return args


def measure_all(paths: list[Path], augmented_per_source: int) -> list[SourceFigures]:
    figures = []
    for i, path in enumerate(paths):
        figures.append(measure_source(path, augmented_per_source))
        print(f"  [{i + 1}/{len(paths)}] {path.name}: synthesis {figures[-1].synth_s:.2f} s", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        figures = measure_all(list_images(args.sources)[: args.limit], args.augmented_per_source)
    except DataError as exc:  # the message names the folder or file
        sys.exit(f"bench_synthesize.py: error: {exc}")
    summary = summarize(figures)
    augmented = args.augmented_per_source > 0

    print(f"{summary.sources} sources from {args.sources}, mean {summary.mean_megapixels:.3f} megapixels")
    print(f"augmentation measured on {args.augmented_per_source} of the 20 samples of each source\n")
    print(measured_table(summary))
    print(f"\nDisk at the paper's scale: {PAPER_SOURCES:,} sources → {PAPER_SAMPLES:,} samples "
          f"({PAPER_AUGMENTED:,} with augmentation), at this mean source size:\n")
    print(disk_table(summary, augmented))
    print("\nCPU time (single process):\n")
    print(time_table(summary, augmented))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"sources": str(args.sources), "summary": asdict(summary), "per_source": [asdict(f) for f in figures]}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
