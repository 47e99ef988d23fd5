"""Ray for the stages: connect to the cluster $RAY_ADDRESS names, or start a local instance,
and keep the console free of what Ray prints that says nothing wrong about the run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
from typing import Any

import psutil

from .params import REPO_ROOT
from .process import interrupt_on_sigterm


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on this machine now (the OS's choice), none of Ray's defaults
    (`ray start` claims those for its own components)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in RAY_DEFAULT_PORTS:
                s.close()
            else:
                held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


# GCS, dashboard, client server and dashboard agent: what every `ray start` claims unless told otherwise.
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


# What Ray's own processes print that says nothing wrong about the run, matched line by line as
# Ray forwards them to the stage's stderr:
HARMLESS_RAY_LINES = (
    # Ray Train's preemption watcher takes actor handles as constructor arguments; Ray's core
    # worker logs that at error level on every worker-group start (ray-project/ray#53727).
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .* has constructor arguments in the object store and max_restarts > 0"),
    # On a busy machine Ray Train's first request to its autoscaling coordinator times out, is
    # retried, and is logged with its traceback ("… it's safe to ignore this error").
    re.compile(r"Failed to send resource request for train-\w+\. If this only happens transiently"),
)
# A dropped line's traceback, which follows it from the same process: its lines after the prefix.
TRACEBACK_LINE = re.compile(r"^(Traceback \(most recent call last\):|  .*|[\w.]+(Error|Exception|Exit)(: .*)?)$")
RAY_PREFIX = re.compile(r"^(\x1b\[\d+m)?\(([^)]*)\)(\x1b\[0m)? ?")  # "(TrainController pid=123) ", maybe coloured


class RayLineFilter:
    """The stage's stderr without HARMLESS_RAY_LINES and the tracebacks that follow them from the
    same process. Ray writes a forwarded line, then its newline, each a `write`; both are
    dropped. Everything else passes unchanged."""

    def __init__(self, stream: Any):
        self.stream, self._dropped, self._skipping = stream, False, None

    def write(self, text: str) -> int:
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        prefix = RAY_PREFIX.match(text)
        source, rest = (prefix.group(2), text[prefix.end() :]) if prefix else (None, text)
        if self._skipping is not None and source == self._skipping and TRACEBACK_LINE.match(rest.rstrip("\n")):
            self._dropped = True
        elif any(p.search(text) for p in HARMLESS_RAY_LINES):
            self._dropped, self._skipping = True, source
        else:
            self._dropped, self._skipping = False, None
        return len(text) if self._dropped else self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def state_api_address(address: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(`ray.init` arguments, environment of every Ray process) that tell Ray's processes where
    the cluster `address` ("local": the instance `ray.init` starts) answers state queries.

    Ray Train's placement-group cleaner asks Ray's state API whether the run is alive; given no
    address it guesses the cluster from /tmp/ray/ray_current_cluster, which names the last
    `ray start` on this machine (maybe long gone): each call then waits out a 10-s timeout and
    the run's end prints a traceback. A local instance gets its dashboard (the state API's
    server) on a port chosen here; a cluster is named by its own address.
    """
    if address != "local":
        return {}, {"RAY_ADDRESS": address}
    [port] = free_ports(1)
    return {"include_dashboard": True, "dashboard_port": port}, {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}


def init_ray(env_vars: dict[str, str] | None = None, address: str | None = None) -> bool:
    """Connect to `address` or else $RAY_ADDRESS (a cluster, see infra/), or start a local Ray
    instance; True if local. `env_vars` are set for every Ray process of the job (with the
    MLflow settings).

    A local instance's processes are this one's children: they inherit its environment (where
    `env_vars` go) and its working directory, the repo root, so they import this checkout's
    code as it does. On a cluster the workers get the code through Ray's runtime environment
    (`py_modules`: this checkout's btbnet/ and pipeline/, uploaded once per version), so its
    nodes need the dependencies only, not the repo at any path; inside a Ray job submitted with
    `--working-dir` the job's runtime environment already carries the code to every worker.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"  # None would join any `ray start` cluster here
    if ray.is_initialized():
        return address == "local"
    env = dict(env_vars or {})
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "TORCH_HOME"):
        if var in os.environ:
            env[var] = os.environ[var]
    kwargs, where = state_api_address(address)
    if address == "local":
        os.environ.update(env | where)
        runtime_env: dict[str, Any] = {}
    else:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env", {})
        code = {} if "working_dir" in job else {"py_modules": [str(REPO_ROOT / "btbnet"), str(REPO_ROOT / "pipeline")]}
        # Inside a Ray job, what the job's runtime env sets reaches every worker already, and Ray
        # refuses a driver that sets the same variable again ("Failed to merge the Job's runtime env").
        runtime_env = code | {"env_vars": {k: v for k, v in (env | where).items() if k not in job.get("env_vars", {})}}
    context = ray.init(
        address=address,
        runtime_env=runtime_env,
        log_to_driver=True,
        logging_level="WARNING",
        **kwargs,
    )
    interrupt_on_sigterm()  # ray.init installs its own handler (sys.exit)
    # Ray's excepthook reports an uncaught exception to the GCS first: when the GCS is gone
    # (killed, out of memory), that call never returns and the stage hangs for ever. Python's
    # own hook just prints.
    sys.excepthook = sys.__excepthook__
    if not isinstance(sys.stderr, RayLineFilter):
        sys.stderr = RayLineFilter(sys.stderr)  # Ray's log thread looks sys.stderr up at each line
    if getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return address == "local"


SHUTDOWN_TIMEOUT_S = 20.0  # Ray's own shutdown; then what is left of a local instance is killed


def stop_ray(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Disconnect from Ray, and stop a local instance for sure: `ray.shutdown()` in a thread,
    at most `timeout_s`; then every process this one started (the local instance's GCS,
    raylet, dashboard, workers) is terminated by PID, killed after 3 s if it lingers. Once
    the GCS is gone (killed, out of memory), Ray's shutdown can wait for ever and cannot stop
    the dashboard or the log monitor: they would outlive the stage."""
    import ray

    children = [p for p in psutil.Process().children(recursive=True) if is_ray_process(p)]
    done = threading.Thread(target=_quiet_shutdown, args=(ray,), name="ray-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def is_ray_process(proc: psutil.Process) -> bool:
    """Whether `proc` is one of a local Ray instance's (its binaries, its Python modules, its
    workers' `ray::` titles), not some other child of the caller's."""
    with contextlib.suppress(psutil.Error):
        command = " ".join(proc.cmdline()) or proc.name()
        return "ray" in proc.name() or "/ray/" in command or command.startswith(("ray::", "ray-"))
    return False


def _quiet_shutdown(ray: Any) -> None:
    with contextlib.suppress(Exception):  # a dead GCS makes Ray's shutdown raise; the PIDs are stopped next
        ray.shutdown()
