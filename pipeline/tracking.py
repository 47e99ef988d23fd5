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
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from btbnet.config import flatten

from .params import REPO_ROOT

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
    """An MLflow run for one stage, with its params (nested keys dotted, lists as JSON) and
    the grouping tags."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(REPO_ROOT / "mlruns").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=stage, tags=pipeline_tags(stage)) as run:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(params).items()})
        yield run


class MetricLogger:
    """Logs metrics to an existing run by id: usable inside a Ray worker (rank 0)."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
