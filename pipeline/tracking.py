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
import socket
import subprocess
import time
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from btbnet.config import flatten

from . import stage as stage_lib
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
def stage_run(stage: str, params: dict[str, Any], run_key: str | None = None, resume: bool = False) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, with its params (nested keys dotted, lists as JSON) and
    the grouping tags. It ends FINISHED, FAILED (an error) or KILLED (SIGINT / SIGTERM); runs
    of this stage left RUNNING by a process that no longer exists (SIGKILL) are marked KILLED.

    run_key: tagged `btbnet.run_key`; with `resume`, the unfinished run of this stage with that
    key (a killed training being resumed) is continued instead of a new one started, so one
    stage run keeps one MLflow run and one loss curve."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:  # a server keeps the artifacts itself
        local = None if os.environ.get("MLFLOW_TRACKING_URI") else (REPO_ROOT / "mlruns").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=local)
    experiment = mlflow.set_experiment(EXPERIMENT)
    close_orphaned_runs(experiment.experiment_id, stage)
    owner = {"btbnet.host": socket.gethostname(), "btbnet.pid": str(os.getpid())}
    tags = pipeline_tags(stage) | owner | ({"btbnet.run_key": run_key} if run_key else {})
    previous = unfinished_run(experiment.experiment_id, stage, run_key) if resume and run_key else None
    if previous is not None:
        MlflowClient(tracking_uri()).update_run(previous, status="RUNNING")
    with mlflow.start_run(run_id=previous, run_name=None if previous else stage, tags=tags) as run:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(params).items()})
        try:
            yield run
        except (KeyboardInterrupt, SystemExit) as exc:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if stage_lib.interruption(exc) else RunStatus.FAILED))
            raise


def unfinished_run(experiment_id: str, stage: str, run_key: str) -> str | None:
    """The id of the latest run of `stage` with `run_key` that did not finish, if any."""
    runs = MlflowClient(tracking_uri()).search_runs(
        [experiment_id],
        f"tags.`btbnet.stage` = '{stage}' and tags.`btbnet.run_key` = '{run_key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def close_orphaned_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process, on this host, is gone; their ids."""
    client = MlflowClient(tracking_uri())
    runs = client.search_runs(
        [experiment_id],
        f"tags.`btbnet.stage` = '{stage}' and attributes.status = 'RUNNING' and tags.`btbnet.host` = '{socket.gethostname()}'",
    )
    closed = []
    for run in runs:
        pid = int(run.data.tags.get("btbnet.pid", "0"))
        if pid != os.getpid() and not alive(pid):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run.info.run_id)
    return closed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return pid > 0


class MetricLogger:
    """Logs metrics to an existing run by id: usable inside a Ray worker (rank 0).

    `log` buffers and `flush` sends. A restarted worker redoes the steps after its checkpoint:
    `last_step` tells which of them the run already holds, so that each is logged once."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.pending: list[Metric] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def last_step(self, key: str) -> int:
        """The highest step logged for `key` in the run (-1: none)."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def flush(self) -> None:
        for i in range(0, len(self.pending), self.BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + self.BATCH])
        self.pending = []
