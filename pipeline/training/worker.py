"""What each Ray Train worker runs: its shard of the data in a seeded, resumable order, the
training loop (`btbnet.train.train_epoch`), resumable checkpoints, and rank 0's reports.

Each worker builds the model (or loads the stage's initial checkpoint), wraps it in DDP with
`prepare_model`, reads its shard of the (image, mask) folder through a sampler seeded with
`loop.seed` and trains. Every `ray.checkpoint_every_steps` steps and at every epoch's end rank 0
alone saves a resumable checkpoint (model.pt, the deployable checkpoint, and state.pt:
optimiser, schedule, position, RNG) and flushes the losses to the stage's MLflow run; every rank
reports to Ray Train (`Reporter`). A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from btbnet.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, unwrap
from btbnet.data import PairDataset
from btbnet.model import build_model
from btbnet.train import make_optimizer, make_scheduler, train_epoch

from ..runtime import stage
from ..runtime.params import is_uri
from .config import StageSpec, TrainConfig
from .store import local_folder

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


class MetricLogger:
    """Logs metrics to an existing MLflow run by id, from a Ray worker (rank 0); MLflow is
    imported only where one is made.

    `log` buffers and `flush` sends. A restarted worker redoes the steps after its checkpoint:
    `last_step` tells which of them the run already holds, so that each is logged once."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.pending: list[Any] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def last_step(self, key: str) -> int:
        """The highest step logged for `key` in the run (-1: none)."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def flush(self) -> None:
        for i in range(0, len(self.pending), self.BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + self.BATCH])
        self.pending = []


class TrainingState:
    """What a checkpoint saves: the model, its optimiser and its schedule."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler


class Reporter:
    """What one worker tells the world. Every rank reports each checkpoint to Ray Train; rank 0
    also writes it (model + state), logs the losses to the stage's MLflow run (every 5th step,
    each epoch's last and the epoch means, each step once across restarts), counts its steps in
    the `Attempts` actor and prints progress."""

    def __init__(self, spec: StageSpec, state: TrainingState, rank: int, steps_per_epoch: int, first: int, mlflow_run: tuple[str, str],
                 attempts: Any):  # fmt: skip
        self.spec, self.state, self.rank, self.steps_per_epoch, self.attempts = spec, state, rank, steps_per_epoch, attempts
        self.logger = MetricLogger(*mlflow_run) if rank == 0 else None
        # what the run holds from earlier attempts: not logged twice
        self.logged = {"step": self.logger.last_step("step/total"), "epoch": self.logger.last_step("epoch/total")} if self.logger else {}
        total = spec.train.loop.epochs * steps_per_epoch
        self.progress = Progress(spec.name, total, spec.train.loop.epochs, first) if rank == 0 else None

    def step(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        """After `step` (0-based, within `epoch`); a checkpoint every `ray.checkpoint_every_steps`."""
        at = epoch * self.steps_per_epoch + step
        if self.rank == 0:
            self.progress.step(at, self.steps_per_epoch, terms["total"])
            self.attempts.step.remote()
            if (step % 5 == 0 or step == self.steps_per_epoch - 1) and at > self.logged["step"]:
                self.logger.log({f"step/{k}": v for k, v in terms.items()}, step=at)
        every, done = self.spec.train.ray.checkpoint_every_steps, step + 1
        if every and done % every == 0 and done < self.steps_per_epoch:
            self.checkpoint({"epoch": epoch, "step": done}, epoch, done)

    def epoch_end(self, epoch: int, terms: dict[str, float]) -> None:
        metrics = {f"epoch/{k}": v for k, v in terms.items()} | {"epoch": epoch, "steps_per_epoch": self.steps_per_epoch}
        if self.logger and epoch > self.logged["epoch"]:
            self.logger.log(metrics, step=epoch)
        self.checkpoint(metrics, epoch + 1, 0)

    def checkpoint(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        """A checkpoint at `step` steps into `epoch` (rank 0 writes it; every rank reports)."""
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                scale = self.spec.train.input.max_size
                save_checkpoint(self.state.model, Path(tmp) / "model.pt", epoch=epoch - (step == 0), stage=self.spec.name,
                                **({"max_size": scale} if scale else {}))  # fmt: skip  (the scale to predict at)
                save_state(Path(tmp), self.state.optimizer, self.state.scheduler, epoch, step)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if self.logger:
            self.logger.flush()  # the steps up to this checkpoint, once: a restart redoes only later ones


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function: `fit_worker`, bad input re-raised without its traceback
    (Ray logs the traceback of whatever the function raises, once per worker)."""
    import ray

    attempts = config["attempts"]
    try:
        fit_worker(config["spec"], config["mlflow"], attempts)
    except stage.ERRORS as exc:
        error = type(exc)(*exc.args)
        ray.get(attempts.fail.remote(error))
        raise error.with_traceback(None) from None


def initial_model(spec: StageSpec) -> torch.nn.Module:
    """The stage's starting point: its initial checkpoint, or a new model (ImageNet backbones
    if `backbone_weights` says so: "imagenet", a path, an http(s) URL, or shipped to storage)."""
    if spec.init_checkpoint:
        return load_checkpoint(local_folder(spec.init_checkpoint)).train()
    weights = spec.backbone_weights
    if is_uri(weights) and not weights.startswith(("http://", "https://")):
        weights = str(local_folder(weights))
    return build_model(spec.model, backbone_weights=weights)


def fit_worker(spec: StageSpec, mlflow_run: tuple[str, str], attempts: Any) -> None:
    """One worker's part of the run, from the last checkpoint if Ray Train restored one."""
    import ray
    import ray.train
    import ray.train.torch

    t = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    bad_input = ray.get(attempts.join.remote(rank, ray.get_runtime_context().get_node_id()))
    if bad_input is not None:
        raise bad_input
    torch.manual_seed(t.loop.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    np.random.seed(t.loop.seed + rank)

    model = initial_model(spec)
    optimizer = make_optimizer(model, t.optim)
    dataset = spec.dataset()
    loader = make_loader(dataset, t, rank, world)
    steps_per_epoch = min(len(loader), t.loop.max_steps_per_epoch or len(loader))
    scheduler = make_scheduler(optimizer, t.optim, total_steps=t.loop.epochs * steps_per_epoch)
    first_epoch, first_step = 0, 0
    if (restored := ray.train.get_checkpoint()) is not None:
        with restored.as_directory() as folder:
            first_epoch, first_step = load_state(Path(folder), model, optimizer, scheduler)
        if rank == 0:
            print(f"{spec.name}: resumed at epoch {first_epoch}, step {first_step} of {steps_per_epoch}")
    state = TrainingState(ray.train.torch.prepare_model(t.speed.prepare(model)), optimizer, scheduler)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    device = ray.train.torch.get_device()
    scaler = t.speed.scaler(device)
    reporter = Reporter(spec, state, rank, steps_per_epoch, first_epoch * steps_per_epoch + first_step, mlflow_run, attempts)

    for epoch in range(first_epoch, t.loop.epochs):
        start = first_step if epoch == first_epoch else 0
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = start * (t.loop.batch_size // world)
        dataset.set_epoch(epoch)
        terms = train_epoch(
            state.model, loader, optimizer, t.optim, device=device, max_steps=steps_per_epoch - start, scheduler=scheduler,
            speed=t.speed, scaler=scaler, on_step=lambda i, terms: reporter.step(epoch, start + i, terms),
        )  # fmt: skip
        reporter.epoch_end(epoch, terms)
