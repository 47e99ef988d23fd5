"""`btbnet predict` on files: every input checked first, images the model sees at one size in
batches, decoding and encoding on threads while the model runs, every map (and overlay) written
atomically, and a line or a bar per file (`btbnet.predict` makes the maps themselves).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .data import DataError, image_size, list_images, load_rgb
from .images import fit_within
from .io import save_png
from .overlay import overlay
from .config import check_int
from .predict import MAX_PIXELS, check_budget, check_limits, predict_maps
from .speed import SpeedConfig

# Threads that decode images and encode PNGs while the model runs (PIL and zlib release the GIL).
IO_THREADS = 2
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One input image and the files it gives: its map and, if asked for, its overlay."""

    source: Path
    map_path: Path
    overlay_path: Path | None = None


@dataclass(frozen=True)
class Done:
    """A finished job: the image's (H, W) (None if unreadable), the seconds it took (its decode,
    its share of the batch's forward pass, its encode), the written paths, or the `error` that
    kept it from being written (then nothing is)."""

    job: Job
    size: tuple[int, int] | None
    seconds: float
    written: list[Path]
    error: DataError | None = None


def predict_paths(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    overlay: bool = False,
    max_size: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
    batch_size: int = 1,
    stream: TextIO | None = None,
    speed: SpeedConfig = SpeedConfig(),
) -> list[Path]:
    """Write a focus map for every input image; returns the written paths in input order.

    inputs:  image files and folders (a folder contributes `btbnet.data.list_images`).
    Writes `out_dir/<stem>.png` (8-bit grey, mode "L") per image and, with `overlay`,
    `out_dir/<stem>_overlay.png` (see `btbnet.overlay.overlay`). All inputs are checked before
    anything is written (`plan_jobs`). Each PNG is written to a temporary file and renamed into
    place, so `out_dir` never holds a partial file; an unreadable image raises
    `btbnet.data.DataError` naming it (maps written before it stay).
    batch_size: up to this many images the model sees at the same size go through it together
             (`predict_jobs`); the maps are those of batch size 1.
    progress: report on `stream` (default stderr): on a terminal a tqdm bar (several images);
             elsewhere (logs, CI, pipes) a line per file as it is written,
             `photo.jpg -> maps/photo.png (640×480, 0.42 s)`.
    """
    jobs = plan_jobs(inputs, out_dir, overlay, max_size, max_pixels)
    written: dict[Path, list[Path]] = {}
    with Progress(len(jobs), progress, stream) as report:
        for done in predict_jobs(model, jobs, max_size, device, max_pixels, batch_size, speed):
            if done.error is not None:
                raise done.error
            written[done.job.source] = done.written
            report.done(done)
    return [path for job in jobs for path in written[job.source]]


def writable_folder(out_dir: str | Path) -> Path:
    """`out_dir` once it is known that the maps can be written there: it is a folder, or can be
    made in the nearest folder above it that exists, and a file can be made (and is removed
    again) in that folder. ValueError in one line naming it otherwise: a file of that name, a
    read-only or forbidden place. Nothing is left behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: not a folder (a file has that name); the maps go in a folder")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{out_dir}: cannot be made, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"{out_dir}: cannot write there ({exc.strerror or exc})") from None
    return out_dir


def plan_jobs(
    inputs: Sequence[str | Path], out_dir: str | Path, overlay: bool, max_size: int | None, max_pixels: int | None
) -> list[Job]:
    """The jobs of `inputs`, all checked before any work: a missing path raises
    FileNotFoundError, two inputs claiming the same output name (same stem) raise ValueError
    naming both, an output folder that is a file or cannot be written raises ValueError naming
    it (`writable_folder`), and an image the model would see at more than `max_pixels` pixels
    (see `predict_map`; read from its header) raises `OverBudget` naming it."""
    check_limits(max_size, max_pixels)
    jobs = [Job(*job) for job in plan_outputs(expand_inputs(inputs), Path(out_dir), overlay)]
    writable_folder(out_dir)
    for job in jobs:
        if (size := header_size(job.source)) is not None:
            check_budget(size, max_size, max_pixels, what=str(job.source))
    return jobs


def predict_jobs(
    model: nn.Module,
    jobs: Sequence[Job],
    max_size: int | None = None,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
    batch_size: int = 1,
    speed: SpeedConfig = SpeedConfig(),
) -> Iterator[Done]:
    """Run `jobs`, a `Done` per job as its files are written (in batch order, see `plan_batches`).

    Images the model sees at the same size (read from their headers) are batched, at most
    `batch_size` of them and at most `max_pixels` pixels per batch. While the model runs on
    one batch, IO_THREADS threads decode the next one and encode the previous one's PNGs. An
    unreadable image is a `Done` with its `error` (the rest go on); the caller decides.
    """
    check_int("batch_size", batch_size, 1)
    model = getattr(model, "module", model)  # DistributedDataParallel's model (a compiled one stays compiled)
    batches = plan_batches([header_size(job.source) for job in jobs], max_size, max_pixels, batch_size)
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="btbnet-io") as pool:
        def load(batch: list[int]) -> list[Future]:
            return [pool.submit(timed, load_rgb, jobs[i].source) for i in batch]

        loading, writing = load(batches[0]) if batches else [], []
        for k, batch in enumerate(batches):
            loaded = [future.result() for future in loading]  # (image or DataError, seconds)
            loading = load(batches[k + 1]) if k + 1 < len(batches) else []
            good = [(jobs[i], image, s) for i, (image, s) in zip(batch, loaded) if not isinstance(image, DataError)]
            for i, (error, s) in zip(batch, loaded):
                if isinstance(error, DataError):
                    yield Done(jobs[i], None, s, [], error)
            start = time.perf_counter()
            maps = predict_maps(model, [image for _, image, _ in good], max_size, device, max_pixels, speed)
            share = (time.perf_counter() - start) / max(1, len(good))
            yield from finish(writing)
            writing = [(job, image.shape[:2], s + share, pool.submit(timed, write_outputs, job, image, focus_map))
                       for (job, image, s), focus_map in zip(good, maps)]  # fmt: skip
        yield from finish(writing)


def plan_batches(
    sizes: Sequence[tuple[int, int] | None], max_size: int | None, max_pixels: int | None, batch_size: int
) -> list[list[int]]:
    """Indices of `sizes` (image (H, W), None if unknown) grouped into batches: the same size
    for the model, at most `batch_size` images and `max_pixels` pixels each (an unknown size is
    a batch of its own); ordered by their first image."""
    groups: dict[object, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(fit_within(size, max_size) if size is not None else i, []).append(i)
    batches = []
    for key, members in groups.items():
        cap = batch_size
        if isinstance(key, tuple) and max_pixels is not None:
            cap = max(1, min(batch_size, max_pixels // math.prod(key)))
        batches += [members[j : j + cap] for j in range(0, len(members), cap)]
    return sorted(batches, key=lambda batch: batch[0])


def timed(fn: Callable[..., T], *args: object) -> tuple[T | DataError, float]:
    """(fn(*args), seconds); a DataError is returned in place of the result, not raised."""
    start = time.perf_counter()
    try:
        result = fn(*args)
    except DataError as exc:
        result = exc
    return result, time.perf_counter() - start


def finish(writing: list[tuple[Job, tuple[int, int], float, Future]]) -> Iterator[Done]:
    """A `Done` per write in flight, in order, once it has finished (its errors raised)."""
    for job, size, seconds, future in writing:
        written, encode_s = future.result()
        yield Done(job, size, seconds + encode_s, written)


def write_outputs(job: Job, image: np.ndarray, focus_map: np.ndarray) -> list[Path]:
    """Write the map of `job` (and its overlay, if it has a path); the written paths."""
    written = [save_png(focus_map, job.map_path)]
    if job.overlay_path is not None:
        written.append(save_png(overlay(image, focus_map), job.overlay_path))
    return written


class Progress:
    """How `predict_paths` reports finished files on `stream` (default stderr): a tqdm bar when
    it is a terminal (for several files), else one line per file (no carriage-return frames in
    logs); nothing when not `enabled`."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        terminal = is_terminal(self.stream)
        self.lines = enabled and not terminal
        self.bar = tqdm(total=total, desc="btbnet predict", unit="image", file=self.stream,
                        disable=not (enabled and terminal) or total < 2)  # fmt: skip

    def done(self, done: Done) -> None:
        if self.lines:
            print(describe_done(done), file=self.stream, flush=True)
        self.bar.update(1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def describe_done(done: Done) -> str:
    """`photo.jpg -> maps/photo.png (640×480, 0.42 s)`: a finished file for a log."""
    size = f"{done.size[1]}×{done.size[0]}, " if done.size else ""
    return f"{done.job.source} -> {', '.join(map(str, done.written))} ({size}{done.seconds:.2f} s)"


def header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of the image file as viewers show it, from its header, without decoding it;
    None if PIL cannot open it (`load_rgb` then says why)."""
    try:
        width, height = image_size(path)
    except Exception:  # unreadable, or a decompression bomb: left to load_rgb's error
        return None
    return height, width


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of `inputs`, folders expanded, in order; a file listed twice counts once."""
    if not inputs:
        raise ValueError("inputs: no image or folder given")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    unique = {f.resolve(): f for f in reversed(files)}  # keeps each file's first occurrence
    return [f for f in files if unique[f.resolve()] is f]


def plan_outputs(files: list[Path], out_dir: Path, overlay: bool) -> list[tuple[Path, Path, Path | None]]:
    """(source, map path, overlay path or None) per file; ValueError on a name clash."""
    sources = {f.resolve() for f in files}
    claimed: dict[Path, Path] = {}  # output path → the input that writes it
    jobs = []
    for source in files:
        map_path = out_dir / f"{source.stem}.png"
        overlay_path = out_dir / f"{source.stem}_overlay.png" if overlay else None
        for out in filter(None, (map_path, overlay_path)):
            if out in claimed:
                raise ValueError(f"{claimed[out]} and {source} would both be written to {out} (same file name stem)")
            if out.resolve() in sources:
                raise ValueError(f"{out}: output would overwrite an input image; choose another output folder")
            claimed[out] = source
        jobs.append((source, map_path, overlay_path))
    return jobs
