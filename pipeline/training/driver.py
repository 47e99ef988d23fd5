"""`train_stage`, the driver of pretrain and finetune: check the inputs, fit on Ray, write the
model, metrics and plots, and log it all to the stage's MLflow run (section 4.1's recipe, DDP on
Ray Train; docs/scale-out.md)."""

from __future__ import annotations

import mlflow

from btbnet.config import ConfigError, to_dict
from btbnet.model import build_model

from ..runtime import cluster, stage
from ..runtime.params import ParamsError
from ..runtime.tracking import stage_run, tracking_uri
from .config import StageSpec
from .reporting import log_data, log_model, write_loss_plots
from .store import RunStore, content_digest, run_key, ship_inputs
from .trainer import run_training
from .worker import MetricLogger


def check_init(spec: StageSpec) -> None:
    """The initial weights load into the stage's model: checked in the driver, before Ray."""
    if spec.backbone_weights is not None:
        try:
            build_model(spec.model, backbone_weights=spec.backbone_weights)
        except (ConfigError, FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
            detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str quotes
            raise ParamsError(f"{spec.name}.backbone_weights", detail) from None


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
        local = cluster.init_ray({"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(spec.train.ray.start_timeout_s)})
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
        last_step = max(0, MetricLogger(tracking_uri(), run.info.run_id).last_step("step/total"))
        log_model(spec, spec.out, dataset.arrays(0)[0], final, step=last_step)  # a training input as the example
    print(f"{spec.name}: loss {metrics.get('epoch/total', float('nan')):.4f} after {spec.train.loop.epochs} epochs, model in {spec.out}")
