"""Shared helpers of the pipeline tests: a temporary git copy of the repo, tiny params, stages.

The stages read `<repo>/params.yaml` and write next to it (outs, mlflow.db, mlruns/), so each
test that runs one works in its own copy: the tracked and untracked-not-ignored files (what a
fresh clone plus the work in progress holds) without the pipeline's outputs, committed to a
fresh git repository so that DVC and the stages' `git rev-parse HEAD` work there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from btbnet.checkpoint import save_checkpoint
from btbnet.config import BTBNetConfig, deep_merge
from btbnet.model import build_model


REPO = Path(__file__).resolve().parents[1]
PYTHON_DIR = Path(sys.executable).parent
DVC = PYTHON_DIR / "dvc" if (PYTHON_DIR / "dvc").exists() else Path(shutil.which("dvc") or "dvc")

# Written into the copy's params.yaml: the smallest run that still exercises every code path
# (two DDP workers, augmentation, all three scales). Independent of the defaults' values.
TINY_TRAIN = {
    "loop": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
    "input": {"image_size": 16},
    "ray": {"num_workers": 2, "cpus_per_worker": 0.5, "loader_workers": 0, "use_gpu": False},
}
TINY_PARAMS: dict[str, Any] = {
    "model": {"width": 0.0625},
    "train": TINY_TRAIN,
    "evaluate": {"max_size": 32, "device": "cpu"},
}

# A training that Ray Train checkpoints part-way and resumes: steps per epoch, checkpoint interval.
# Ray Train resumes from a reported checkpoint only once its poll of the workers has registered
# it (every 0.2 s in stage_env; docs/reliability.md): the checkpoint intervals of these short
# steps outlast it.
STEPS, EVERY = 16, 8
RESUMABLE: dict[str, Any] = {
    "train": {
        "input": {"image_size": 64},
        "loop": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": STEPS},
        "ray": {"num_workers": 2, "cpus_per_worker": 0.5, "checkpoint_every_steps": EVERY, "max_failures": 2},
    }
}

# Variables that would send a stage's output elsewhere than the copy, or make it a DVC experiment.
_FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "RAY_ADDRESS", "PYTHONPATH")


def stage_env() -> dict[str, str]:
    """The environment of a stage subprocess: this interpreter's `python` first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV and not k.startswith("DVC_")}
    env["PATH"] = f"{PYTHON_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["SHELL"] = "/bin/sh"  # DVC runs stages with $SHELL -c: the same shell wherever the tests run
    # Ray Train polls its workers every 2 s by default (docs/scale-out.md): a tiny run spends
    # most of its life waiting for the poll to see it start and finish; 0.2 s here.
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "pipeline tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@example.invalid"
    return env


def read_params(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / "params.yaml").read_text())


def write_params(repo: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into `<repo>/params.yaml`; returns the new content."""
    params = deep_merge(read_params(repo), updates)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def output_paths(params: dict[str, Any]) -> list[str]:
    """Every path a stage writes (dvc.yaml's outs, metrics and plots), as in params.yaml."""
    s, p, f, b, e = (params[k] for k in ("synthesize", "pretrain", "finetune", "baselines", "evaluate"))
    return [s["out_dir"], s["metrics"], p["model"], p["metrics"], f["model"], f["metrics"], b["metrics"],
            e["headline"], e["metrics"], e["plots_dir"], e["figures_dir"]]  # fmt: skip


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, env=stage_env(), capture_output=True, text=True, check=True)
    return done.stdout


def copy_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A committed git copy of the repo at `dest`, without pipeline outputs, `params` merged in."""
    listed = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    outputs = [Path(p) for p in output_paths(read_params(REPO))]
    for name in filter(None, listed):
        rel = Path(name)
        src = REPO / rel
        if not src.is_file() or any(rel == out or out in rel.parents for out in outputs):
            continue  # deleted in the work tree, or a stage's output (data/synthetic, models, …)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    if params:
        write_params(dest, params)
    git(dest, "init", "--quiet", "--initial-branch=main")
    git(dest, "add", "--all")
    git(dest, "commit", "--quiet", "--no-verify", "-m", "pipeline test copy")
    return dest


def run_stage(repo: Path, stage: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.<stage>` in `repo`, as dvc.yaml's cmd runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}"],
        cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=timeout,
    )


class RayStarted(AssertionError):
    """A stage that should have failed before Ray tried to start it."""


def execute_stage(repo: Path, stage: str, monkeypatch: Any, capsys: Any, tracking_uri: str | None = None) -> tuple[int, str]:
    """Stage `stage` run in this process on `repo`'s params.yaml, as `python -m pipeline.<stage>`
    runs it up to the point it would start Ray: (exit status, stderr). Paths in the params
    resolve in `repo`; MLflow logs to `tracking_uri`, by default a store beside the repo
    (`<repo>/../inprocess.db`, which must stay absent when the stage fails before its run);
    starting Ray raises `RayStarted`."""
    import importlib

    import pipeline.runtime.params
    from pipeline.runtime import cluster
    from pipeline.runtime import stage as stage_lib

    module = importlib.import_module(f"pipeline.{stage}")
    monkeypatch.setattr(pipeline.runtime.params, "REPO_ROOT", repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri or f"sqlite:///{repo.parent / 'inprocess.db'}")

    def no_ray(*args: Any, **kwargs: Any) -> bool:
        raise RayStarted(f"{stage} started Ray")

    monkeypatch.setattr(cluster, "init_ray", no_ray)
    capsys.readouterr()
    status = stage_lib.execute(stage, module.configure, module.__dict__.get("run") or module.train_stage,
                               pipeline.runtime.params.load_params(repo / "params.yaml"))  # fmt: skip
    return status, capsys.readouterr().err


def dvc(repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`dvc <args>` in `repo`; output captured, never raises on a non-zero exit."""
    return subprocess.run(
        [str(DVC), *args], cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=timeout,
    )


def describe(done: subprocess.CompletedProcess[str]) -> str:
    """A failed subprocess for an assertion message: its exit code and output tails."""
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"


def error_line(stderr: str, stage: str) -> str:
    """The one `<stage>: error: …` line of a stage's stderr (asserted to be exactly one)."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"{stage}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def write_pretrained(repo: Path) -> Path:
    """A valid tiny `models/pretrain.pt` in `repo` (what finetune starts from)."""
    return save_checkpoint(build_model(BTBNetConfig(width=0.0625)), repo / "models" / "pretrain.pt")


def logged_steps(epochs: int, steps: int) -> list[int]:
    """The steps rank 0 logs (every 5th and each epoch's last), each exactly once."""
    return [e * steps + s for e in range(epochs) for s in range(steps) if s % 5 == 0 or s == steps - 1]


def step_history(repo: Path, stage: str, uri: str | None = None) -> list[int]:
    """The logged steps of the stage's one finished MLflow run (in `repo`'s store, or at `uri`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("btbnet").experiment_id],
                              f"tags.`btbnet.stage` = '{stage}' and attributes.status = 'FINISHED'")  # fmt: skip
    assert len(runs) == 1, [(r.info.run_name, r.info.status) for r in runs]
    return sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "step/total"))


def fake_synthetic_set(repo: Path) -> None:
    """pretrain's data without running synthesize: the embedded pairs (any masks will do)."""
    shutil.copytree(repo / "data/embedded/defocus/train", repo / "data" / "synthetic")
