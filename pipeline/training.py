"""The Ray Train job shared by pretrain and finetune (section 4.1's recipe, DDP on Ray).

Settings: params.yaml's `train:` section is the recipe both stages share, in four blocks that
map onto config classes as they are: `optim` → `btbnet.train.OptimConfig`, `loop` →
`btbnet.train.LoopConfig`, `input` → `btbnet.data.InputConfig`, `ray` → `RayConfig` below. A
stage's own section may hold any of these blocks too; its keys override the shared ones.

Each worker builds the model (or loads the stage's initial checkpoint), wraps it in DDP with
`prepare_model`, reads its shard of the (image, mask) folder through a DistributedSampler
seeded with `loop.seed` and runs `btbnet.train.train_epoch`. Every `ray.checkpoint_every_steps`
steps and at every epoch's end rank 0 alone saves a resumable checkpoint (model.pt, the
deployable checkpoint, and state.pt: optimiser, schedule, position, RNG) and flushes the losses
to the stage's MLflow run; every rank reports to Ray Train.

Fault tolerance (README, "Scale-out and fault tolerance"): a lost worker restarts the group
from the last checkpoint (`ray.max_failures`); the run is named `<stage>-<run_key>`, so a
killed stage rerun unchanged resumes it and a changed stage never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from btbnet.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, unwrap
from btbnet.config import BTBNetConfig, ConfigError, check_int, check_number, deep_merge, from_mapping, to_dict
from btbnet.data import DataError, InputConfig, PairDataset
from btbnet.export import MissingPackage, export_model
from btbnet.model import FocusMap, build_model
from btbnet.speed import SpeedConfig
from btbnet.train import LoopConfig, OptimConfig, make_optimizer, make_scheduler, train_epoch

from . import stage
from .figures import plot_lines
from .params import REPO_ROOT, Params, ParamsError
from .tracking import SHA_TAG, MetricLogger, file_sha256, stage_run, tracking_uri

RAY_RUNS = REPO_ROOT / ".ray_runs"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class RayConfig:
    """How a training stage runs on Ray Train.

    num_workers:      DDP workers (one process each); the batch is split evenly over them.
    cpus_per_worker:  CPUs Ray reserves per worker; below 1 lets Ray Data and Train share cores.
    use_gpu:          one GPU per worker (NCCL) instead of CPU (gloo).
    loader_workers:   DataLoader worker processes per Train worker (0: load in the worker).
    start_timeout_s:  how long the workers may wait for a cluster's resources (an autoscaler
                      adding nodes) before the stage fails; a local Ray instance the stage
                      started itself cannot grow, so a request it cannot hold fails at once.
    checkpoint_every_steps: a resumable checkpoint every this many steps within an epoch (and
                      one at the end of every epoch); None: at epoch ends only.
    max_failures:     lost workers (a crash, a preempted node) survived per stage run: the
                      worker group restarts from the last checkpoint (Ray's FailureConfig).
    placement_strategy: how Ray places the workers: "PACK" (fewest nodes) or "SPREAD" (one per
                      node where it can), as Ray's ScalingConfig.
    storage:          where Ray Train keeps run state and checkpoints: None for the repo's
                      `.ray_runs/`, or a folder / URI every node reaches (a shared file
                      system, `s3://bucket/prefix`, any pyarrow file system).
    """

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    loader_workers: int = 0
    start_timeout_s: float = 300.0
    checkpoint_every_steps: int | None = 100
    max_failures: int = 2
    placement_strategy: str = "PACK"
    storage: str | None = None

    def __post_init__(self) -> None:
        check_int("num_workers", self.num_workers, 1)
        check_number("cpus_per_worker", self.cpus_per_worker, 0.0, low_open=True)
        check_int("loader_workers", self.loader_workers, 0)
        check_number("start_timeout_s", self.start_timeout_s, 1.0)
        check_int("checkpoint_every_steps", self.checkpoint_every_steps, 1, allow_none=True)
        check_int("max_failures", self.max_failures, 0)
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"placement_strategy: must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}")

    def describe(self) -> str:
        return f"{self.num_workers} workers × ({self.cpus_per_worker:g} CPU{' + 1 GPU' if self.use_gpu else ''})"

    def slots(self, nodes: list[dict[str, Any]]) -> int:
        """How many of these workers the alive `nodes` (as `ray.nodes()` lists them) hold at once."""
        total = 0
        for node in nodes:
            if node.get("Alive"):
                have = node.get("Resources", {})
                fit = int(have.get("CPU", 0) / self.cpus_per_worker + 1e-9)
                total += min(fit, int(have.get("GPU", 0))) if self.use_gpu else fit
        return total


@dataclass(frozen=True)
class TrainConfig:
    """The whole recipe of one training stage (see the module doc for where each block comes from)."""

    optim: OptimConfig
    loop: LoopConfig
    input: InputConfig
    ray: RayConfig
    speed: SpeedConfig = SpeedConfig()

    def __post_init__(self) -> None:
        if self.loop.batch_size % self.ray.num_workers:
            raise ConfigError(
                f"loop.batch_size: {self.loop.batch_size} is not divisible by ray.num_workers={self.ray.num_workers}"
            )
        if not self.input.fixed_size and self.loop.batch_size != self.ray.num_workers:
            raise ConfigError("input.image_size: null with no crop_size (native sizes) needs loop.batch_size 1 per worker")


BLOCKS = {"optim": OptimConfig, "loop": LoopConfig, "input": InputConfig, "ray": RayConfig, "speed": SpeedConfig}  # TrainConfig's fields


def train_config(params: Params, name: str) -> TrainConfig:
    """`train:` with the blocks of section `name` merged over it; errors name the key."""
    shared, own = params.section("train"), params.section(name)
    unknown = sorted(set(shared) - set(BLOCKS))
    if unknown:
        raise ParamsError(f"train.{unknown[0]}: unknown key (known: {list(BLOCKS)})")
    built = {}
    for block, cls in BLOCKS.items():
        merged = deep_merge(dict(shared[block]) if block in shared else {}, dict(own[block]) if block in own else {})
        built[block] = from_mapping(cls, merged, prefix=f"{name if block in own else 'train'}.{block}.")
    try:
        return TrainConfig(**built)
    except ConfigError as exc:
        raise ParamsError(f"{name}.{exc}") from None


@dataclass(frozen=True)
class StageSpec:
    """Everything one training stage needs; absolute paths (Ray workers run elsewhere)."""

    name: str
    data: str | Path  # image/ + gt/: a local folder or a URI (`local_folder`)
    polarity: str  # what white means in data's masks
    out: Path  # the final checkpoint
    metrics: Path
    plots: Path  # DVC plots: steps.csv, epochs.csv, losses.png (`write_loss_plots`)
    train: TrainConfig
    model: BTBNetConfig  # the architecture (for finetune: the pre-trained checkpoint's)
    init_checkpoint: str | Path | None = None  # start from these weights (a path or URI) …
    backbone_weights: str | None = None  # … or from ImageNet backbones (section 3.3), or random
    exclude: tuple[str, ...] = ()  # stems of `data` held out (a validation split)
    registered_model: str | None = None  # the MLflow registry name the final model gets a version of

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.out, self.metrics, self.plots

    def dataset(self) -> PairDataset:
        return self.train.input.dataset(local_folder(self.data), self.polarity, exclude=self.exclude, seed=self.train.loop.seed)


DATA_CACHE = Path(tempfile.gettempdir()) / "btbnet-data"


def is_uri(path: str | Path | None) -> bool:
    return path is not None and "://" in str(path)


def local_folder(data: str | Path) -> Path:
    """A data folder or file on this node: a path as it is; a URI (s3://…, gs://…, file://…:
    any pyarrow file system) copied into `DATA_CACHE` once per version of its content (the cache
    key digests the URI and every file's path, size and modification time), so that a cluster
    without a shared file system trains from object storage. The copy appears whole or not at all."""
    if not is_uri(data):
        return Path(data)
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(str(data))
    single = fs.get_file_info(root)
    listing = [single] if single.type == pyarrow.fs.FileType.File else fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    if not any(i.type == pyarrow.fs.FileType.File for i in listing):
        raise DataError(f"{data}: no files there")
    key = hashlib.sha256(str(data).encode())
    for info in sorted(listing, key=lambda i: i.path):
        key.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
    target = DATA_CACHE / key.hexdigest()[:16]
    if not target.is_dir():
        # Workers on one machine may copy the same version at once: each into its own folder,
        # renamed onto `target` only if no other copy got there first (never replacing one in use).
        DATA_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=DATA_CACHE))
        try:
            pyarrow.fs.copy_files(root, str(tmp / single.base_name if single.type == pyarrow.fs.FileType.File else tmp),
                                  source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())  # fmt: skip
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(tmp, target)  # fails if another copy is there already: use that one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise DataError(f"{data}: could not copy it to {target}")
    return target / single.base_name if single.type == pyarrow.fs.FileType.File else target


def hash_files(digest: Any, files: list[Path], root: Path | None = None) -> None:
    """Feed each file's path (below `root`, if given) and content into `digest`."""
    for path in files:
        digest.update(str(path.relative_to(root) if root else path).encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())


def files_below(path: Path) -> list[Path]:
    return [path] if path.is_file() else [f for f in sorted(path.rglob("*")) if f.is_file()]


def content_digest(local: Path) -> str:
    """A digest of a file's or folder's content (paths below it and bytes)."""
    digest = hashlib.sha256()
    hash_files(digest, files_below(local), local if local.is_dir() else local.parent)
    return digest.hexdigest()[:16]


def ship_inputs(spec: StageSpec, data: Path, store: RunStore, data_digest: str | None = None) -> StageSpec:
    """The spec the workers get. When `ray.storage` is a URI (a cluster whose nodes share no
    file system with the driver, README "Scale-out"), the driver's local inputs (the data
    folder, the initial checkpoint, VGG16 weights given as a file) are uploaded to
    `<storage>/inputs/<content digest>/` once per content, and the workers read them from
    there (`local_folder`); otherwise the spec is returned as it is. `data_digest`: `data`'s
    `content_digest`, if the caller has it."""
    if not is_uri(store.uri):
        return spec

    def ship(path: str | Path | None, digest: str | None = None) -> str | Path | None:
        if path is None or is_uri(path) or not Path(path).exists():
            return path  # a URI, or a name such as "imagenet" that every node resolves itself
        return store.upload(Path(path), f"inputs/{digest or content_digest(Path(path))}")

    shipped_data = spec.data if is_uri(spec.data) else ship(data, data_digest)
    return replace(spec, data=shipped_data, init_checkpoint=ship(spec.init_checkpoint), backbone_weights=ship(spec.backbone_weights))


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start part-way through an epoch: its first `skip`
    indices (the batches a resumed run has done already) are left out."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def make_loader(dataset: PairDataset, train: TrainConfig, rank: int, world: int) -> DataLoader:
    """Rank `rank`'s shard of `dataset`, in an order fixed by `loop.seed` and the epoch.

    The sampler is ours (seeded, resumable), and Ray's `prepare_data_loader` is told not to
    replace it.
    """
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=train.loop.seed)
    return DataLoader(
        dataset, batch_size=train.loop.batch_size // world, sampler=sampler, num_workers=train.ray.loader_workers
    )


class Attempts:
    """A Ray actor of the stage run: which nodes the workers ran on, how often the worker group
    (re)started, how many steps rank 0 ran in all, and the bad input that ended an attempt
    (a restart would only meet it again, so the next attempt fails at once)."""

    def __init__(self) -> None:
        self.starts, self.steps, self.nodes, self.bad_input = 0, 0, set(), None

    def join(self, rank: int, node_id: str) -> BaseException | None:
        self.starts += rank == 0
        self.nodes.add(node_id)
        return self.bad_input

    def step(self) -> None:
        self.steps += 1

    def fail(self, error: BaseException) -> None:
        self.bad_input = error

    def summary(self) -> dict[str, Any]:
        return {"starts": self.starts, "steps": self.steps, "nodes": sorted(self.nodes)}


STATE_FILE = "state.pt"  # beside model.pt in each Ray checkpoint: what a resumed run needs


def save_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, step: int) -> None:
    """Optimiser, schedule, position (`step` steps of `epoch` done) and RNG state of rank 0."""
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        },
        folder / STATE_FILE,
    )


def load_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, int]:
    """Restore a checkpoint's model, optimiser, schedule and RNG state; its (epoch, step)."""
    unwrap(model).load_state_dict(read_checkpoint(folder / "model.pt")["state_dict"])
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)  # our own file
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["epoch"], state["step"]


class Progress:
    """Rank 0's console line every `every_s` seconds (and at each epoch's end): steps done of
    the run's total, the loss, steps per second and the time left, e.g.
    `pretrain: step 120/450 (epoch 1/3) · loss 2.31 · 1.8 steps/s · ETA 3:03`."""

    def __init__(self, stage: str, total: int, epochs: int, first: int, every_s: float = 10.0):
        self.stage, self.total, self.epochs, self.every_s = stage, total, epochs, every_s
        self.first, self.start = first, time.monotonic()
        self.last = self.start

    def step(self, at: int, per_epoch: int, loss: float) -> None:
        now = time.monotonic()
        done = at + 1
        if now - self.last < self.every_s and done % per_epoch != 0 and done != self.total:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if left == left else "?"
        print(f"{self.stage}: step {done}/{self.total} (epoch {at // per_epoch + 1}/{self.epochs}) · loss {loss:.4f} · "
              f"{rate:.2f} steps/s · ETA {eta}", flush=True)  # fmt: skip


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function: `fit_worker`, bad input re-raised without its traceback
    (Ray logs the traceback of whatever the function raises, once per worker)."""
    import ray

    attempts = config["attempts"]
    try:
        fit_worker(config, attempts)
    except stage.ERRORS as exc:
        error = type(exc)(*exc.args)
        ray.get(attempts.fail.remote(error))
        raise error.with_traceback(None) from None


def fit_worker(config: dict[str, Any], attempts: Any) -> None:
    """One worker's part of the run, from the last checkpoint if Ray Train restored one."""
    import ray
    import ray.train
    import ray.train.torch

    spec: StageSpec = config["spec"]
    t, r = spec.train, spec.train.ray
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    bad_input = ray.get(attempts.join.remote(rank, ray.get_runtime_context().get_node_id()))
    if bad_input is not None:
        raise bad_input
    torch.manual_seed(t.loop.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    np.random.seed(t.loop.seed + rank)

    if spec.init_checkpoint:
        model = load_checkpoint(local_folder(spec.init_checkpoint)).train()
    else:
        weights = spec.backbone_weights  # "imagenet", a path, an http(s) URL, or shipped (`ship_inputs`)
        if is_uri(weights) and not weights.startswith(("http://", "https://")):
            weights = str(local_folder(weights))
        model = build_model(spec.model, backbone_weights=weights)
    optimizer = make_optimizer(model, t.optim)
    dataset = spec.dataset()
    loader = make_loader(dataset, t, rank, world)
    steps_per_epoch = min(len(loader), t.loop.max_steps_per_epoch or len(loader))
    scheduler = make_scheduler(optimizer, t.optim, total_steps=t.loop.epochs * steps_per_epoch)
    first_epoch, first_step = 0, 0
    if (restored := ray.train.get_checkpoint()) is not None:
        with restored.as_directory() as folder:
            first_epoch, first_step = load_state(Path(folder), model, optimizer, scheduler)
    model = ray.train.torch.prepare_model(t.speed.prepare(model))
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    device = ray.train.torch.get_device()
    scaler = t.speed.scaler(device)
    logger = MetricLogger(*config["mlflow"]) if rank == 0 else None
    logged = {"step": -1, "epoch": -1}  # what the run holds from earlier attempts: not logged twice
    if logger:
        logged = {"step": logger.last_step("step/total"), "epoch": logger.last_step("epoch/total")}
        if restored is not None:
            print(f"{spec.name}: resumed at epoch {first_epoch}, step {first_step} of {steps_per_epoch}")
    progress = Progress(spec.name, t.loop.epochs * steps_per_epoch, t.loop.epochs, first_epoch * steps_per_epoch + first_step) if rank == 0 else None

    def report(metrics: dict[str, float], epoch: int, step: int) -> None:
        """A checkpoint at `step` steps into `epoch` (rank 0 writes it; every rank reports)."""
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                trained_at = {"max_size": t.input.max_size} if t.input.max_size else {}  # predict at this scale
                save_checkpoint(model, Path(tmp) / "model.pt", epoch=epoch - (step == 0), stage=spec.name, **trained_at)
                save_state(Path(tmp), optimizer, scheduler, epoch, step)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if logger:
            logger.flush()  # the steps up to this checkpoint, once: a restart redoes only later ones

    for epoch in range(first_epoch, t.loop.epochs):
        start = first_step if epoch == first_epoch else 0
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = start * (t.loop.batch_size // world)
        dataset.set_epoch(epoch)

        def on_step(i: int, terms: dict[str, float]) -> None:
            step = start + i  # within the epoch
            if progress:
                progress.step(epoch * steps_per_epoch + step, steps_per_epoch, terms["total"])
            if logger:
                attempts.step.remote()
                at = epoch * steps_per_epoch + step
                if (step % 5 == 0 or step == steps_per_epoch - 1) and at > logged["step"]:
                    logger.log({f"step/{k}": v for k, v in terms.items()}, step=at)
            done = step + 1
            if r.checkpoint_every_steps and done % r.checkpoint_every_steps == 0 and done < steps_per_epoch:
                report({"epoch": epoch, "step": done}, epoch, done)

        terms = train_epoch(
            model, loader, optimizer, t.optim, device=device, on_step=on_step,
            max_steps=steps_per_epoch - start, scheduler=scheduler, speed=t.speed, scaler=scaler,
        )  # fmt: skip
        metrics = {f"epoch/{k}": v for k, v in terms.items()} | {"epoch": epoch, "steps_per_epoch": steps_per_epoch}
        if logger and epoch > logged["epoch"]:
            logger.log(metrics, step=epoch)
        report(metrics, epoch + 1, 0)


def wait_for_workers(r: RayConfig, nodes: Callable[[], list[dict[str, Any]]], timeout_s: float, poll_s: float = 2.0) -> None:
    """Return once the cluster (`nodes()`, as `ray.nodes()`) can hold every worker of `r`;
    a ConfigError naming the setting and the cluster after `timeout_s` (0: no waiting)."""
    deadline = time.monotonic() + timeout_s
    while (room := r.slots(listed := nodes())) < r.num_workers:
        if time.monotonic() >= deadline:
            alive = [n.get("Resources", {}) for n in listed if n.get("Alive")]
            have = ", ".join(f"{res.get('CPU', 0):g} CPU + {res.get('GPU', 0):g} GPU" for res in alive) or "no nodes"
            raise ConfigError(
                f"train.ray: {r.describe()} do not fit the Ray cluster (nodes: {have}; room for {room}"
                f"{f' after waiting {timeout_s:g} s' if timeout_s else ''}); lower ray.num_workers or "
                "ray.cpus_per_worker, or add nodes"
            )
        time.sleep(poll_s)


def worker_error(exc: BaseException) -> BaseException | None:
    """The bad-input error (one of `stage.ERRORS`) a Train worker raised, if that is what ended
    the run, rebuilt with its own one-line message (not Ray's wrapping and traceback)."""
    failures = list(getattr(exc, "worker_failures", {}).values())
    for failure in failures:
        cause = getattr(failure, "cause", None) or failure  # a RayTaskError holds the original
        if isinstance(cause, stage.ERRORS):
            return type(cause)(*cause.args)
    return None


def run_key(spec: StageSpec, data_digest: str | None = None) -> str:
    """A digest of what DVC hashes for the stage: its settings (the whole spec), the content of
    its data and initial weights, and the project code loaded. A killed stage resumes its Ray
    Train run only under the same key; a changed stage starts afresh. `data_digest`: the data's
    `content_digest` when the caller has it already (the data is read once per stage)."""
    digest = hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True, default=str).encode())
    code = sorted(Path(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)
                  and Path(m.__file__).is_relative_to(REPO_ROOT) and Path(m.__file__).relative_to(REPO_ROOT).parts[0] in ("btbnet", "pipeline"))  # fmt: skip
    digest.update((data_digest or content_digest(local_folder(spec.data))).encode())
    hash_files(digest, code + [Path(p) for p in (spec.init_checkpoint, spec.backbone_weights) if p and not is_uri(p) and Path(p).is_file()])
    return digest.hexdigest()[:16]


class RunStore:
    """Ray Train's run folders of the training stages: `ray.storage` (a local folder or any
    pyarrow file-system URI), `<stage>-<run key>` each."""

    def __init__(self, storage: str | None):
        import pyarrow.fs

        self.uri = storage or str(RAY_RUNS)
        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)

    def runs(self, stage_name: str) -> list[str]:
        import pyarrow.fs

        listed = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in listed if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(f"{stage_name}-"))

    def remove(self, name: str) -> None:
        self.fs.delete_dir(f"{self.root}/{name}")

    def upload(self, local: Path, folder: str) -> str:
        """`local` (a file or folder) copied to `<storage>/<folder>/` unless a complete copy is
        there already (its `.complete` marker is written last); the copy's URI."""
        import pyarrow.fs

        target, marker = f"{self.root}/{folder}", f"{self.root}/{folder}/.complete"
        if self.fs.get_file_info(marker).type != pyarrow.fs.FileType.File:
            self.fs.create_dir(target)
            destination = f"{target}/{local.name}" if local.is_file() else target
            pyarrow.fs.copy_files(str(local), destination, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=self.fs)
            with self.fs.open_output_stream(marker) as f:
                f.write(b"")
        return f"{self.uri.rstrip('/')}/{folder}" + (f"/{local.name}" if local.is_file() else "")


def run_training(spec: StageSpec, mlflow_run: tuple[str, str], out: Path, local: bool, store: RunStore, key: str) -> dict[str, Any]:
    """Fit with Ray Train's TorchTrainer and copy the final model to `out` (a staging path).

    The request is checked against the cluster first (`wait_for_workers`), and Ray's own wait
    for the worker group is bounded by `ray.start_timeout_s` (it retries without end by default).
    The run folder `<stage>-<key>` of `ray.storage` is kept when the stage is interrupted or
    crashes, so that rerunning the same stage resumes from its last checkpoint (Ray Train
    resumes a run it finds there); it is deleted once the model is out, or on bad input.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    r = spec.train.ray
    wait_for_workers(r, ray.nodes, 0 if local else r.start_timeout_s)
    name = f"{spec.name}-{key}"
    for stale in store.runs(spec.name):
        if stale != name:  # a killed run of another version of the stage: never resumed
            store.remove(stale)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    attempts = ray.remote(num_cpus=0)(Attempts).options(scheduling_strategy=here).remote()  # dies with the driver only
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "mlflow": mlflow_run, "attempts": attempts},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker={"CPU": r.cpus_per_worker},
            placement_strategy=r.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            storage_path=store.uri,
            name=name,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # lost workers restart from the last checkpoint; a start-up timeout ends the run
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures, controller_failure_limit=0),
        ),
    )
    # Ray's SIGINT handler waits on the controller's abort, for ever if the controller is stuck;
    # the stage's own (KeyboardInterrupt, then Ray's shutdown) never hangs.
    trainer._register_sigint_handler = lambda controller: None
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        if (bad_input := worker_error(exc)) is not None:
            store.remove(name)
            raise bad_input from None
        startup = getattr(exc, "controller_failure", None)
        if startup is not None and "Timeout" in type(startup).__name__:
            raise ConfigError(f"train.ray: {r.describe()} did not start within ray.start_timeout_s={r.start_timeout_s:g} s ({startup})") from None
        raise
    with result.checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / "model.pt", out)
    store.remove(name)
    seen = ray.get(attempts.summary.remote())
    total = spec.train.loop.epochs * result.metrics.get("steps_per_epoch", 0)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and k != "steps_per_epoch"}
    return metrics | {"worker_restarts": seen["starts"] - 1, "ray_nodes": len(seen["nodes"]), "steps_redone": max(0, seen["steps"] - total), "node_ids": seen["nodes"]}


def last_logged_step(run_id: str) -> int:
    """The last step of the run's per-step loss (0 if none)."""
    history = mlflow.tracking.MlflowClient(tracking_uri()).get_metric_history(run_id, "step/total")
    return max((m.step for m in history), default=0)


def loss_history(run_id: str, prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """The losses rank 0 logged as `<prefix>/<term>`: term → (steps, values), by step."""
    client = mlflow.tracking.MlflowClient(tracking_uri())
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith(f"{prefix}/"))
    lines = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        lines[key.removeprefix(f"{prefix}/")] = ([m.step for m in history], [m.value for m in history])
    return lines


def write_loss_plots(run_id: str, folder: Path) -> None:
    """The stage's DVC plots, from what its MLflow run holds: `steps.csv` (step, then each
    term of eq. 6: total, main, aux_*), `epochs.csv` (epoch, the step it ended at, the same
    terms averaged over it) and `losses.png` (for viewers without the vega charts); logged to
    the run as well. Values are written with 9 significant digits: same training, same bytes."""
    steps = loss_history(run_id, "step")
    epochs = loss_history(run_id, "epoch")
    per_epoch = (max(steps["total"][0]) + 1) // max(len(epochs["total"][0]), 1)  # the last step of each epoch is logged
    with stage.staged(folder) as tmp:
        tmp.mkdir()
        for lines, name in ((steps, "steps.csv"), (epochs, "epochs.csv")):
            terms = sorted(lines, key=lambda t: (t != "total", t != "main", t))
            index = sorted({i for term in terms for i in lines[term][0]})
            values = {term: dict(zip(*lines[term])) for term in terms}
            head = ["step"] if name == "steps.csv" else ["epoch", "step"]
            rows = [[str(i)] + ([] if name == "steps.csv" else [str((i + 1) * per_epoch - 1)]) + [f"{values[t][i]:.9g}" if i in values[t] else "" for t in terms] for i in index]
            (tmp / name).write_text("".join(",".join(row) + "\n" for row in [head + terms, *rows]))
        plot_lines(steps, tmp / "losses.png", xlabel="step", ylabel="loss (eq. 6, per term)", title="training loss")
    mlflow.log_artifacts(str(folder), artifact_path="plots")


CANDIDATE = "candidate"  # the registry alias of the latest fine-tuned model (evaluate links its metrics)


def log_model(spec: StageSpec, checkpoint: Path, final: dict[str, float], step: int) -> Any:
    """Log a checkpoint's model (probability maps out) with its signature and input example,
    named `btbnet-<stage>`, with the run's metrics at its last logged `step` and the `final`
    ones (`final/<term>`: the last epoch's mean losses) linked to it. Extra files: the
    checkpoint, so that `btbnet predict --model models:/…` loads plain weights, never a pickle,
    and the TorchScript / ONNX exports (`exported_files`). With
    `spec.registered_model`, a new registry version gets the alias `candidate`.

    The network is fully convolutional, so the signature takes any batch and any H × W. It is
    pickled: torch.export ("pt2", MLflow's default) fixes H × W at the example's size, since
    it cannot keep them symbolic through the streams' `round(H * scale)` resizes.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = FocusMap(load_checkpoint(checkpoint)).eval()
    with tempfile.TemporaryDirectory(prefix="btbnet-export-") as tmp:
        files, export_tags = exported_files(checkpoint, Path(tmp))
        size = spec.train.input.crop_size or spec.train.input.image_size or 64
        example = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),  # RGB [B, 3, H, W] in [0, 1]
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),  # in-focus probability
        )
        info = mlflow.pytorch.log_model(
            model,
            name=f"btbnet-{spec.name}",
            input_example=example,
            signature=signature,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
            code_paths=[str(REPO_ROOT / "btbnet")],
            extra_files=[str(checkpoint), *map(str, files)],
            registered_model_name=spec.registered_model,
            tags={SHA_TAG: file_sha256(checkpoint), "btbnet.stage": spec.name} | export_tags,
            step=step,
        )
    mlflow.log_metrics(final, model_id=info.model_id, step=step)
    if spec.registered_model and info.registered_model_version is not None:
        client = mlflow.tracking.MlflowClient(tracking_uri())
        client.set_registered_model_alias(spec.registered_model, CANDIDATE, str(info.registered_model_version))
    return info


def exported_files(checkpoint: Path, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The model as TorchScript and, where onnx and onnxruntime are installed, ONNX, for users
    outside Python (`btbnet.export`: any batch and H × W, each checked against PyTorch before
    it is written); (the files, tags with each one's max abs difference)."""
    files, tags = [], {}
    for fmt, name in (("torchscript", "btbnet.torchscript"), ("onnx", "btbnet.onnx")):
        try:
            report = export_model(load_checkpoint(checkpoint), folder / name, fmt)
        except MissingPackage:
            continue
        files.append(report.path)
        tags[f"btbnet.export.{fmt}.max_abs_diff"] = f"{report.max_abs_diff:.1e}"
    return files, tags


def log_data(spec: StageSpec, dataset: PairDataset, digest: str) -> None:
    """The training pairs as the run's MLflow input (context "training"): one row per pair,
    the source named as the params give it, the digest of the files' content."""
    import mlflow.data
    import pandas as pd

    rows = pd.DataFrame({"image": [i.name for i, _ in dataset.pairs], "mask": [m.name for _, m in dataset.pairs]})
    mlflow.log_input(
        mlflow.data.from_pandas(rows, source=str(spec.data), name=f"{spec.name}-data", digest=digest),
        context="training",
    )


def check_init(spec: StageSpec) -> None:
    """The initial weights load into the stage's model: checked in the driver, before Ray."""
    if spec.backbone_weights is not None:
        try:
            build_model(spec.model, backbone_weights=spec.backbone_weights)
        except (ConfigError, FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
            raise ParamsError(f"{spec.name}.backbone_weights: {exc.args[0] if exc.args else exc}") from None


def train_stage(spec: StageSpec) -> None:
    """A whole training stage: check the data, fit on Ray, write model + metrics, log to MLflow."""
    dataset = spec.dataset()  # fails fast, names the file
    dataset.check_files()  # every pair's headers, before Ray starts
    check_init(spec)
    logged = {
        "model": spec.model.to_dict(),
        "train": to_dict(spec.train),
        "data": str(spec.data),
        "init": str(spec.init_checkpoint or spec.backbone_weights or "random"),
    }
    data_digest = content_digest(dataset.root)  # the data read once: run key, upload, MLflow input
    key, store = run_key(spec, data_digest), RunStore(spec.train.ray.storage)
    resume = f"{spec.name}-{key}" in store.runs(spec.name)  # a killed run of this very stage
    with stage_run(spec.name, logged, run_key=key, resume=resume, system_metrics=True) as run:
        mlflow.log_params({"train_samples": len(dataset), "train_pairs": len(dataset.pairs)})
        log_data(spec, dataset, data_digest)
        local = stage.init_ray({"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(spec.train.ray.start_timeout_s)})
        with stage.staged(spec.out) as tmp:
            shipped = ship_inputs(spec, dataset.root, store, data_digest)
            metrics = run_training(shipped, (tracking_uri(), run.info.run_id), tmp, local, store, key)
        mlflow.set_tag("ray.node_ids", ",".join(metrics.pop("node_ids")))  # not in the metrics file: new every cluster start
        metrics["train_samples"] = len(dataset)
        mlflow.log_metrics({k: metrics[k] for k in ("worker_restarts", "ray_nodes", "steps_redone")})
        stage.write_json(spec.metrics, metrics)
        mlflow.log_artifact(str(spec.metrics))
        write_loss_plots(run.info.run_id, spec.plots)
        final = {f"final/{k.removeprefix('epoch/')}": v for k, v in metrics.items() if k.startswith("epoch/")}  # the last epoch's
        log_model(spec, spec.out, final, step=last_logged_step(run.info.run_id))
    print(f"{spec.name}: loss {metrics.get('epoch/total', float('nan')):.4f} after {spec.train.loop.epochs} epochs, model in {spec.out}")
