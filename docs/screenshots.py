"""Screenshots of where users look for the headline figures: `dvc exp show` and the MLflow UI.

    python docs/screenshots.py --repo DIR [--out docs/screenshots] [--exp-show-args=--only-changed]

DIR is a btbnet repo after `dvc repro` and at least one `dvc exp run` (with its `mlflow.db`);
`dvc` is looked up on PATH, then next to this Python. Headless Chromium writes:

* `exp-show.png`: `dvc exp show --no-pager <exp-show-args>` at COLUMNS=200 (DVC's rich table
  takes its width from COLUMNS without a TTY), as a terminal-styled HTML page. The default
  args are the README's `--only-changed`: the bare command has 180-odd columns (40 of them
  code-file hashes), and DVC squeezes them into 200 columns as "emb…" and "…"; pass
  `--exp-show-args=` to see that.
* `mlflow-runs.png`: the runs table of the MLflow experiment "btbnet", in the model-training
  view (`?workflowType=machine_learning`: MLflow 3.17's and 3.18's UI open the GenAI view without it),
  parent runs collapsed, with their metrics as columns. A fresh browser shows no metric column
  until one is picked in "Columns"; the script picks the parent runs' metrics as a shared
  view (the tag the UI's Share button writes) in a copy of mlflow.db, which `mlflow ui`
  serves on a free local port and which is deleted with the server.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

COLUMNS = 200
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # what the UI's Share button writes; ?viewStateShareKey= reads it
CHAR_PX, LINE_PX = 8.5, 18  # DejaVu Sans Mono at 14px


class ScreenshotError(RuntimeError):
    """A missing tool or input, or a step that failed: one line for the user."""


def terminal_page(command: str, text: str) -> str:
    """A self-contained dark terminal page: the prompt line, then `text` unwrapped."""
    return (
        "<!doctype html><meta charset='utf-8'><style>"
        "body{margin:0;background:#1e1e1e;color:#d4d4d4}"
        "pre{margin:0;padding:16px;font:14px/18px 'DejaVu Sans Mono',monospace;white-space:pre}"
        "b{color:#6a9955;font-weight:normal}</style>"
        f"<pre><b>$ {html.escape(command)}</b>\n{html.escape(text)}</pre>"
    )


def page_size(text: str, command: str) -> tuple[int, int]:
    """Window size in pixels that shows every line of the page whole (headless Chromium
    leaves the lower part of a window under about 150 px tall unpainted: 200 at least)."""
    lines = text.splitlines() + [f"$ {command}"]
    return int(max(map(len, lines)) * CHAR_PX) + 48, max(len(lines) * LINE_PX + 40, 200)


def screenshot(url: str, png: Path, size: tuple[int, int], wait_ms: int = 0) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"]
        cmd += [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
        done = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not png.exists():
        raise ScreenshotError(f"chromium failed on {url}: {done.stderr.strip()[-300:]}")


def exp_show(repo: Path, out: Path, args: list[str]) -> Path:
    argv = ["dvc", "exp", "show", "--no-pager", *args]
    shown = f"COLUMNS={COLUMNS} {shlex.join(argv)}"
    env = {**os.environ, "COLUMNS": str(COLUMNS)}
    done = subprocess.run([which("dvc") or "dvc", *argv[1:]], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ScreenshotError(f"{shown} failed in {repo}: {done.stderr.strip()[-300:]}")
    width = max(map(len, done.stdout.splitlines()), default=0)
    if width > COLUMNS:
        raise ScreenshotError(f"{shown} ignored COLUMNS: lines of {width} characters")
    page, png = out / "exp-show.html", out / "exp-show.png"
    page.write_text(terminal_page(shown, done.stdout))
    try:
        screenshot(page.as_uri(), png, page_size(done.stdout, shown))
    finally:
        page.unlink()
    return png


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(store: Path, cwd: Path, log: Path, timeout_s: float = 120) -> Iterator[str]:
    """`mlflow ui` on `store` at a free port; yields its URL once it answers, stops it after."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--workers", "1", "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--backend-store-uri", f"sqlite:///{store}"]
    with log.open("w") as sink:  # its own session, so that stopping it stops its workers too
        server = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
                                  stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(f"{url}/health"):
            if server.poll() is not None:
                raise ScreenshotError(f"mlflow ui exited with {server.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise ScreenshotError(f"mlflow ui did not answer {url} in {timeout_s:.0f} s; see {log}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def mlflow_runs(repo: Path, out: Path, experiment: str = "btbnet") -> Path:
    from mlflow import MlflowClient

    log, png = out / "mlflow-ui.log", out / "mlflow-runs.png"
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"  # a copy: the shared view below is written into it
        with closing(sqlite3.connect(repo / "mlflow.db")) as source, closing(sqlite3.connect(store)) as copy:
            source.backup(copy)
        with mlflow_ui(store, repo, log) as url:
            client = MlflowClient(tracking_uri=url)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise ScreenshotError(f"no MLflow experiment named {experiment!r} in {repo / 'mlflow.db'}")
            eid = found.experiment_id
            parents = [r for r in client.search_runs([eid]) if "mlflow.parentRunId" not in r.data.tags]
            metrics = sorted({key for run in parents for key in run.data.metrics})
            view = {"selectedColumns": [f"metrics.`{key}`" for key in metrics]}  # as ticked in "Columns"
            client.set_experiment_tag(eid, f"{SHARED_VIEW_TAG}headline", json.dumps(view))
            runs = f"{url}/#/experiments/{eid}/runs?workflowType=machine_learning&viewStateShareKey=headline"
            screenshot(runs, png, (1600, 700), wait_ms=15000)
    log.unlink()
    return png


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))


def check(repo: Path) -> None:
    """One line naming the first thing missing, before anything starts."""
    for tool in ("chromium", "dvc"):
        if which(tool) is None:
            raise ScreenshotError(f"{tool} not found on PATH")
    if not (repo / "mlflow.db").is_file():
        raise ScreenshotError(f"no MLflow store: {repo / 'mlflow.db'} is missing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="btbnet repo (default: .)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "screenshots")
    parser.add_argument("--exp-show-args", default="--only-changed",
                        help="extra args of dvc exp show (default: --only-changed)")
    args = parser.parse_args(argv)
    repo, out = args.repo.resolve(), args.out.resolve()
    try:
        check(repo)
        out.mkdir(parents=True, exist_ok=True)
        for png in (exp_show(repo, out, shlex.split(args.exp_show_args)), mlflow_runs(repo, out)):
            print(f"wrote {png} ({png.stat().st_size // 1024} KiB)")
    except (ScreenshotError, subprocess.TimeoutExpired) as error:
        print(f"screenshots.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
