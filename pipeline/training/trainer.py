"""The TorchTrainer of a training stage: wait for the cluster, fit, bring the model back, and
tell bad input (the stage's one-line error) from a crash (survived from the last checkpoint)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from btbnet.config import ConfigError

from ..runtime import stage
from .attempts import Attempts
from .config import RayConfig, StageSpec
from .store import RunStore
from .worker import train_loop_per_worker

def wait_for_workers(r: RayConfig, nodes: Callable[[], list[dict[str, Any]]], timeout_s: float, poll_s: float = 2.0) -> None:
    """Return once the cluster (`nodes()`, as `ray.nodes()`) can hold every worker of `r`;
    a ConfigError naming the setting and the cluster after `timeout_s` (0: no waiting)."""
    deadline = time.monotonic() + timeout_s
    while (room := r.slots(listed := nodes())) < r.num_workers:
        if time.monotonic() >= deadline:
            alive = [n.get("Resources", {}) for n in listed if n.get("Alive")]
            have = ", ".join(f"{res.get('CPU', 0):g} CPU + {res.get('GPU', 0):g} GPU" for res in alive) or "no nodes"
            raise ConfigError(
                "train.ray",
                f"{r.describe()} do not fit the Ray cluster (nodes: {have}; room for {room}"
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


def fit_interruptibly(trainer: Any, poll_s: float = 0.5) -> Any:
    """`trainer.fit()` in a thread of its own while the main thread waits on it, so that a
    SIGINT or SIGTERM always reaches the stage as KeyboardInterrupt within `poll_s` (its clean-up
    then shuts Ray down, which ends the fit). In the main thread, `fit` installs a SIGINT
    handler of its own that waits on the controller's abort, for ever if the controller is
    stuck, and no public setting turns it off; off the main thread it installs none (as under
    Ray Tune). The fit's result is returned, its exception raised here."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the stage's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


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
    try:
        result = fit_interruptibly(trainer)
    except ray.train.TrainingFailedError as exc:
        if (bad_input := worker_error(exc)) is not None:
            store.remove(name)
            raise bad_input from None
        startup = getattr(exc, "controller_failure", None)
        if startup is not None and "Timeout" in type(startup).__name__:
            raise ConfigError("train.ray", f"{r.describe()} did not start within ray.start_timeout_s={r.start_timeout_s:g} s ({startup})") from None
        raise
    with result.checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / "model.pt", out)
    store.remove(name)
    seen = ray.get(attempts.summary.remote())
    total = spec.train.loop.epochs * result.metrics.get("steps_per_epoch", 0)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and k != "steps_per_epoch"}
    return metrics | {"worker_restarts": seen["starts"] - 1, "ray_nodes": len(seen["nodes"]), "steps_redone": max(0, seen["steps"] - total), "node_ids": seen["nodes"]}
