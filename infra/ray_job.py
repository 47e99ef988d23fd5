"""Entrypoint of a Ray job: run a pipeline command in a workspace of its own on the cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python infra/ray_job.py --workspace /shared/btbnet-runs/cpu -- python infra/preset.py cpu

A job's `--working-dir` is Ray's scratch copy of the checkout: Ray may replace it while the
job runs and deletes it afterwards, so nothing may be written there. This script copies it to
`--workspace` (a folder that outlives the job: a shared file system, or the head node's disk),
makes that a git repository if it is not one (DVC needs git; the upload has no .git), and runs
the command there. The stages inside connect to the job's cluster (Ray sets RAY_ADDRESS) and
ship their code to every node through Ray's runtime environment, so no node needs the repo.
Outputs, DVC's cache and (without MLFLOW_TRACKING_URI) the MLflow store stay in the workspace.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

IDENTITY = {"GIT_AUTHOR_NAME": "btbnet ray job", "GIT_AUTHOR_EMAIL": "ray-job@btbnet.invalid"}


def prepare(source: Path, workspace: Path) -> None:
    """Copy the uploaded checkout into `workspace` (existing outputs there are kept) and commit
    it to the workspace's git repository, creating one if needed."""
    workspace.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, workspace, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    env = os.environ | IDENTITY | {"GIT_COMMITTER_NAME": IDENTITY["GIT_AUTHOR_NAME"], "GIT_COMMITTER_EMAIL": IDENTITY["GIT_AUTHOR_EMAIL"]}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=workspace, env=env, check=True, capture_output=True)

    if not (workspace / ".git").exists():
        git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    git("commit", "--quiet", "--allow-empty", "-m", "code of a Ray job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_job.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="where the command runs and its outputs stay")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. python infra/preset.py cpu")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    workspace = args.workspace.expanduser().resolve()
    prepare(Path(__file__).resolve().parents[1], workspace)
    print(f"ray_job: running {' '.join(command)} in {workspace}", flush=True)
    return subprocess.run(command, cwd=workspace).returncode


if __name__ == "__main__":
    sys.exit(main())
