"""Stage `synthesize`: the paper's simulated pre-training set (section 4.1), on Ray Data.

Reads `synthesize`. Each clear source image gives 20 samples (`mode: paper`: 4 blurred halves ×
5 Gaussian levels; `mode: lens`: shaped subjects against disc blur of varying radius;
`btbnet.synthesis`), written as `<out_dir>/image/<name>_<direction>_<level>.png` (lens:
`<name>_lens_<k>.png`) and `<out_dir>/gt/<same>.png` (255 = in focus). `btbnet.synthesis.encode_samples` runs inside
`map_batches` (one stateless task per block, as many at once as there are CPUs, on any node of
the cluster); the tasks get each source's bytes from the driver and send the PNGs back, and the
driver writes them, named from the input: no node needs a file system shared with the driver,
and identical params give byte-identical outputs (DVC caches by content). The 16× rotation/flip augmentation is applied at load time by the
training stages (docs/design.md: augmentation at load time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow  # pipeline/__init__ has set its environment
import numpy as np

from btbnet.augment import NUM_AUGMENTATIONS
from btbnet.config import check_int, to_dict
from btbnet.data import DataError, load_rgb
from btbnet.synthesis import MODES, Source, encode_samples, find_sources, sample_names, sample_paths

from .runtime import cluster, stage
from .runtime.figures import image_grid
from .runtime.params import Params, ParamsError, resolve
from .runtime.tracking import stage_run

NAME = "synthesize"


@dataclass(frozen=True)
class SynthesizeConfig:
    """source_root: the folder holding every source folder (the stage's DVC dependency);
    sources: folders of clear images below it, searched recursively; max_size: sources are
    shrunk so their longer side is at most this (None: kept); mode: "paper" (section 4.1's
    half-blurred images) or "lens" (shaped subjects, disc blur; `btbnet.synthesis`); seed: the
    lens mode's draws; blocks_per_cpu: Ray Data blocks per available CPU."""

    source_root: str
    sources: tuple[str, ...]
    out_dir: str
    metrics: str
    max_size: int | None = None
    mode: str = "paper"
    seed: int = 0
    blocks_per_cpu: int = 4

    def __post_init__(self) -> None:
        if not self.sources:
            raise ParamsError("sources", "must list at least one folder")
        if self.mode not in MODES:
            raise ParamsError("mode", f"must be one of {MODES}, got {self.mode!r}")
        check_int("seed", self.seed, 0)
        check_int("max_size", self.max_size, 8, allow_none=True)
        check_int("blocks_per_cpu", self.blocks_per_cpu, 1)

    @property
    def outputs(self) -> tuple[Path, ...]:
        return resolve(self.out_dir), resolve(self.metrics)


def configure(params: Params) -> SynthesizeConfig:
    return params.build(SynthesizeConfig, NAME)


def encode_batch(batch: dict[str, np.ndarray], max_size: int | None, mode: str, seed: int) -> dict[str, list[Any]]:
    """Ray Data batch function (a stateless task): each source's 20 samples as files, a row per
    file ("file": its path below the set, "data": its bytes); a bad source gives one row with
    its error and no file."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    rows: dict[str, list[Any]] = {"name": [], "file": [], "data": [], "error": [], "node": []}
    for path, name, content in zip(batch["path"], batch["name"], batch["content"]):
        try:
            files, error = encode_samples(Source(Path(path), name), max_size, bytes(content), mode, seed), ""
        except DataError as exc:
            files, error = [("", b"")], str(exc)
        for file, data in files:
            for key, value in zip(rows, (name, file, data, error, node)):
                rows[key].append(value)
    return rows


def write_all(sources: list[Source], staging: Path, s: SynthesizeConfig) -> list[dict[str, Any]]:
    """Synthesise every source in parallel on Ray Data and write the files in `staging` as they
    stream back; one result row per source (name, samples, bytes, error, node)."""
    import ray

    cluster.init_ray()
    blocks = min(len(sources), max(1, int(ray.available_resources().get("CPU", 1)) * s.blocks_per_cpu))
    items = [{"path": str(src.path), "name": src.name, "content": src.path.read_bytes()} for src in sources]
    files = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        encode_batch, fn_kwargs={"max_size": s.max_size, "mode": s.mode, "seed": s.seed}, batch_size=1, num_cpus=1
    )
    rows = {src.name: {"name": src.name, "samples": 0, "bytes": 0, "error": "", "node": ""} for src in sources}
    for batch in files.iter_batches(batch_size=None, batch_format="numpy"):
        for name, file, data, error, node in zip(batch["name"], batch["file"], batch["data"], batch["error"], batch["node"]):
            row = rows[str(name)]
            row["error"], row["node"] = str(error), str(node)
            if file:
                (staging / str(file)).write_bytes(bytes(data))
                row["samples"] += int(str(file).startswith("image/"))
                row["bytes"] += len(data)
    return list(rows.values())


def preview(out: Path, name: str, mode: str) -> np.ndarray:
    """The 20 samples of one source (paper: a row per direction, a column per level)."""
    return image_grid([[load_rgb(sample_paths(out, stem)[0]) for stem in row] for row in sample_names(name, mode)])


def run(s: SynthesizeConfig) -> None:
    sources = find_sources(resolve(s.source_root), s.sources)
    out = resolve(s.out_dir)
    with stage_run(NAME, {NAME: to_dict(s)}):
        with stage.staged(out) as staging:
            for sub in ("image", "gt"):
                (staging / sub).mkdir(parents=True)
            rows = write_all(sources, staging, s)
            errors = sorted(r["error"] for r in rows if r["error"])
            if errors:  # raised inside `staged`: the partial set is discarded, never moved to `out`
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more bad sources)" if len(errors) > 1 else ""))
        samples = int(sum(r["samples"] for r in rows))
        metrics = {
            "sources": len(rows),
            "samples": samples,
            "samples_with_augmentation": samples * NUM_AUGMENTATIONS,
            "bytes": int(sum(r["bytes"] for r in rows)),
            "ray_nodes": len({r["node"] for r in rows}),  # nodes the tasks ran on
        }
        stage.write_json(resolve(s.metrics), metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(resolve(s.metrics)))
        mlflow.log_image(preview(out, sources[0].name, s.mode), "samples.png")
    print(f"synthesize: {samples} samples from {len(rows)} sources, {metrics['bytes'] / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    stage.main(NAME, configure, run)
