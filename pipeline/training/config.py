"""A training stage's settings: the shared recipe `train:` with the stage's overrides, and the
spec the workers get.

params.yaml's `train:` section is the recipe both training stages share, in the blocks of
`TrainConfig`, each the config class of the library module it configures: `optim` →
`btbnet.train.OptimConfig`, `loop` → `btbnet.train.LoopConfig`, `input` →
`btbnet.data.InputConfig`, `speed` → `btbnet.speed.SpeedConfig`, `ray` → `RayConfig` below. A
stage's own section may hold any of these blocks too; its keys override the shared ones, and
an error names the section the bad key came from (`pretrain.optim.lr_new: …`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btbnet.config import BTBNetConfig, ConfigError, check_int, check_known, check_number, deep_merge, from_mapping
from btbnet.data import InputConfig, PairDataset, Polarity
from btbnet.speed import SpeedConfig
from btbnet.train import LoopConfig, OptimConfig

from ..runtime.params import Params, ParamsError, resolve
from .store import local_folder

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
            raise ConfigError("placement_strategy", f"must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}")

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
    """The whole recipe of one training stage: its fields are the blocks of `train:`."""

    optim: OptimConfig
    loop: LoopConfig
    input: InputConfig
    ray: RayConfig
    speed: SpeedConfig = SpeedConfig()

    def __post_init__(self) -> None:
        if self.loop.batch_size % self.ray.num_workers:
            raise ConfigError(
                "loop.batch_size", f"{self.loop.batch_size} is not divisible by ray.num_workers={self.ray.num_workers}"
            )
        if not self.input.fixed_size and self.loop.batch_size != self.ray.num_workers:
            raise ConfigError("input.image_size", "null with no crop_size (native sizes) needs loop.batch_size 1 per worker")


BLOCKS: dict[str, type] = typing.get_type_hints(TrainConfig)  # block name → its config class


def train_config(params: Params, name: str) -> TrainConfig:
    """`train:` with the blocks of section `name` merged over it; errors name the key."""
    shared, own = params.section("train"), params.section(name)
    check_known(shared, BLOCKS, "train.")
    built = {}
    for block, cls in BLOCKS.items():
        merged = deep_merge(dict(shared[block]) if block in shared else {}, dict(own[block]) if block in own else {})
        built[block] = from_mapping(cls, merged, prefix=f"{name if block in own else 'train'}.{block}.")
    try:
        return TrainConfig(**built)
    except ConfigError as exc:
        raise ParamsError(f"{name}.{exc.key}", exc.problem) from None


@dataclass(frozen=True)
class StageSpec:
    """Everything one training stage needs; absolute paths (Ray workers run elsewhere)."""

    name: str
    data: str | Path  # image/ + gt/: a local folder or a URI (`store.local_folder`)
    polarity: Polarity  # what white means in data's masks
    out: Path  # the final checkpoint
    metrics: Path
    plots: Path  # DVC plots: steps.csv, epochs.csv, losses.png (`reporting.write_loss_plots`)
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


def stage_spec(params: Params, name: str, own: Any, **fields: Any) -> StageSpec:
    """Training stage `name`'s spec: the outputs its section `own` names (model, metrics, plots;
    made absolute), its recipe (`train_config`) and the stage's own `fields`."""
    return StageSpec(name=name, out=resolve(own.model), metrics=resolve(own.metrics), plots=resolve(own.plots),
                     train=train_config(params, name), **fields)  # fmt: skip
