"""Stage `synthesize`: the paper's simulated pre-training set (section 4.1), on Ray Data.

Each clear source image gives 20 samples (4 blurred halves × 5 Gaussian levels), written as
`<out_dir>/image/<name>_<direction>_<level>.png` and `<out_dir>/gt/<same>.png` (255 = in focus).
Files are written by us inside `map_batches` and named from the input, so identical params give
byte-identical outputs (DVC caches by content). The 16× rotation/flip augmentation is applied
at load time by the training stages (see README: disk budget).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import mlflow  # pipeline/__init__ has set its environment

from btbnet.augment import NUM_AUGMENTATIONS
from btbnet.data import DataError, list_images, load_rgb
from btbnet.predict import fit_within
from btbnet.synthesis import DIRECTIONS, LEVELS, sample_name, synthesize

from . import stage
from .figures import image_grid
from .params import SynthesizeParams, as_dict, load_params, resolve
from .tracking import stage_run

PNG_OPTIONS = {"format": "PNG", "compress_level": 6}


def source_items(s: SynthesizeParams) -> list[dict[str, str]]:
    """(path, name) of every source image; names are unique and stable across runs."""
    root = resolve(s.source_root)
    items, seen = [], {}
    for folder in s.sources:
        prefix = "" if len(s.sources) == 1 else re.sub(r"[^A-Za-z0-9]+", "-", folder).strip("-") + "-"
        for path in list_images(root / folder):
            name = prefix + path.stem
            if name in seen:
                raise DataError(f"{path}: its name {name!r} clashes with {seen[name]}")
            seen[name] = path
            items.append({"path": str(path), "name": name})
    return items


def resize_to_max(image: np.ndarray, max_size: int | None) -> np.ndarray:
    h, w = fit_within(image.shape[:2], max_size)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


class WriteSamples:
    """Ray Data batch function: synthesise each source's 20 samples and write them to disk."""

    def __init__(self, out_dir: str, max_size: int | None):
        self.out_dir = Path(out_dir)
        self.max_size = max_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {"name": [], "samples": [], "bytes": [], "error": []}
        for path, name in zip(batch["path"], batch["name"]):
            written, error = [], ""
            try:
                image = resize_to_max(load_rgb(path), self.max_size)
                for sample in synthesize(image):
                    stem = sample_name(name, sample.direction, sample.level)
                    written += [self.out_dir / "image" / f"{stem}.png", self.out_dir / "gt" / f"{stem}.png"]
                    Image.fromarray(sample.image).save(written[-2], **PNG_OPTIONS)
                    Image.fromarray(sample.mask).save(written[-1], **PNG_OPTIONS)
            except (DataError, ValueError) as exc:
                error = f"{path}: {exc}" if str(path) not in str(exc) else str(exc)
            rows["name"].append(name)
            rows["samples"].append(len(written) // 2)
            rows["bytes"].append(sum(p.stat().st_size for p in written if p.exists()))
            rows["error"].append(error)
        return rows


def run() -> None:
    params = load_params()
    s = params.synthesize
    items = source_items(s)
    out = resolve(s.out_dir)
    with stage_run("synthesize", {"synthesize": as_dict(s)}):
        with stage.staged(out) as staging:
            for sub in ("image", "gt"):
                (staging / sub).mkdir(parents=True)
            rows = write_samples(items, staging, s)
            errors = sorted(r["error"] for r in rows if r["error"])
            if errors:  # raised inside `staged`: the partial set is discarded, never moved to `out`
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more bad sources)" if len(errors) > 1 else ""))
        samples = int(sum(r["samples"] for r in rows))
        metrics = {
            "sources": len(rows),
            "samples": samples,
            "samples_with_augmentation": samples * NUM_AUGMENTATIONS,
            "bytes": int(sum(r["bytes"] for r in rows)),
        }
        stage.write_json(resolve(s.metrics), metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(resolve(s.metrics)))
        mlflow.log_image(preview(out, items[0]["name"]), "samples.png")
    print(f"synthesize: {samples} samples from {len(rows)} sources, {metrics['bytes'] / 1e6:.1f} MB in {out}")


def write_samples(items: list[dict[str, str]], staging: Path, s: SynthesizeParams) -> list[dict[str, Any]]:
    """Synthesise every source in parallel on Ray Data; one result row per source."""
    import ray

    stage.init_ray()
    blocks = min(len(items), max(1, int(ray.available_resources().get("CPU", 1)) * s.blocks_per_cpu))
    return (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(WriteSamples, fn_constructor_args=(str(staging), s.max_size), batch_size=1, concurrency=(1, blocks))
        .take_all()
    )


def preview(out: Path, name: str) -> np.ndarray:
    """The 20 samples of one source: a row per direction, a column per level."""
    return image_grid(
        [[np.asarray(Image.open(out / "image" / f"{sample_name(name, d, lv)}.png")) for lv in LEVELS] for d in DIRECTIONS]
    )


if __name__ == "__main__":
    stage.main("synthesize", run)
