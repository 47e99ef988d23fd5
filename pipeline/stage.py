"""What every stage shares: error reporting, all-or-nothing outputs, Ray start-up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from btbnet import ConfigError
from btbnet.data import DataError

from .params import REPO_ROOT


def main(stage: str, body: Callable[[], None]) -> None:
    """Run a stage; bad input ends it with `<stage>: error: <message>` and exit code 2."""
    try:
        body()
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging path beside `out`, moved onto `out` only if the block succeeds.

    DVC caches outs by content: a failed stage must leave nothing there, half-written or old.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    remove(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        remove(tmp)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with staged(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def init_ray() -> None:
    """Connect to $RAY_ADDRESS (a cluster, see infra/) or start a local Ray instance.

    Workers import `pipeline` and `btbnet` from the repo root: on a cluster the repo must be at
    the same path on every node (infra/cluster.yaml mounts it there).
    """
    import ray

    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
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
