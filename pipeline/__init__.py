"""DVC stage entry points: `python -m pipeline.<stage>`, one module per stage of dvc.yaml."""

import os

# Quiet, offline-friendly defaults for every stage process and the Ray workers it starts.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
