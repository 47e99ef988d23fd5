"""What every stage shares: `configure` then `run`, one-line errors, all-or-nothing outputs,
and a clean end when it is interrupted.

Guarantees (README, "Reliability"):
- bad input: `<stage>: error: <message>` on stderr, exit 2, and none of the stage's outputs;
- SIGINT / SIGTERM, or the death of the parent process (`dvc repro` killed): the stage stops,
  its staging files, MLflow run (marked KILLED) and local Ray instance are cleaned up, and it
  exits 130 without writing any output (never behind DVC's back after DVC is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from btbnet.config import ConfigError
from btbnet.data import DataError
from btbnet.io import atomic_output, remove

from . import params as params_lib
from .params import REPO_ROOT, Params, load_params
from .process import INTERRUPTED, die_with_parent, interrupt_on_sigterm, interruption

ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, FloatingPointError)  # bad input: exit 2


class StageConfig(Protocol):
    @property
    def outputs(self) -> Sequence[Path]:
        """Every path the stage writes: its dvc.yaml outs, metrics and plots (absolute)."""


C = TypeVar("C", bound=StageConfig)


def main(stage: str, configure: Callable[[Params], C], run: Callable[[C], None]) -> None:
    """The stage's process: die with `dvc repro`, turn SIGTERM into an interrupt, keep the
    console quiet, then `execute` and exit with its status."""
    die_with_parent()
    interrupt_on_sigterm()
    quiet()
    sys.exit(execute(stage, configure, run))


def execute(stage: str, configure: Callable[[Params], C], run: Callable[[C], None], params: Params | None = None) -> int:
    """Read params.yaml (or take `params`), build the stage's config, check what the stage
    needs before it touches anything (outputs inside the repo, the tracking server reachable),
    remove its old outputs, run it. The exit status: 0; 2 for bad input or a system error such
    as a full disk (`<stage>: error: <message>` on stderr, naming the key, the file or the
    server); 130 for an interruption (`<stage>: interrupted (<signal>); no output written`)."""
    try:
        config = configure(load_params() if params is None else params)
        check_outputs(config.outputs)
        check_tracking_server()
        for path in config.outputs:  # none of a previous run's outputs may outlive a failed run
            remove(path)
        run(config)
    except ERRORS as exc:
        last_line(f"{stage}: error: {exc}")
        return 2
    except OSError as exc:  # a full disk, a folder it may not write: the path and the reason
        last_line(f"{stage}: error: {f'{exc.filename}: ' if exc.filename else ''}{exc.strerror or exc}")
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:
        if (name := interruption(exc)) is None:
            raise
        last_line(f"{stage}: interrupted ({name}); no output written")
        return INTERRUPTED
    return 0


def check_outputs(outputs: Sequence[Path]) -> None:
    """ConfigError naming an output outside the repo: DVC refuses such outs, but only after the
    stage has run (and left them there)."""
    root = params_lib.REPO_ROOT.resolve()
    for path in outputs:
        if not Path(path).resolve().is_relative_to(root):
            raise ConfigError(f"{path}: an output outside the repo ({root}); DVC tracks and caches outputs inside it only")


TRACKING_TIMEOUT_S = 5.0


def check_tracking_server(timeout_s: float = TRACKING_TIMEOUT_S) -> None:
    """ValueError, "mlflow: cannot reach <uri>: <why>", unless the tracking server that
    $MLFLOW_TRACKING_URI names (if an http(s) one) answers within `timeout_s`: MLflow's own
    client would retry for minutes, after the stage had cleared its outputs."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an error status still says the server is there)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(f"mlflow: cannot reach {uri}: {reason}") from None


class TrackingUnreachable(ValueError):
    """The tracking server does not answer."""


def last_line(line: str) -> None:
    """Write the stage's closing `line` on stderr as a line of its own.

    Ray forwards its processes' output to the driver's stderr from a thread, one `print` (two
    writes) at a time; a line such as `(TrainController pid=…) Failed to stop …` could land in
    the middle of ours. Ray is shut down first (which stops that thread: what it forwards comes
    before our line), and the line goes out in one write.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def quiet() -> None:
    """Silence the console lines that say nothing to a pipeline user (README, "Console output"):
    MLflow's INFO lines on system-metrics sampling, its advice on pickled models (the logged
    model carries the checkpoint, which `btbnet predict --model models:/…` loads as plain
    weights), its warning on a dataset source path that two source types accept, and Ray's
    notice, at each local start, that token authentication is on (Ray's default, kept)."""
    import logging
    import warnings

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging path for `out`, moved onto it only if the block succeeds.

    `out` is deleted first: DVC caches outs by content, so a failed stage must leave nothing
    there, neither half-written nor old.
    """
    remove(out)
    try:
        with atomic_output(out) as tmp:
            yield tmp
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None  # a failed write names no file: name the output


def write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def init_ray(env_vars: dict[str, str] | None = None) -> bool:
    """Connect to $RAY_ADDRESS (a cluster, see infra/) or start a local Ray instance; True if
    local. `env_vars` are set for every Ray process of the job (with the MLflow settings).

    A local instance's processes are this one's children: they inherit its environment (where
    `env_vars` go) and its working directory, the repo root, so they import this checkout's
    code as it does. On a cluster the workers get the code through Ray's runtime environment
    (`py_modules`: this checkout's btbnet/ and pipeline/, uploaded once per version), so its
    nodes need the dependencies only, not the repo at any path; inside a Ray job submitted with
    `--working-dir` the job's runtime environment already carries the code to every worker.
    """
    import ray

    address = os.environ.get("RAY_ADDRESS") or "local"  # None would join any `ray start` cluster here
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
    if not isinstance(sys.stderr, RayLineFilter):
        sys.stderr = RayLineFilter(sys.stderr)  # Ray's log thread looks sys.stderr up at each line
    if getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return address == "local"
