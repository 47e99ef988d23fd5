"""Focus maps for a large folder on Ray Data, resumable: `python -m pipeline.commands.batch_predict IN_DIR OUT_DIR`.

    python -m pipeline.commands.batch_predict IN_DIR OUT_DIR [--model NAME_OR_CKPT] [--max-size N] [--max-pixels M]
                                     [--tta none|flip|dihedral] [--batch-size N] [--actors N] [--address RAY_ADDRESS]

Writes OUT_DIR/<stem>.png for every image of IN_DIR (`btbnet.data.list_images`): the maps
`btbnet predict IN_DIR --out OUT_DIR` writes (same model, same scale, same pixel budget, same `--tta`), named
from the input. An image whose map is already in OUT_DIR is skipped, so a run that was killed
resumes where it stopped when it is run again; every map is written to a hidden temporary file
and renamed into place (`btbnet.io.save_png`), so a killed run leaves whole maps or none
(a hidden `.<stem>.png.*.tmp` left by a SIGKILL is removed by the next run).

All inputs are checked first (a missing folder, a bad model, two images with one stem, an
image over the pixel budget: `batch_predict: error: <message>`, exit 2, before Ray starts).
Then `Dataset.map_batches` runs `Predictor`, a callable class, on a pool of `--actors` actors
of one CPU each (default: one per CPU of the Ray cluster): each actor loads the model once and
writes the maps of its batches itself (`btbnet.files.predict_jobs`: images the model sees at
the same size go through it `--batch-size` at a time), returning only names and timings. The
actors read IN_DIR and write OUT_DIR at the paths the driver gives, so on a cluster both must
be on a file system every node mounts.

Ray: `--address` (or $RAY_ADDRESS), as the stages connect (`pipeline.runtime.cluster.init_ray`); without
one a local Ray instance is started for the run and shut down after it. An unreadable image
does not stop the others: the run ends with an error naming it (exit 2) after writing the rest.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from btbnet.cli import add_tta_argument, positive_int
from btbnet.files import Job, plan_jobs, predict_jobs
from btbnet.predict import DEFAULT_TTA, MAX_PIXELS, OverBudget, check_views, with_views
from btbnet.pretrained import DEFAULT, load_model

from ..runtime import cluster, stage
from ..runtime.process import skip_final_collection

NAME = "batch_predict"
EXIT_USAGE = 2
CPUS_PER_ACTOR = 1  # each actor runs torch on one thread; more actors use more CPUs
BLOCKS_PER_ACTOR = 4  # Ray Data blocks per actor: enough to balance the pool, few enough to be cheap


@dataclass(frozen=True)
class Timing:
    """Seconds from the first batch sent to the last back, and to the first back (the actors'
    start-up and one batch), and how many images that first batch held."""

    seconds: float = 0.0
    first_s: float = 0.0
    first_images: int = 0

    def steady_rate(self, images: int) -> float | None:
        """Images/s of `images` in all once the first batch was back (None if it was the only one)."""
        later = images - self.first_images
        return later / (self.seconds - self.first_s) if later > 0 and self.seconds > self.first_s else None


@dataclass(frozen=True)
class Summary:
    """What a run did: maps written, images skipped (their maps were there), the unreadable
    images' errors, and its `Timing`."""

    done: int
    skipped: int
    errors: list[str]
    timing: Timing = Timing()

    @property
    def seconds(self) -> float:
        return self.timing.seconds

    def line(self, out_dir: Path) -> str:
        rate = f"{self.done / self.seconds:.2f} images/s" if self.done and self.seconds else "– images/s"
        failed = f", {len(self.errors)} failed" if self.errors else ""
        first = f", the first back after {self.timing.first_s:.1f} s" if self.done else ""
        return f"{NAME}: {self.done} done, {self.skipped} skipped{failed}, {rate} ({self.seconds:.1f} s{first}) -> {out_dir}"


class Predictor:
    """Ray Data callable class: one per actor, the model loaded once; each call writes the maps
    of a batch of rows {"source", "map"} and returns {"source", "seconds", "error"} per row
    ("error": "" when its map was written)."""

    def __init__(self, model: str, max_size: int | None, max_pixels: int | None, batch_size: int, tta: str = DEFAULT_TTA):
        torch.set_num_threads(CPUS_PER_ACTOR)
        self.model = with_views(load_model(model)[0], tta)
        self.max_size, self.max_pixels, self.batch_size = max_size, max_pixels, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        jobs = [Job(Path(str(source)), Path(str(map_path))) for source, map_path in zip(batch["source"], batch["map"])]
        rows: dict[str, list[Any]] = {"source": [], "seconds": [], "error": []}
        for done in predict_jobs(self.model, jobs, self.max_size, "cpu", self.max_pixels, self.batch_size):
            rows["source"].append(str(done.job.source))
            rows["seconds"].append(done.seconds)
            rows["error"].append("" if done.error is None else str(done.error))
        return rows


def plan(in_dir: Path, out_dir: Path, max_size: int | None, max_pixels: int | None) -> tuple[list[Job], int]:
    """(the jobs still to do, how many images are skipped: their maps exist); every image is
    checked first (`btbnet.files.plan_jobs`), and temporary files of a killed run removed."""
    if not in_dir.is_dir():
        raise FileNotFoundError(f"{in_dir}: no such folder")
    jobs = plan_jobs([in_dir], out_dir, False, max_size, max_pixels)
    for stale in out_dir.glob(".*.png.*.tmp") if out_dir.is_dir() else []:
        stale.unlink(missing_ok=True)
    todo = [job for job in jobs if not job.map_path.exists()]
    return todo, len(jobs) - len(todo)


def run_batches(
    todo: Sequence[Job], model: str, max_size: int | None, max_pixels: int | None, batch_size: int, actors: int,
    tta: str = DEFAULT_TTA,
) -> tuple[list[str], Timing]:
    """Write the maps of `todo` on the running Ray instance; (the errors, how long it took)."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    blocks = max(1, min(math.ceil(len(todo) / batch_size), actors * BLOCKS_PER_ACTOR))
    items = [{"source": str(job.source), "map": str(job.map_path)} for job in todo]
    start = time.perf_counter()
    results = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        Predictor,
        fn_constructor_kwargs={"model": model, "max_size": max_size, "max_pixels": max_pixels, "batch_size": batch_size,
                               "tta": tta},  # fmt: skip
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=CPUS_PER_ACTOR,
    )
    errors: list[str] = []
    first: tuple[float, int] | None = None
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        errors += [str(error) for error in batch["error"] if error]
        first = first or (time.perf_counter() - start, len(batch["error"]))
    return errors, Timing(time.perf_counter() - start, *(first or (0.0, 0)))


def connect(address: str | None) -> bool:
    """Join Ray at `address` (else $RAY_ADDRESS, else a new local instance), unless this process
    is already connected; True if this call connected (the caller then shuts Ray down)."""
    import ray

    if ray.is_initialized():
        return False
    cluster.init_ray(address=address)
    return True


def batch_predict(
    in_dir: Path,
    out_dir: Path,
    model: str = DEFAULT,
    max_size: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
    batch_size: int = 1,
    actors: int | None = None,
    address: str | None = None,
    tta: str = DEFAULT_TTA,
) -> Summary:
    """Write the missing maps of `in_dir` into `out_dir` (see the module doc); what was done.

    max_size: None: the model's own scale (as `btbnet predict`: a release's, or a checkpoint's
    training scale). actors: None: one per CPU of the Ray cluster. Ray is started (or joined) only when there is work to do.
    """
    import ray

    _, scale = load_model(model)  # a bad model or views name is refused before any work
    check_views(tta, "tta")
    max_size = max_size or scale
    todo, skipped = plan(in_dir, out_dir, max_size, max_pixels)
    if not todo:
        return Summary(0, skipped, [])
    connected = connect(address)
    try:
        pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // CPUS_PER_ACTOR)
        errors, timing = run_batches(todo, model, max_size, max_pixels, batch_size, min(pool, len(todo)), tta)
    finally:
        if connected:
            ray.shutdown()
    return Summary(len(todo) - len(errors), skipped, errors, timing)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of images")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder of the maps, created if missing")
    parser.add_argument("--model", default=DEFAULT, metavar="NAME_OR_CKPT",
                        help=f"a released model (default {DEFAULT}) or a checkpoint written by btbnet training")
    parser.add_argument("--max-size", type=positive_int, metavar="N",
                        help="run the model on images downscaled to at most N px (default: a released model's scale; a checkpoint's training scale)")
    parser.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="M",
                        help=f"refuse an image the model would see at more than M pixels (default: {MAX_PIXELS:,})")
    add_tta_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="images per Ray Data batch; those of one size go through the model together")
    parser.add_argument("--actors", type=positive_int, metavar="N",
                        help="actors, one CPU and one model each (default: one per CPU of the Ray cluster)")
    parser.add_argument("--address", metavar="RAY_ADDRESS",
                        help="a running Ray cluster (default: $RAY_ADDRESS, else a local instance for this run)")
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; the exit status (0, 2 for bad input or unreadable images, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        summary = batch_predict(args.in_dir, args.out_dir, args.model, args.max_size, args.max_pixels,
                                args.batch_size, args.actors, args.address, args.tta)  # fmt: skip
    except OverBudget as exc:
        return fail(exc.advise("--max-size {}", "--max-pixels {}"))
    except stage.ERRORS + (OSError,) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted; the maps written so far are whole, run again to finish", file=sys.stderr)
        return stage.INTERRUPTED
    print(summary.line(args.out_dir))
    if summary.errors:
        more = f" (and {len(summary.errors) - 1} more unreadable images)" if len(summary.errors) > 1 else ""
        return fail(f"{sorted(summary.errors)[0]}{more}; the other maps are written")
    return 0


def fail(message: str) -> int:
    stage.last_line(f"{NAME}: error: {message}")
    return EXIT_USAGE


if __name__ == "__main__":
    skip_final_collection()
    sys.exit(main())
