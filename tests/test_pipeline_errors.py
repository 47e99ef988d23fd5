"""Bad input to the stages: each ends with `<stage>: error: <what>` naming the culprit, exit 2,
and leaves no output behind (DVC caches outs by content, so a partial one must never survive).

In a temporary git copy of the repo with tiny params. Cases that fail before Ray starts run
in this process (`execute_stage`); the corrupt image, only decoded inside Ray Data, and the
error line's wholeness while Ray forwards output run as subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_helpers import REPO, TINY_PARAMS, copy_repo, describe, error_line, execute_stage, run_stage, stage_env, write_params

SOURCES = Path("data/embedded/sources")
FINETUNE_DATA = Path("data/embedded/defocus/train")


@pytest.fixture()
def repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo", TINY_PARAMS)


def assert_no_synthetic_output(repo: Path) -> None:
    assert not (repo / "data" / "synthetic").exists()
    assert not (repo / "metrics" / "synthesize.json").exists()
    assert list((repo / "data").glob(".synthetic.*")) == []  # staging folders of stage.staged()


def test_synthesize_source_folder_without_images(repo, monkeypatch, capsys):
    scans = repo / SOURCES / "scans"
    scans.mkdir()
    (scans / "README.txt").write_text("the scans go here\n")
    write_params(repo, {"synthesize": {"sources": [".", "scans"]}})

    status, stderr = execute_stage(repo, "synthesize", monkeypatch, capsys)
    assert status == 2, stderr
    assert error_line(stderr, "synthesize").startswith(f"synthesize: error: {scans}: folder has no images")
    assert_no_synthetic_output(repo)


@pytest.mark.slow  # the image is decoded inside Ray Data: pays Ray's start-up
def test_synthesize_corrupt_source_image(repo):
    corrupt = repo / SOURCES / "source_005.png"
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # a truncated PNG

    done = run_stage(repo, "synthesize")
    assert done.returncode == 2, describe(done)
    line = error_line(done.stderr, "synthesize")
    assert line.startswith(f"synthesize: error: {corrupt}: cannot read image")
    assert_no_synthetic_output(repo)

    # Its MLflow run is marked failed, not left looking like a finished synthesis.
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("btbnet").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("workspace/synthesize", "FAILED")]  # no parent outside DVC


INVALID_MODEL_PARAMS = {
    "empty scales": ({"scales": []}, "scales: must list at least one scale"),
    "zero scale": ({"scales": [1, 0.8, 0]}, "scales: every scale must be in (0, 1]"),
    "negative rrnet_steps": ({"rrnet_steps": -1}, "rrnet_steps: must be an integer >= 0"),
}


@pytest.mark.parametrize(("updates", "message"), INVALID_MODEL_PARAMS.values(), ids=INVALID_MODEL_PARAMS.keys())
def test_pretrain_invalid_model_params(repo, updates, message, monkeypatch, capsys):
    write_params(repo, updates)
    status, stderr = execute_stage(repo, "pretrain", monkeypatch, capsys)
    assert status == 2, stderr
    assert error_line(stderr, "pretrain").startswith(f"pretrain: error: {message}")
    assert not (repo / "models" / "pretrain.pt").exists()
    assert not (repo.parent / "inprocess.db").exists()  # rejected before any MLflow run (or Ray start: it would raise)


CHATTY_STAGE = """
import sys, time
import ray
from btbnet.data import DataError
from pipeline.runtime import cluster, stage

@ray.remote(num_cpus=0)
class Chatter:  # a Ray process whose output the driver forwards to its stderr, without end
    def chat(self):
        while True:
            print("(chatter) " * 8, file=sys.stderr, flush=True)
            time.sleep(0.001)

def run(config):
    cluster.init_ray()
    chatter = Chatter.remote()
    chatter.chat.remote()
    time.sleep(4)  # the forwarded lines are flowing
    raise DataError("probe.png: cannot read image")

class Config:
    outputs = ()

stage.main("probe", lambda params: Config(), run)
"""


def test_the_error_line_is_the_last_line_and_whole_while_ray_forwards_output(tmp_path):
    """Ray forwards its processes' output to the stage's stderr from a thread; the stage's
    `error:` line must still be one whole line, and the last one (seen in CI: a Ray warning
    glued to its end)."""
    done = subprocess.run([sys.executable, "-c", CHATTY_STAGE], cwd=REPO, env=stage_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, describe(done)
    assert "(chatter)" in done.stderr, describe(done)  # the forwarding was under way
    assert error_line(done.stderr, "probe") == "probe: error: probe.png: cannot read image"
    assert done.stderr.rstrip("\n").splitlines()[-1] == "probe: error: probe.png: cannot read image", describe(done)
