"""MLflow for the stages: one run per stage, grouped by a shared `pipeline` tag.

Store: $MLFLOW_TRACKING_URI if set (a server, for a cluster), else `sqlite:///<repo>/mlflow.db`
with artifacts under `<repo>/mlruns/`: exactly what `mlflow ui`, run with no arguments from the
repo root, shows. The URI is absolute so that Ray workers, which run elsewhere, log to it too.

Grouping: the stage runs of one `dvc repro` / `dvc exp run` are nested under one parent run
named after the DVC experiment ($DVC_EXP_NAME, "workspace" for a plain `dvc repro`), and are
named `<experiment>/<stage>`; every run carries the tags `dvc.exp_name`, `git.commit` and
`pipeline` = "<exp_name>@<commit>" (search with `tags.pipeline = '...'`). A stage run outside
DVC (`python -m pipeline.<stage>`) has no parent. Queued experiments (`dvc exp run --queue`) run
in a copy of the repo under `.dvc/tmp/`, and log to the repo's own store all the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
import psutil
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from btbnet.config import flatten
from btbnet.io import file_sha256

from . import process
from .params import REPO_ROOT

EXPERIMENT = "btbnet"
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it trains models:
# then on its runs table (the training view).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


PARENT_TAG = "btbnet.invocation"  # the DVC process a parent run stands for
SYSTEM_METRICS_INTERVAL_S = 5.0
SHA_TAG = "btbnet.sha256"  # a logged model's checkpoint digest: how evaluate finds the model it scores


def logged_model_id(checkpoint: Path) -> str | None:
    """The MLflow logged model of this very checkpoint file (by content), if one was logged."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = mlflow.search_logged_models([experiment.experiment_id], filter_string=f"tags.`{SHA_TAG}` = '{file_sha256(checkpoint)}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1, output_format="list")  # fmt: skip
    return found[0].model_id if found else None


def workspace_root() -> Path:
    """The repo whose store the runs go to: REPO_ROOT, or for a queued DVC experiment (run in a
    temporary copy under `<repo>/.dvc/tmp/`) the repo that queued it."""
    parts = REPO_ROOT.parts
    return Path(*parts[: parts.index(".dvc")]) if ".dvc" in parts else REPO_ROOT


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root() / 'mlflow.db'}"


def invocation() -> str | None:
    """'<host>:<pid>:<start time>' of the `dvc repro` / `dvc exp run` process running this
    stage (the first of its launchers that is not a shell); None outside DVC."""
    if "DVC_STAGE" not in os.environ:
        return None
    pid = process.launchers()[-1][0]
    with contextlib.suppress(psutil.Error):
        return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.0f}"
    return None


def pipeline_run(experiment_id: str, key: str, tags: dict[str, str]) -> str:
    """The parent run of DVC invocation `key` (created by its first stage, named after the
    experiment), set RUNNING while a stage runs; its id."""
    client = MlflowClient(tracking_uri())
    found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    shared = {k: v for k, v in tags.items() if k in ("dvc.exp_name", "git.commit", "pipeline")}
    return client.create_run(experiment_id, run_name=tags["dvc.exp_name"], tags=shared | {PARENT_TAG: key}).info.run_id


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
def stage_run(stage: str, params: dict[str, Any], run_key: str | None = None, resume: bool = False,
              system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:  # fmt: skip
    """An MLflow run for one stage, with its params (nested keys dotted, lists as JSON) and
    the grouping tags, nested under its DVC invocation's parent run. It ends FINISHED, FAILED
    (an error) or KILLED (SIGINT / SIGTERM), and so does the parent, until the next stage; runs
    of this stage left RUNNING by a process that no longer exists (SIGKILL) are marked KILLED.
    system_metrics: CPU, memory (and GPU, with pynvml) sampled every few seconds into the run.

    run_key: tagged `btbnet.run_key`; with `resume`, the unfinished run of this stage with that
    key (a killed training being resumed) is continued instead of a new one started, so one
    stage run keeps one MLflow run and one loss curve."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:  # a server keeps the artifacts itself
        local = None if os.environ.get("MLFLOW_TRACKING_URI") else (workspace_root() / "mlruns").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=local, tags={EXPERIMENT_KIND: MODEL_TRAINING})
    experiment = mlflow.set_experiment(EXPERIMENT)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:  # a store made before the tag
        MlflowClient(tracking_uri()).set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    close_orphaned_runs(experiment.experiment_id, stage)
    close_orphaned_parents(experiment.experiment_id)
    owner = {"btbnet.host": socket.gethostname(), "btbnet.pid": str(os.getpid())}
    tags = pipeline_tags(stage) | owner | ({"btbnet.run_key": run_key} if run_key else {})
    client = MlflowClient(tracking_uri())
    parent = pipeline_run(experiment.experiment_id, key, tags) if (key := invocation()) else None
    previous = unfinished_run(experiment.experiment_id, stage, run_key) if resume and run_key else None
    if previous is not None:
        client.update_run(previous, status="RUNNING")
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    status = "FAILED"
    try:
        with mlflow.start_run(run_id=previous, run_name=None if previous else f"{tags['dvc.exp_name']}/{stage}", tags=tags,
                              parent_run_id=parent, log_system_metrics=system_metrics) as run:  # fmt: skip
            mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(params).items()})
            try:
                yield run
            except (KeyboardInterrupt, SystemExit) as exc:
                status = RunStatus.to_string(RunStatus.KILLED if process.interruption(exc) else RunStatus.FAILED)
                mlflow.end_run(status)
                raise
        status = "FINISHED"
    finally:
        if parent is not None:
            client.set_terminated(parent, status)


def log_headline(metrics: dict[str, float]) -> None:
    """`metrics` on the active stage run and on its parent, the run of the whole DVC invocation,
    so that MLflow's runs table compares experiments without expanding them."""
    mlflow.log_metrics(metrics)
    parent = mlflow.active_run().data.tags.get("mlflow.parentRunId")
    if parent is not None:
        MlflowClient(tracking_uri()).log_batch(parent, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()])


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


def close_orphaned_parents(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING parent runs of DVC invocations on this host that are gone (a
    `dvc repro` SIGKILLed while a stage ran: nothing in it could close its run); their ids."""
    client = MlflowClient(tracking_uri())
    host = socket.gethostname()
    runs = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{PARENT_TAG}` LIKE '{host}:%'")
    closed = []
    for run in runs:
        _, pid, started = run.data.tags[PARENT_TAG].rsplit(":", 2)
        if not invocation_alive(int(pid), started):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run.info.run_id)
    return closed


def invocation_alive(pid: int, started: str) -> bool:
    """Whether process `pid` is the one that started at `started` (seconds, as `invocation`
    writes it) and still runs: a new process may have taken a dead one's pid."""
    try:
        return f"{psutil.Process(pid).create_time():.0f}" == started
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return pid > 0
