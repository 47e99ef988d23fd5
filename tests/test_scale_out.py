"""Scale-out, proven on this machine: a real two-node Ray cluster, a lost node with its Train
worker, Ray Jobs, and a real MLflow tracking server. (An interrupted stage that resumes:
tests/test_reliability.py.)

The cluster is two `ray start --block` processes (a head and a second node, one CPU each),
stopped by PID; stages reach it through RAY_ADDRESS as on any cluster. Kills come from
outside (SIGKILL to a node's processes), never from the training code.

One cluster and one tracking server serve the module; one pipeline run on them (`ray job
submit` of `dvc repro`, logging to the server, checkpoints and inputs on a file:// "bucket")
is read by the tests of sections 1, 3 and 4. After the test that removes a node, the next test
that needs two nodes starts a new second node (none if that test was the last).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.cluster import RAY_DEFAULT_PORTS, free_ports
from tests.pipeline_helpers import (
    EVERY, PYTHON_DIR, RESUMABLE, STEPS, TINY_PARAMS, copy_repo, describe, dvc, fake_synthetic_set, logged_steps, stage_env, step_history,
    write_params, write_pretrained,
)  # fmt: skip

pytestmark = pytest.mark.slow

SPREAD = {"train": {"ray": {"placement_strategy": "SPREAD"}}}
RAY = PYTHON_DIR / "ray"


class Cluster:
    """`ray start --head` plus `ray start --address` on this machine; stopped by PID. Token
    authentication is off on the nodes and in every client alike (RAY_AUTH_MODE)."""

    def __init__(self, tmp: Path):
        self.port, self.dashboard = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp
        self.head = self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=true",
                                         "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}"])  # fmt: skip
        self.nodes = [self.head]
        self.lost = False  # a test removed the second node; the next test that needs it starts another
        try:
            self.wait_for_port(self.head)
            self.wait_for_nodes(1)
            self.nodes.append(self._start("worker", [f"--address={self.address}"]))
            self.wait_for_nodes(2)
        except BaseException:
            self.close()
            raise

    @property
    def worker(self) -> subprocess.Popen:
        return self.nodes[1]

    def close(self) -> None:
        for proc in reversed(self.nodes):
            Cluster.stop(proc)

    def two_nodes(self) -> "Cluster":
        """The cluster with two live nodes: if a test removed the second one, what is left of it
        is stopped and a new one started in its place (only when a later test needs it: 10-15 s)."""
        if self.lost:
            Cluster.stop(self.nodes[1])
            self.nodes[1] = self._start("worker", [f"--address={self.address}"])
            self.wait_for_nodes(2)
            self.lost = False
        return self

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [str(RAY), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
            env=stage_env() | {"RAY_AUTH_MODE": "disabled"}, stdout=(self.log / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_for_port(self, proc: subprocess.Popen, timeout: float = 120) -> None:
        """Until the head's GCS port answers; a head that exits first ends the wait with its log."""
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"`ray start` exited {proc.returncode}: {self.logs()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.2)

    def alive_nodes(self, timeout: float = 60) -> int:
        """The cluster's live nodes (0 if the head does not answer within `timeout`). A client of
        a head that is not up waits, so the probe runs beside a watch on the nodes: one that
        exits meanwhile (a port clash, say) ends the wait with its log at once."""
        code = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        probe = subprocess.Popen([sys.executable, "-c", code], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout
        try:
            while probe.poll() is None:
                for proc in self.nodes:
                    assert proc.poll() is None, f"`ray start` exited {proc.returncode}: {self.logs()}"
                if time.monotonic() > deadline:
                    return 0
                time.sleep(0.2)
            out = probe.stdout.read().strip().splitlines()
            return int(out[-1]) if probe.returncode == 0 and out else 0
        finally:
            if probe.poll() is None:
                probe.kill()
            probe.wait()
            probe.stdout.close()

    def wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            assert time.monotonic() < deadline, self.logs()
            time.sleep(1)

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log\n{(self.log / f'{name}.log').read_text()[-2000:]}" for name in ("head", "worker")
                         if (self.log / f"{name}.log").exists())  # fmt: skip

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """SIGKILL to the node's whole process tree (`ray start --block`, its GCS, raylet, agents
        and workers): a test cluster keeps nothing worth a graceful stop, which takes seconds."""
        try:
            tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(tree, timeout=30)
        proc.wait(timeout=30)

    def env(self) -> dict[str, str]:
        return stage_env() | {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


@pytest.fixture()
def cluster(module_cluster) -> Cluster:
    """The module's cluster with both nodes up, whichever test ran before."""
    return module_cluster.two_nodes()


def test_a_node_that_refuses_to_start_fails_the_cluster_at_once_with_its_log(tmp_path, monkeypatch):
    """The port the CI once drew for the head was Ray's dashboard agent's: `ray start` exited
    and the probe waited on a head that would never answer. Now that port is never drawn, and a
    node that exits anyway ends the wait with its own words."""
    draw = free_ports
    assert not RAY_DEFAULT_PORTS & set(draw(64))
    monkeypatch.setattr(sys.modules[__name__], "free_ports", lambda count: [52365, *draw(count - 1)])
    with pytest.raises(AssertionError, match="used by other components"):
        Cluster(tmp_path)


@pytest.fixture()
def repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo", TINY_PARAMS)


def run(repo: Path, args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


def start(repo: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=repo, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(log: Path, text: str, proc: subprocess.Popen, count: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) < count:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.3)


# --- one pipeline run on the cluster: a Ray job of `dvc repro`, logged to a tracking server -----


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    [port] = free_ports(1)
    proc = subprocess.Popen(
        [str(PYTHON_DIR / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "artifacts")],
        env=stage_env(), stdout=(tmp / "server.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


class JobRun:
    """What the module's pipeline run left: the job's output, its workspace, the bucket."""

    def __init__(self, done: subprocess.CompletedProcess[str], workspace: Path, bucket: Path, tracking: str):
        self.done, self.workspace, self.bucket, self.tracking = done, workspace, bucket, tracking


@pytest.fixture(scope="module")
def job_run(module_cluster, mlflow_server, tmp_path_factory) -> JobRun:
    """What the README says, on the two-node cluster: `ray job submit --working-dir . -- python
    infra/ray_job.py --workspace DIR -- dvc repro`, the stages logging to a tracking server, Ray
    Train's storage an object-store URI (file:// here, s3:// on a cluster without a shared file
    system): the driver uploads the training inputs there and the workers read them from it."""
    cluster = module_cluster.two_nodes()
    tmp = tmp_path_factory.mktemp("job")
    repo, bucket, workspace = copy_repo(tmp / "repo", TINY_PARAMS), tmp / "bucket", tmp / "workspace"
    write_params(repo, SPREAD | {"train": {"ray": SPREAD["train"]["ray"] | {"storage": bucket.as_uri()}}})
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server}})
    done = run(repo, [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard}", "--working-dir", ".",
                      "--runtime-env-json", runtime_env, "--", "python", "infra/ray_job.py", "--workspace", str(workspace),
                      "--", "dvc", "repro"], cluster.env(), timeout=900)  # fmt: skip
    assert done.returncode == 0, describe(done)
    return JobRun(done, workspace, bucket, mlflow_server)


# --- 1. two nodes --------------------------------------------------------------------------


def test_synthesize_and_pretrain_run_on_both_nodes(job_run):
    """As on a cluster without a shared file system: synthesis streams its files back to the
    driver, and the Train workers read the data that the driver uploaded to the bucket."""
    for stage in ("synthesize", "pretrain", "finetune"):
        assert metrics(job_run.workspace, stage)["ray_nodes"] == 2, stage
    assert metrics(job_run.workspace, "pretrain")["worker_restarts"] == 0
    shipped = {folder.name: folder for folder in (job_run.bucket / "inputs").iterdir()}
    synthetic = sorted(p.name for p in (job_run.workspace / "data/synthetic/image").iterdir())
    assert any(sorted(p.name for p in (f / "image").iterdir()) == synthetic for f in shipped.values() if (f / "image").is_dir())
    assert [p.name for p in job_run.bucket.iterdir()] == ["inputs"]  # the run folders are gone once the models are out


# --- 2. lost workers and nodes ---------------------------------------------------------------


@pytest.fixture()
def losing_a_node(cluster) -> Iterator[Cluster]:
    """The module's cluster, for a test that removes its second node: marked lost afterwards,
    so that a later test that needs two nodes gets a new second node (`Cluster.two_nodes`)."""
    yield cluster
    cluster.lost = True


def test_a_removed_node_is_survived_from_the_last_checkpoint(losing_a_node, repo, tmp_path):
    """The second node dies, its Train worker with it (SIGKILL from outside, as a lost machine or
    a killed worker): the run goes on from its last checkpoint, on the node that is left, in the
    same MLflow run, each step logged once."""
    cluster = losing_a_node
    write_params(repo, RESUMABLE)
    shared = tmp_path / "shared"  # Ray Train's storage outside the repo (a shared file system on a cluster)
    write_params(repo, {"train": {"ray": {"placement_strategy": "SPREAD", "storage": str(shared)}}})
    fake_synthetic_set(repo)
    log = tmp_path / "stage.log"
    proc = start(repo, [sys.executable, "-m", "pipeline.pretrain"], cluster.env(), log)
    wait_for(log, "Checkpoint successfully created", proc, count=1)  # mid-epoch, after step 8
    time.sleep(0.6)  # registered by Ray Train's poll
    node = psutil.Process(cluster.worker.pid)
    for p in node.children(recursive=True):  # the second node dies with its worker
        p.kill()
    assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    m = metrics(repo, "pretrain")
    # Resumed from a checkpoint, not from the start: "resumed at epoch E (0-based), step S".
    epoch, step = map(int, re.search(r"pretrain: resumed at epoch (\d+), step (\d+) of", log.read_text()).groups())
    resumed_at = epoch * STEPS + step
    assert resumed_at >= EVERY and resumed_at % EVERY == 0, (epoch, step)
    # Redone: the steps after that checkpoint, until Ray saw the node gone (about a poll)
    assert m["worker_restarts"] >= 1 and 0 <= m["steps_redone"] <= EVERY + 8, m
    assert (repo / "models/pretrain.pt").stat().st_size > 0
    assert step_history(repo, "pretrain") == logged_steps(2, STEPS)  # one MLflow run, no step twice
    assert "ray_runs" not in log.read_text() and str(shared) in log.read_text()  # checkpoints went there
    assert list(shared.iterdir()) == [] and not (repo / ".ray_runs").exists()  # and the run is gone


# --- 3. code through the runtime env, a tracking server --------------------------------------


def test_every_stage_logs_to_a_tracking_server(job_run):
    assert not (job_run.workspace / "mlflow.db").exists() and not (job_run.workspace / "mlruns").exists()  # nothing local
    client = MlflowClient(job_run.tracking)
    runs = client.search_runs([client.get_experiment_by_name("btbnet").experiment_id])
    by_stage = {r.data.tags["btbnet.stage"]: r for r in runs if "btbnet.stage" in r.data.tags}
    assert sorted(by_stage) == ["baselines", "evaluate", "finetune", "pretrain", "synthesize"]
    [parent] = [r for r in runs if "btbnet.stage" not in r.data.tags]  # the repro's parent run
    assert {r.data.tags["mlflow.parentRunId"] for r in by_stage.values()} == {parent.info.run_id}
    assert client.get_model_version_by_alias("btbnet", "candidate").run_id == by_stage["finetune"].info.run_id
    assert all(r.info.status == "FINISHED" for r in runs)
    for stage, run_ in by_stage.items():
        artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
        assert run_.data.metrics, stage
        assert artifacts, stage
    models = client.search_logged_models([by_stage["finetune"].info.experiment_id])
    assert by_stage["finetune"].info.run_id in {m.source_run_id for m in models}
    assert step_history(job_run.workspace, "pretrain", job_run.tracking)


def test_finetune_reads_its_data_from_a_uri(cluster, repo, tmp_path):
    """`finetune.data` as a URI (file:// here, s3:// on a cluster without a shared file system):
    each Train worker, on either node, trains from its node's copy. (Run as a stage: DVC hashes
    a URI dependency itself, through its own remotes.)"""
    bucket = tmp_path / "bucket"
    shutil.copytree(repo / "data/embedded/defocus/train", bucket / "cuhk")
    shutil.rmtree(repo / "data/embedded/defocus/train")  # nothing local to fall back on
    write_pretrained(repo)
    write_params(repo, {"finetune": {"data": (bucket / "cuhk").as_uri(), "exclude": None}})
    done = run(repo, [sys.executable, "-m", "pipeline.finetune"], cluster.env())
    assert done.returncode == 0, describe(done)
    assert metrics(repo, "finetune")["train_samples"] == 40 * 16


# --- 4. Ray Jobs --------------------------------------------------------------------------------


def test_ray_job_submit_runs_the_pipeline_on_the_cluster(job_run):
    """What the README says: `ray job submit --working-dir . -- python infra/ray_job.py
    --workspace DIR -- <command>` against the cluster; the outputs stay in DIR."""
    assert "succeeded" in job_run.done.stdout + job_run.done.stderr
    assert (job_run.workspace / "models/finetune.pt").is_file() and (job_run.workspace / "dvc.lock").is_file()
    status = dvc(job_run.workspace, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, describe(status)
