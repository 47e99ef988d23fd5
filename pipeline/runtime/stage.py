"""What every stage shares: `configure` then `run`, one-line errors, all-or-nothing outputs,
and a clean end when it is interrupted.

Guarantees (docs/reliability.md):
- bad input: `<stage>: error: <message>` on stderr, exit 2, and none of the stage's outputs;
- SIGINT / SIGTERM, or the death of the parent process (`dvc repro` killed): the stage stops,
  its staging files, MLflow run (marked KILLED) and local Ray instance are cleaned up, and it
  exits 130 without writing any output (never behind DVC's back after DVC is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from btbnet.config import ConfigError
from btbnet.data import DataError
from btbnet.io import atomic_output, remove

from . import cluster
from . import params as params_lib
from .params import Params, load_params
from .process import INTERRUPTED, die_with_parent, interrupt_on_sigterm, interruption, skip_final_collection

ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, FloatingPointError)  # bad input: exit 2


class StageConfig(Protocol):
    @property
    def outputs(self) -> Sequence[Path]:
        """Every path the stage writes: its dvc.yaml outs, metrics and plots (absolute)."""


C = TypeVar("C", bound=StageConfig)


def main(stage: str, configure: Callable[[Params], C], run: Callable[[C], None]) -> None:
    """The stage's process: die with `dvc repro`, turn SIGTERM into an interrupt, keep the
    console quiet, then `execute` and exit with its status (skipping Python's last garbage
    collection: `skip_final_collection`)."""
    die_with_parent()
    interrupt_on_sigterm()
    skip_final_collection()
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
            raise ConfigError(str(path), f"an output outside the repo ({root}); DVC tracks and caches outputs inside it only")


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
    the middle of ours. Ray is shut down first (`cluster.stop_ray`: which stops that thread, what it forwards comes
    before our line), and the line goes out in one write.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        cluster.stop_ray()
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def quiet() -> None:
    """Silence the console lines that say nothing to a pipeline user (docs/reliability.md, "Console output"):
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
