"""The Ray Train job shared by pretrain and finetune (section 4.1's recipe, DDP on Ray).

Each worker builds the model (or loads the stage's initial checkpoint), wraps it in DDP with
`prepare_model`, reads its shard of the (image, mask) folder through a DistributedSampler and
runs `btbnet.train.train_epoch`. After every epoch rank 0 alone saves a checkpoint, reports it
to Ray Train and logs the losses to the stage's MLflow run; the other ranks report metrics only.

Every Ray Train run gets a fresh directory under `.ray_runs/` (Ray Train silently resumes from
an existing run with the same name); it is deleted once the final model is copied out.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from btbnet import BTBNetConfig

from . import stage
from .figures import plot_lines
from .params import REPO_ROOT, TrainParams, resolve
from .tracking import log_model, stage_run, tracking_uri

RAY_RUNS = REPO_ROOT / ".ray_runs"


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; plain values, absolute paths (workers run elsewhere)."""

    stage: str
    data: str
    polarity: str
    train: TrainParams
    model_config: dict[str, Any] | None  # build this model …
    init_checkpoint: str | None  # … or start from this checkpoint
    vgg16_weights: str | None
    mlflow_uri: str
    mlflow_run_id: str


def train_loop_per_worker(job_dict: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader

    import btbnet
    from btbnet.data import PairDataset
    from btbnet.train import make_optimizer, train_epoch

    from .tracking import MetricLogger

    job = TrainJob(**{**job_dict, "train": TrainParams(**job_dict["train"])})
    t = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)

    if job.init_checkpoint:
        model = btbnet.load_checkpoint(job.init_checkpoint).train()
    else:
        model = btbnet.build_model(BTBNetConfig.from_dict(job.model_config), vgg16_weights=job.vgg16_weights)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, t.optim())

    dataset = PairDataset(job.data, polarity=job.polarity, size=t.image_size, augment=t.augment)
    generator = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(
        dataset, batch_size=t.batch_size // world, shuffle=True, generator=generator, num_workers=t.loader_workers
    )
    loader = ray.train.torch.prepare_data_loader(loader)
    device = ray.train.torch.get_device()
    logger = MetricLogger(job.mlflow_uri, job.mlflow_run_id) if rank == 0 else None
    steps_per_epoch = min(len(loader), t.max_steps_per_epoch or len(loader))

    for epoch in range(t.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        started = time.perf_counter()

        def on_step(step: int, terms: dict[str, float]) -> None:
            if logger and (step % 5 == 0 or step == steps_per_epoch - 1):
                logger.log({f"step/{k}": v for k, v in terms.items()}, step=epoch * steps_per_epoch + step)

        terms = train_epoch(
            model, loader, optimizer, t.optim(), device=device, on_step=on_step, max_steps=t.max_steps_per_epoch
        )
        metrics = {f"epoch/{k}": v for k, v in terms.items()}
        metrics["epoch/seconds"] = time.perf_counter() - started
        metrics["epoch"] = epoch
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                btbnet.save_checkpoint(model, Path(tmp) / "model.pt", epoch=epoch, stage=job.stage)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                logger.log(metrics, step=epoch)
            ray.train.report(metrics, checkpoint=checkpoint)


def run_training(job: TrainJob, out: Path) -> dict[str, float]:
    """Fit with Ray Train's TorchTrainer and copy the final model to `out` (a staging path)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = job.train
    name = f"{job.stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    job_dict = asdict(job)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job_dict,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(RAY_RUNS), name=name, checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)
        ),
    )
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
        with result.checkpoint.as_directory() as d:
            shutil.copyfile(Path(d) / "model.pt", out)
        return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    finally:
        shutil.rmtree(RAY_RUNS / name, ignore_errors=True)


def log_loss_curves(run_id: str) -> None:
    """The per-step losses that rank 0 logged, as a picture in the stage's MLflow run."""
    client = mlflow.tracking.MlflowClient(tracking_uri())
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("step/"))
    lines = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        lines[key.removeprefix("step/")] = ([m.step for m in history], [m.value for m in history])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "loss.png"
        plot_lines(lines, path, xlabel="step", ylabel="loss (eq. 6, per term)", title="training loss")
        mlflow.log_artifact(str(path))


def train_stage(
    name: str,
    t: TrainParams,
    data: Path,
    polarity: str,
    logged_params: dict[str, Any],
    model_config: BTBNetConfig | None = None,
    init_checkpoint: Path | None = None,
    vgg16_weights: str | None = None,
) -> None:
    """A whole training stage: check the data, fit on Ray, write model + metrics, log to MLflow."""
    from btbnet.data import PairDataset

    dataset = PairDataset(data, polarity=polarity, size=t.image_size, augment=t.augment)  # fails fast, names the file
    out = resolve(t.model)
    with stage_run(name, logged_params) as run:
        mlflow.log_params({"train_samples": len(dataset), "train_pairs": len(dataset.pairs)})
        stage.init_ray()
        job = TrainJob(
            stage=name,
            data=str(data),
            polarity=polarity,
            train=t,
            model_config=model_config.to_dict() if model_config else None,
            init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
            vgg16_weights=vgg16_weights,
            mlflow_uri=tracking_uri(),
            mlflow_run_id=run.info.run_id,
        )
        with stage.staged(out) as tmp:
            metrics = run_training(job, tmp)
        metrics["train_samples"] = len(dataset)
        stage.write_json(resolve(t.metrics), metrics)
        mlflow.log_artifact(str(resolve(t.metrics)))
        log_loss_curves(run.info.run_id)
        log_model(out, example_size=t.image_size or 64)
    print(f"{name}: loss {metrics.get('epoch/total', float('nan')):.4f} after {t.epochs} epochs, model in {out}")
