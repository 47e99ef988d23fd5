"""MLflow for the stages: one run per stage, grouped by a shared `pipeline` tag.

Store: $MLFLOW_TRACKING_URI if set (a server, for a cluster), else `sqlite:///<repo>/mlflow.db`
with artifacts under `<repo>/mlruns/`: exactly what `mlflow ui`, run with no arguments from the
repo root, shows. The URI is absolute so that Ray workers, which run elsewhere, log to it too.

Grouping: every run of one `dvc repro` / `dvc exp run` carries the tags `dvc.exp_name` (DVC's
$DVC_EXP_NAME, "workspace" for a plain `dvc repro`), `git.commit` and `pipeline` =
"<exp_name>@<commit>"; search with `tags.pipeline = '...'` or group by it in the UI.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from .params import REPO_ROOT

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

EXPERIMENT = "btbnet"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def pipeline_tags(stage: str) -> dict[str, str]:
    exp_name = os.environ.get("DVC_EXP_NAME") or "workspace"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "btbnet.stage": stage,
        "dvc.exp_name": exp_name,
        "git.commit": commit,
        "pipeline": f"{exp_name}@{commit[:12]}",
    }


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, with its params and the grouping tags."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(REPO_ROOT / "mlruns").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=stage, tags=pipeline_tags(stage)) as run:
        mlflow.log_params(flatten(params))
        yield run


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists become JSON strings (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


class MetricLogger:
    """Logs metrics to an existing run by id: usable inside a Ray worker (rank 0)."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_model(checkpoint: Path, example_size: int) -> None:
    """Log a checkpoint's model (probability maps out) with its signature and input example.

    The network is fully convolutional, so the signature takes any batch and any H × W. It is
    pickled: torch.export ("pt2", MLflow's default) fixes H × W at the example's size, since
    it cannot keep them symbolic through the streams' `round(H * scale)` resizes.
    """
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import btbnet
    from btbnet.model import FocusMap

    model = FocusMap(btbnet.load_checkpoint(checkpoint)).eval()
    example = np.random.default_rng(0).random((1, 3, example_size, example_size), dtype=np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),  # RGB [B, 3, H, W] in [0, 1]
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),  # in-focus probability
    )
    mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=example,
        signature=signature,
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
        code_paths=[str(REPO_ROOT / "btbnet")],
    )


