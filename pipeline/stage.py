"""What every stage shares: `configure` then `run`, one-line errors, all-or-nothing outputs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from btbnet.config import ConfigError
from btbnet.data import DataError
from btbnet.io import atomic_output, remove

from .params import REPO_ROOT, Params, load_params

C = TypeVar("C")


def main(stage: str, configure: Callable[[Params], C], run: Callable[[C], None]) -> None:
    """Read params.yaml, build the stage's config, run it.

    Bad input ends the stage with `<stage>: error: <message>` on stderr and exit code 2.
    """
    try:
        run(configure(load_params()))
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging path for `out`, moved onto it only if the block succeeds.

    `out` is deleted first: DVC caches outs by content, so a failed stage must leave nothing
    there, neither half-written nor old.
    """
    remove(out)
    with atomic_output(out) as tmp:
        yield tmp


def write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def init_ray() -> None:
    """Connect to $RAY_ADDRESS (a cluster, see infra/) or start a local Ray instance.

    Workers import `pipeline` and `btbnet` from the repo root: on a cluster the repo must be at
    the same path on every node (infra/cluster.yaml mounts it there).
    """
    import ray

    if ray.is_initialized():
        return
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "TORCH_HOME"):
        if var in os.environ:
            env[var] = os.environ[var]
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or "local",  # None would join any `ray start` cluster here
        runtime_env={"env_vars": env},
        log_to_driver=True,
        logging_level="WARNING",
    )
