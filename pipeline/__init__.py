"""DVC stage entry points: `python -m pipeline.<stage>`, one module per stage of dvc.yaml."""

import os
import sys

# Quiet, offline-friendly defaults for every stage process and the Ray workers it starts.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

# A stage's own process (`python -m pipeline.<stage>`) dies with `dvc repro` from this line on,
# before any heavy import: killed in its first seconds, it must not live on to write outputs
# while the next `dvc repro` runs (pipeline/runtime/process.py).
if sys.platform != "win32" and getattr(sys, "orig_argv", None):
    from .runtime.process import die_with_parent, started_as_stage

    if started_as_stage(sys.orig_argv):
        die_with_parent()
