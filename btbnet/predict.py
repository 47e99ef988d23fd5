"""Inference: defocus blur detection maps for images and files.

A map is uint8 [H, W] at the image's own resolution, 255 = in focus, 0 = blurred: the
probability sigmoid(M_final) of the final map (eq. 5) scaled to 0…255. This is the "DBD map"
the paper binarises at every integer threshold for its PR curves (section 4.2).

Memory grows with the pixels the model sees, so an image it would see at more than
`max_pixels` (default MAX_PIXELS, counted after any `max_size` downscale) is refused with
`OverBudget` before anything is allocated. Images the model sees at the same size can go
through it together (`predict_maps`, `predict_paths(batch_size=N)`); the budget then counts
the whole batch, N images × their pixels, and gives the same maps as one image at a time.

Test-time views (`TestTimeViews`, `with_views`): a wrapped model averages the probabilities of
flipped / turned copies of its input; these functions run whatever model they are given once.
"""

from __future__ import annotations

import math
import os
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
import torch.nn.functional as F
from tqdm import tqdm

from .config import ConfigError
from .data import DataError, image_size, list_images, load_rgb, to_tensor
from .images import check_image, fit_within
from .io import save_png
from .model import Prediction, eval_mode
from .overlay import overlay
from .speed import SpeedConfig

# Default pixel budget: the most pixels the model may see per image, counted after any max_size
# downscale. Memory grows with them: btbnet-cpu peaks at ~0.35 GB per megapixel it sees
# (bench/bench_predict_memory.py), so 4 MP is ~1.7 GB; an 8000×6000 photo at native size, ~17 GB.
MAX_PIXELS = 4_000_000
# Threads that decode images and encode PNGs while the model runs (PIL and zlib release the GIL).
IO_THREADS = 2
# torch's intra-op thread count when this module was imported: `use_all_cores` leaves torch
# alone once anyone in the process has changed it.
_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
T = TypeVar("T")


# Test-time views (`TestTimeViews`): (quarter turns, horizontal flip) of the input whose maps are
# averaged. "dihedral" is the square's 8 symmetries, all among the training augmentation's 16
# versions (section 4.1: 8 orientations × flip), so the model has learnt every one of them.
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "dihedral": tuple((turns, flip) for turns in range(4) for flip in (False, True)),
}
# What `btbnet predict` and `pipeline.commands.batch_predict` use unless told (`--tta`): on the validation
# split (bench/bench_tta.py, README "Test-time views") it raised max-F, per-image F and ddff F
# and lowered MAE, for 7× the forward time. The library functions default to one pass.
DEFAULT_TTA = "dihedral"


class TestTimeViews(nn.Module):
    """`model` applied to several views of its input (see VIEWS), each map turned back and the
    in-focus probabilities averaged: test-time augmentation, not part of the paper's method.

    forward(x [B, 3, H, W]) → Prediction(final = the logit of the mean probability [B, 1, H, W],
    streams = []), so it stands in for the model wherever maps are predicted. One view runs at a
    time: memory as one forward pass (plus the running mean), time × len(views).
    """

    def __init__(self, model: nn.Module, views: str = DEFAULT_TTA):
        super().__init__()
        self.net, self.views = model, check_views(views)  # not `.module`: that would read as a DDP wrapper

    def forward(self, x: torch.Tensor) -> Prediction:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        total = None
        for turns, flip in VIEWS[self.views]:
            view = torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            prob = torch.rot90(self.net(view).final.float().sigmoid(), -turns, dims=(-2, -1))  # [B, 1, H, W]
            prob = prob.flip(-1) if flip else prob
            total = prob if total is None else total.add_(prob)
        mean = total.div_(len(VIEWS[self.views]))
        return Prediction(final=torch.logit(mean, eps=1e-7), streams=[])


def check_views(views: str, key: str = "views") -> str:
    """`views` if it names VIEWS, else a ConfigError (a ValueError) naming `key` and the choices."""
    if views not in VIEWS:
        raise ConfigError(f"{key}: must be one of {sorted(VIEWS)}, got {views!r}")
    return views


def with_views(model: nn.Module, views: str) -> nn.Module:
    """`model` itself for "none", else `TestTimeViews(model, views)` (a name not in VIEWS: see `check_views`)."""
    return model if views == "none" else TestTimeViews(model, views)


class OverBudget(ValueError):
    """An image the model would see at more than `max_pixels` pixels (raised before any work).

    `fit` is the largest max_size that brings it within the budget, `pixels` the budget it needs.
    """

    def __init__(self, problem: str, fit: int, pixels: int):
        self.problem, self.fit, self.pixels = problem, fit, pixels
        super().__init__(self.advise("max_size={}", "max_pixels={}"))

    def advise(self, max_size: str, max_pixels: str) -> str:
        """The message, the two ways past the budget spelt as given (the CLI: "--max-size {}")."""
        downscale, more = max_size.format(self.fit), max_pixels.format(self.pixels)
        return f"{self.problem}; use {downscale} to downscale, or {more} to raise the budget"


def check_budget(
    size: tuple[int, int], max_size: int | None, max_pixels: int | None, what: str = "image", count: int = 1
) -> tuple[int, int]:
    """The (h, w) the model sees for an image of `size` = (H, W) under `max_size` (see
    `fit_within`); `OverBudget` naming `what` if `count` such images (a batch) are more than
    `max_pixels` pixels for it (None: no limit)."""
    for name, value in (("max_size", max_size), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: must be a positive integer or None, got {value!r}")
    seen = fit_within(size, max_size)
    pixels = count * seen[0] * seen[1]
    if max_pixels is None or pixels <= max_pixels:
        return seen
    share = max(1, max_pixels // count)  # the budget of one image of the batch
    fit = max(1, math.isqrt(share * max(size) // min(size)))  # long side of a `share` area
    while fit > 1 and math.prod(fit_within(size, fit)) > share:
        fit -= 1
    scaled = f" ({seen[1]}×{seen[0]} at max_size {max_size})" if seen != tuple(size) else ""
    images = f"{count} × " if count > 1 else ""
    problem = f"{what}: {images}{size[1]}×{size[0]} px{scaled} is {pixels:,} pixels for the model"
    raise OverBudget(f"{problem}, over the budget of {max_pixels:,}", fit, pixels)


def predict_map(
    model: nn.Module,
    image: np.ndarray,
    max_size: int | None = None,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Focus map of one image: uint8 [H, W] with 255 = in focus, at the image's size.

    image:      uint8 [H, W, 3] RGB (as `btbnet.data.load_rgb` returns it).
    max_size:   if the image's longer side exceeds it, the model sees the image downscaled
                (antialiased bilinear) so that side is `max_size`, and the probability map is
                resized back to H×W bilinearly. None: always the native size.
    device:     where the model runs; the model is moved there (a no-op if it already is).
    max_pixels: the pixel budget: an image the model would see at more pixels (after
                `max_size`) raises `OverBudget`, a ValueError, before anything is allocated.
                None: no limit. Memory grows with the pixels seen (see MAX_PIXELS).

    The model runs in eval mode without gradients; its training mode is restored afterwards.
    Outside the model (its input and activations), one full-resolution float channel at a time.
    """
    return predict_maps(model, [image], max_size=max_size, device=device, max_pixels=max_pixels)[0]


def predict_maps(
    model: nn.Module,
    images: Sequence[np.ndarray],
    max_size: int | None = None,
    device: str | torch.device = "cpu",
    max_pixels: int | None = MAX_PIXELS,
    speed: SpeedConfig = SpeedConfig(),
) -> list[np.ndarray]:
    """Focus maps of images the model sees at the same size, in one forward pass (a batch).

    As `predict_map` for each image (the same maps, to float rounding), with `max_pixels`
    counting the batch: len(images) × the pixels the model sees of one. The images may differ
    in size as long as `max_size` brings them to the same (h, w); else ValueError.
    speed: precision and layout of the forward pass (`btbnet.speed`; the model already
    `speed.prepare`d); the probabilities are fp32 whatever the precision.
    """
    if not images:
        return []
    for image in images:
        check_image(image)
    sizes = [image.shape[:2] for image in images]
    what = "image" if len(images) == 1 else f"batch of {len(images)} images"
    inference_size = check_budget(sizes[0], max_size, max_pixels, what=what, count=len(images))
    if any(fit_within(size, max_size) != inference_size for size in sizes):
        raise ValueError(f"images: the model would see them at different sizes ({sorted(set(sizes))} at max_size {max_size})")
    with eval_mode(model.to(device)), torch.inference_mode():
        batch = speed.layout(torch.cat([model_input(image, inference_size, device) for image in images]))
        with speed.autocast(device):
            logits = model(batch).final  # [B, 1, h, w]; streams dropped
        probs = logits.float().sigmoid_().contiguous()
        return [full_size_map(prob[None], size) for prob, size in zip(probs, sizes)]


def full_size_map(prob: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Probabilities [1, 1, h, w] → the uint8 map [H, W] of `size` (bilinear if h×w differs)."""
    if tuple(prob.shape[-2:]) != tuple(size):
        prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
    return prob_to_uint8(prob[0, 0])


def model_input(image: np.ndarray, size: tuple[int, int], device: str | torch.device) -> torch.Tensor:
    """`image` as the model takes it: float [1, 3, h, w] in [0, 1] on `device`, at `size`.

    A smaller `size` is an antialiased bilinear downscale made one channel at a time, so only
    one full-resolution float channel (4 bytes a pixel, not 12) ever exists.
    """
    if tuple(size) == image.shape[:2]:
        return to_tensor(image).unsqueeze(0).to(device)
    channels = []
    for c in range(3):
        channel = torch.from_numpy(np.ascontiguousarray(image[:, :, c])).to(device).float().div_(255)
        channel = F.interpolate(channel[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)
        channels.append(channel)
    return torch.cat(channels, dim=1)


def prob_to_uint8(prob: torch.Tensor) -> np.ndarray:
    """Probabilities [H, W] in [0, 1] → uint8 [H, W], 1.0 ↦ 255 (rounded); `prob` is overwritten."""
    return prob.mul_(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def use_all_cores() -> int:
    """Run torch on every CPU this process may use (`available_cpus`), unless the thread count
    is someone else's choice: OMP_NUM_THREADS or MKL_NUM_THREADS is set (torch follows it), or
    torch's thread count changed since this module was imported. Returns the threads in use."""
    if not any(var in os.environ for var in THREAD_VARIABLES) and torch.get_num_threads() == _TORCH_THREADS_AT_IMPORT:
        torch.set_num_threads(available_cpus())
    return torch.get_num_threads()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
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
