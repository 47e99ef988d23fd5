"""The reliability matrix (docs/reliability.md): what a hostile user does to the pipeline.

Each case runs a stage (or `dvc repro`) in a tiny git copy of the repo and checks the promise:
bad input ends in one `<stage>: error: …` line naming the file or key, exit 2, and none of the
stage's outputs (not even a previous run's); a signal ends the stage cleanly, leaves no process
and no output behind, and marks its MLflow run KILLED. Bad input found before Ray starts is
tried in this process (`execute_stage`: what `python -m pipeline.<stage>` runs, with starting
Ray an error); what only a running stage can show (Ray, signals) runs as a subprocess.
Training, where there is any, lasts seconds.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import pipeline.runtime.params
from btbnet.config import ConfigError
from btbnet.data import InputConfig, PairDataset
from btbnet.synthesis import find_sources
from pipeline.runtime.params import load_params
from pipeline.training.config import RayConfig
from pipeline.training.trainer import wait_for_workers
from tests.pipeline_helpers import (
    DVC, REPO, RESUMABLE, STEPS, TINY_PARAMS, copy_repo, describe, dvc, error_line, execute_stage, fake_synthetic_set, git, logged_steps,
    run_stage, stage_env, step_history, write_params, write_pretrained,
)  # fmt: skip

DATA = Path("data/embedded/defocus/train")  # finetune's data (gt: 255 = blurred)
SOURCES = Path("data/embedded/sources")
OUTPUTS = {
    "synthesize": ("data/synthetic", "metrics/synthesize.json"),
    "pretrain": ("models/pretrain.pt", "metrics/pretrain.json"),
    "finetune": ("models/finetune.pt", "metrics/finetune.json"),
    "evaluate": ("metrics/headline.json", "metrics/evaluate.json", "metrics/pr_curves", "figures"),
}


@pytest.fixture()
def repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo", TINY_PARAMS)


def plant_old_outputs(repo: Path, stage: str) -> None:
    """What a previous successful run of `stage` left (a failed run must not keep any of it)."""
    for rel in OUTPUTS[stage]:
        path = repo / rel
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else "old")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "old.png").write_bytes(b"old")


def assert_no_outputs(repo: Path, stage: str) -> None:
    assert [rel for rel in OUTPUTS[stage] if (repo / rel).exists()] == []


# --- bad training data: found in the driver, before Ray starts --------------------------------


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("this is not a PNG\n")
    return path


def resized(path: Path) -> Path:
    Image.open(path).resize((17, 11)).save(path)
    return path


BAD_PAIRS = {  # case: (file of the pair, how it is spoilt, expected message after the file name)
    "empty image": ("image", empty, "cannot read image (UnidentifiedImageError"),
    "empty mask": ("gt", empty, "cannot read image (UnidentifiedImageError"),
    "text as image": ("image", not_an_image, "cannot read image (UnidentifiedImageError"),
    "mask of another size": ("gt", resized, "but its mask"),
}


@pytest.mark.parametrize(("folder", "spoil", "message"), BAD_PAIRS.values(), ids=BAD_PAIRS.keys())
def test_bad_training_pair_fails_before_ray(repo, folder, spoil, message, monkeypatch, capsys):
    write_pretrained(repo)
    plant_old_outputs(repo, "finetune")
    bad = spoil(repo / DATA / folder / "defocus_0007.png")
    status, stderr = execute_stage(repo, "finetune", monkeypatch, capsys)  # starting Ray would raise
    assert status == 2, stderr
    line = error_line(stderr, "finetune")
    shown = repo / DATA / "image" / "defocus_0007.png" if message == "but its mask" else bad
    assert line.startswith(f"finetune: error: {shown}: ") and message in line
    assert_no_outputs(repo, "finetune")


def test_image_without_mask_and_excluded_stem_not_in_the_set(repo, monkeypatch, capsys):
    write_pretrained(repo)
    (repo / DATA / "gt" / "defocus_0002.png").unlink()
    status, stderr = execute_stage(repo, "finetune", monkeypatch, capsys)
    assert status == 2 and error_line(stderr, "finetune").startswith(
        f"finetune: error: {repo / DATA / 'image' / 'defocus_0002.png'}: no mask with stem 'defocus_0002'"
    )
    assert not (repo / "models" / "finetune.pt").exists() and not (repo / "metrics" / "finetune.json").exists()
    git(repo, "checkout", "--", str(DATA / "gt" / "defocus_0002.png"))
    (repo / "stems.txt").write_text("defocus_0999\n")
    write_params(repo, {"finetune": {"exclude": "stems.txt"}})
    status, stderr = execute_stage(repo, "finetune", monkeypatch, capsys)
    assert status == 2, stderr
    assert "excluded stem 'defocus_0999' has no pair (1 missing)" in error_line(stderr, "finetune")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_every_image_mode_passes_the_header_check_and_loads_as_rgb(tmp_path, mode):
    root = tmp_path / "set"
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    Image.new(mode, (9, 7)).save(root / "image" / f"a.{'jpg' if mode == 'CMYK' else 'png'}")
    Image.new("L", (9, 7), 255).save(root / "gt" / "a.png")
    dataset = PairDataset(root, "blurred", InputConfig(augment=False))
    dataset.check_files()
    image, mask = dataset.arrays(0)
    assert image.shape == (7, 9, 3) and mask.shape == (7, 9)


# --- the initial weights: checked in the driver too -------------------------------------------


def code_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps(os.getcwd))  # a pickle that would call code when loaded
    return path


BAD_WEIGHTS = {
    "missing": (lambda p: p, "VGG16 weights file not found"),
    "text": (not_an_image, "not a readable PyTorch state dict (not a torch.save archive)"),
    "pickle with code": (code_pickle, "not a readable PyTorch state dict (refused: it holds Python objects"),
}


@pytest.mark.parametrize(("make", "message"), BAD_WEIGHTS.values(), ids=BAD_WEIGHTS.keys())
def test_bad_backbone_weights_fail_before_ray(repo, make, message, monkeypatch, capsys):
    fake_synthetic_set(repo)
    weights = make(repo / "vgg16.pth")
    write_params(repo, {"pretrain": {"backbone_weights": "vgg16.pth"}})
    status, stderr = execute_stage(repo, "pretrain", monkeypatch, capsys)
    assert status == 2, stderr
    line = error_line(stderr, "pretrain")
    assert line.startswith(f"pretrain: error: pretrain.backbone_weights: {weights}: ") and message in line
    assert "weights_only" not in stderr
    assert not (repo.parent / "inprocess.db").exists()  # no MLflow run was started
    assert_no_outputs(repo, "pretrain")


# --- bad params: each stage validates what it reads, and only that ----------------------------


def test_scale_above_one_is_refused(repo, monkeypatch, capsys):
    write_params(repo, {"scales": [1.5]})
    status, stderr = execute_stage(repo, "pretrain", monkeypatch, capsys)
    assert status == 2, stderr
    assert error_line(stderr, "pretrain") == "pretrain: error: scales: every scale must be in (0, 1], got 1.5 in [1.5]"


def test_a_bad_evaluate_section_does_not_stop_the_training_stages(repo, monkeypatch, capsys):
    # params name paths relative to the repo; here that is the copy, not this checkout
    monkeypatch.setattr(pipeline.runtime.params, "REPO_ROOT", repo)
    write_params(repo, {"evaluate": {"max_size": "big", "device": "tpu"}, "baselines": {"methods": ["nope"]}})
    write_pretrained(repo)
    for stage in ("synthesize", "pretrain", "finetune"):
        module = __import__(f"pipeline.{stage}", fromlist=["configure"])
        assert module.configure(load_params(repo / "params.yaml")) is not None
    assert module.configure(load_params(repo / "params.yaml")).init_checkpoint == repo / "models" / "pretrain.pt"
    status, stderr = execute_stage(repo, "evaluate", monkeypatch, capsys)
    assert status == 2 and "evaluate: error: evaluate.max_size:" in error_line(stderr, "evaluate")


def test_a_failed_evaluate_keeps_none_of_the_previous_outputs(repo, monkeypatch, capsys):
    plant_old_outputs(repo, "evaluate")  # and no finetuned model: evaluate fails
    status, stderr = execute_stage(repo, "evaluate", monkeypatch, capsys)
    assert status == 2, stderr
    assert "models/finetune.pt: checkpoint not found" in error_line(stderr, "evaluate")
    assert_no_outputs(repo, "evaluate")


def test_a_failed_synthesize_keeps_none_of_the_previous_outputs(repo, monkeypatch, capsys):
    plant_old_outputs(repo, "synthesize")
    write_params(repo, {"synthesize": {"sources": ["no_such_folder"]}})
    status, stderr = execute_stage(repo, "synthesize", monkeypatch, capsys)
    assert status == 2, stderr
    assert "no_such_folder: folder not found" in error_line(stderr, "synthesize")
    assert_no_outputs(repo, "synthesize")


def test_dvc_names_a_symlink_loop_in_a_dependency_and_dvcignore_is_the_way_round(repo):
    """DVC walks `synthesize.source_root` itself, before any stage runs, and stops on a link
    loop (exit 255, naming the link); listing the link in .dvcignore lets the pipeline run."""
    loop = repo / SOURCES / "loop_a"
    loop.symlink_to("loop_b")
    (repo / SOURCES / "loop_b").symlink_to("loop_a")
    done = dvc(repo, "status", "synthesize")
    assert done.returncode != 0 and "Too many levels of symbolic links" in done.stderr and "loop_" in done.stderr
    (repo / ".dvcignore").write_text((repo / ".dvcignore").read_text() + "\nloop_a\nloop_b\n")
    done = dvc(repo, "status", "synthesize")
    assert done.returncode == 0, describe(done)
    assert find_sources(repo / SOURCES, ["."])  # the stage's own listing skips links


# --- resources: never wait for ever -----------------------------------------------------------


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_worker_slots_count_whole_workers_per_node():
    r = RayConfig(num_workers=4, cpus_per_worker=1.5)
    assert r.slots([node(4), node(3), node(8, alive=False)]) == 2 + 2
    assert RayConfig(num_workers=2, use_gpu=True).slots([node(16, gpus=1), node(16)]) == 1


def test_a_request_the_cluster_cannot_hold_fails_after_the_timeout():
    r = RayConfig(num_workers=8, cpus_per_worker=1.0)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"train.ray: 8 workers × \(1 CPU\) do not fit .* room for 2 after waiting 0.3 s"):
        wait_for_workers(r, lambda: [node(2)], timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - started < 2


def test_the_wait_ends_when_an_autoscaler_adds_a_node():
    listed = iter([[node(2)], [node(2)], [node(2), node(8)]])
    wait_for_workers(RayConfig(num_workers=8), lambda: next(listed), timeout_s=10, poll_s=0.01)


def test_too_many_workers_for_the_local_instance_is_an_error_not_a_hang(repo):
    fake_synthetic_set(repo)
    write_params(repo, {"train": {"ray": {"num_workers": 8, "cpus_per_worker": 1}, "loop": {"batch_size": 8}}})
    done = run_stage(repo, "pretrain", timeout=120)
    assert done.returncode == 2, describe(done)
    line = error_line(done.stderr, "pretrain")
    assert line.startswith("pretrain: error: train.ray: 8 workers × (1 CPU) do not fit the Ray cluster (nodes: ")
    assert_no_outputs(repo, "pretrain")


def test_a_pair_that_only_fails_to_decode_in_a_worker_is_the_same_one_line_error(repo):
    write_pretrained(repo)
    kept = {"defocus_0003", "defocus_0004"}  # two pairs × 16 augmentations: every one is read in seconds
    (repo / "held_out.txt").write_text("".join(f"{p.stem}\n" for p in sorted((repo / DATA / "image").iterdir()) if p.stem not in kept))
    # one restart (the least that shows it): it meets the bad input that ended the first attempt and fails at once
    write_params(repo, {"train": {"loop": {"max_steps_per_epoch": None}, "ray": {"max_failures": 1}}, "finetune": {"exclude": "held_out.txt"}})
    bad = repo / DATA / "image" / "defocus_0003.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header is intact
    done = run_stage(repo, "finetune", timeout=300)
    assert done.returncode == 2, describe(done)
    assert error_line(done.stderr, "finetune") == f"finetune: error: {bad}: cannot read image (OSError: image file is truncated)"
    assert_no_outputs(repo, "finetune")


# --- signals: the stage ends with DVC, cleanly ------------------------------------------------


def as_from_a_terminal() -> None:
    """SIGINT's default action, as a command typed at a terminal gets it: a run of this suite
    started in the background by a non-interactive shell (`pytest &`, `nohup`) ignores SIGINT,
    and every child would inherit that (a Ctrl-C could not reach the stage at all)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_dvc_repro(repo: Path, log: Path) -> subprocess.Popen:
    """`dvc repro pretrain` of a RESUMABLE training in a session of its own (as a terminal runs
    it), once two checkpoints are written, the first registered (STEPS, EVERY). DVC runs the
    stage as `/bin/sh -c cmd` (stage_env's SHELL): dash keeps itself between dvc and the stage."""
    write_params(repo, RESUMABLE)
    fake_synthetic_set(repo)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "training")
    proc = subprocess.Popen(
        [str(DVC), "repro", "--single-item", "pretrain"], cwd=repo, env=stage_env(), stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_from_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while log.read_text().count("Checkpoint successfully created") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    return proc


def stage_runs(repo: Path) -> list[tuple[str, str]]:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("btbnet").experiment_id], order_by=["start_time"])
    return [(r.info.run_name, r.info.status) for r in runs if "btbnet.stage" in r.data.tags]  # not the parent


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [f"{p.pid} {p.name()}" for p in alive]


def stage_process(tree: list[psutil.Process]) -> psutil.Process:
    """The stage's Python process (not the shell that DVC runs it with)."""
    return next(p for p in tree if p.name().startswith("python") and "pipeline.pretrain" in " ".join(p.cmdline()))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to dvc", "Ctrl-C"])
def test_an_interrupted_repro_leaves_no_process_no_output_and_a_killed_run(repo, tmp_path, how):
    """Mid-training (two checkpoints written), `dvc repro` is stopped: by SIGTERM to dvc alone
    (which dies at once and passes nothing on: the stage learns it through die_with_parent), or
    by a terminal's Ctrl-C (SIGINT to the whole foreground group; Ray's processes block it).
    The stage ends with no output and no process left, its MLflow run KILLED, its checkpoints
    kept; after the SIGTERM, the same `dvc repro` resumes from the last checkpoint, in the same
    MLflow run, each step logged once, and deletes the checkpoints of a killed run of another
    version of the stage (never resumed: tests/test_training_resume.py, the run key)."""
    log = tmp_path / "repro.log"
    proc = start_dvc_repro(repo, log)
    tree = psutil.Process(proc.pid).children(recursive=True)
    stage = stage_process(tree)
    if how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole foreground group
    else:
        proc.send_signal(signal.SIGTERM)  # dvc dies at once and passes nothing on
    # the stage's clean-up shuts Ray down in at most 20 s, then stops what is left by PID
    # (cluster.stop_ray): all is gone in about 25 s even on 2 busy cores
    assert wait_gone([stage, *tree], timeout=90) == []  # so no orphan is left to write outputs later
    proc.wait(timeout=30)
    assert_no_outputs(repo, "pretrain")
    assert stage_runs(repo) == [("workspace/pretrain", "KILLED")]
    kept = [p.name for p in (repo / ".ray_runs").iterdir()]  # the checkpoints a rerun resumes from
    assert len(kept) == 1 and kept[0].startswith("pretrain-"), kept
    assert f"pretrain: interrupted ({'SIGINT' if how == 'Ctrl-C' else 'SIGTERM'}); no output written" in log.read_text()
    if how == "Ctrl-C":
        return
    (repo / ".ray_runs" / "pretrain-0123456789abcdef").mkdir()  # a killed run of another version of the stage
    done = dvc(repo, "repro", "--single-item", "pretrain")
    assert done.returncode == 0, describe(done)
    resumed = [line for line in (done.stdout + done.stderr).splitlines() if "pretrain: resumed at epoch" in line]
    assert resumed and not resumed[0].endswith(f"epoch 0, step 0 of {STEPS}"), resumed
    assert list((repo / ".ray_runs").glob("*")) == []
    assert step_history(repo, "pretrain") == logged_steps(2, STEPS)
    assert stage_runs(repo) == [("workspace/pretrain", "FINISHED")]


LAUNCHED_STAGE = """
import sys, time
from pipeline.runtime import process
process.interrupt_on_sigterm()
process.die_with_parent()
log = open(sys.argv[1], "a", buffering=1)
print("armed", file=log)
try:
    time.sleep(120)
except KeyboardInterrupt as exc:
    print(f"interrupted ({process.interruption(exc)})", file=log)
    sys.exit(process.INTERRUPTED)
"""


@pytest.mark.parametrize("shell", ["/bin/sh", "bash"])
@pytest.mark.parametrize("kill", ["SIGTERM", "SIGKILL"])
def test_a_stage_is_interrupted_when_its_launcher_dies_under_either_shell(tmp_path, shell, kill):
    """DVC runs a stage as `$SHELL -c cmd`: bash execs the command (the stage's parent is dvc,
    whose death the kernel signals), dash stays between (a watch on the shell's parent). Either
    way dvc's death, however it dies, interrupts the stage as SIGTERM does, within a second."""
    log = tmp_path / "stage.log"
    command = f"{sys.executable} -c '{LAUNCHED_STAGE}' {log}"  # as dvc.yaml's cmd: no redirection
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.argv[1], '-c', sys.argv[2]])",
                                 shutil.which(shell) or shell, command], cwd=REPO, env=stage_env(), start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while "armed" not in (log.read_text() if log.exists() else ""):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    tree = psutil.Process(launcher.pid).children(recursive=True)
    try:
        [stage] = [p for p in tree if p.name().startswith("python")]
        assert (stage.ppid() == launcher.pid) == (shell == "bash")  # bash exec'd the command, dash did not
        launcher.send_signal(getattr(signal, kill))
        launcher.wait(timeout=10)
        assert wait_gone([stage], timeout=10) == []
        assert log.read_text().splitlines()[-1] == "interrupted (SIGTERM)"
    finally:
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()


# --- fail first, in one line, with nothing deleted ---------------------------------------------


def test_an_unreachable_tracking_server_fails_first_with_nothing_deleted(repo, monkeypatch, capsys):
    """Checked with a short timeout before the stage clears anything: MLflow's own client would
    retry for minutes after the outputs were gone."""
    plant_old_outputs(repo, "evaluate")
    status, stderr = execute_stage(repo, "evaluate", monkeypatch, capsys, tracking_uri="http://127.0.0.1:9")  # discard port
    assert status == 2, stderr
    assert error_line(stderr, "evaluate").startswith("evaluate: error: mlflow: cannot reach http://127.0.0.1:9: ")
    assert [rel for rel in OUTPUTS["evaluate"] if not (repo / rel).exists()] == []  # the previous run's outputs are all there
    assert len(stderr.strip().splitlines()) == 1


def test_an_output_outside_the_repo_is_refused_before_any_work(repo, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere" / "synthetic"
    write_params(repo, {"synthesize": {"out_dir": str(elsewhere)}})
    status, stderr = execute_stage(repo, "synthesize", monkeypatch, capsys)  # starting Ray would raise
    assert status == 2, stderr
    assert error_line(stderr, "synthesize") == (
        f"synthesize: error: {elsewhere}: an output outside the repo ({repo.resolve()}); DVC tracks and caches outputs inside it only"
    )
    assert not (tmp_path / "elsewhere").exists()


def test_a_full_disk_is_one_line_naming_the_output(tmp_path, capsys, monkeypatch):
    """A write that fails for want of space names no file itself; the stage names the output
    it was writing (and the staging copy is gone)."""
    from pipeline.runtime import params as params_lib
    from pipeline.runtime import stage

    monkeypatch.setattr(params_lib, "REPO_ROOT", tmp_path)
    out = tmp_path / "data" / "synthetic"

    class Config:
        outputs = (out,)

    def run(config: Config) -> None:
        with stage.staged(out) as staging:
            staging.mkdir()
            raise OSError(28, "No space left on device")  # as a write() on a full disk raises it

    assert stage.execute("synthesize", lambda params: Config(), run, params={}) == 2
    assert error_line(capsys.readouterr().err, "synthesize") == f"synthesize: error: {out}: No space left on device"
    assert list(out.parent.iterdir()) == []  # neither the output nor its staging folder


def test_a_stuck_ray_shutdown_still_stops_the_local_instance_and_nothing_else(monkeypatch):
    """Once the local GCS is gone (killed, out of memory), Ray's shutdown can block for ever and
    leave the dashboard and log monitor running: `stop_ray` gives it a bounded time, then stops
    the instance's processes by PID; the caller's other children are left alone."""
    import types

    from pipeline.runtime import cluster

    ray_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "site-packages/ray/dashboard/dashboard.py"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "mlflow-server"])
    hung = types.SimpleNamespace(shutdown=lambda: time.sleep(120))  # a shutdown waiting on a dead GCS
    monkeypatch.setitem(sys.modules, "ray", hung)
    try:
        started = time.monotonic()
        cluster.stop_ray(timeout_s=0.5)
        assert time.monotonic() - started < 10  # bounded: 0.5 s for Ray's shutdown, 3 s for SIGTERM
        assert not psutil.pid_exists(ray_like.pid)  # stopped and reaped (by stop_ray's psutil wait)
        assert other.poll() is None  # not Ray's: still running
    finally:
        for proc in (ray_like, other):
            proc.kill()
            proc.wait()


def test_ray_lines_that_say_nothing_wrong_are_dropped_at_the_driver():
    import io

    from pipeline.runtime.cluster import RayLineFilter

    stream = io.StringIO()
    stderr = RayLineFilter(stream)
    harmless = ("\x1b[36m(TrainController pid=4599)\x1b[0m [2026-12-07 11:59:49,401 E 4599 4659] core_worker.cc:2465: Actor with class "
                "name: 'PreemptionWatcher' and ID: '3e4b' has constructor arguments in the object store and max_restarts > 0. If the "
                "arguments in the object store go out of scope or are lost, the actor restart will fail.")  # fmt: skip
    for line in ["(RayTrainWorker pid=1) pretrain: step 2/2", harmless, "(TrainController pid=2) Worker group failed: boom"]:
        print(line, file=stderr)
    assert stream.getvalue() == "(RayTrainWorker pid=1) pretrain: step 2/2\n(TrainController pid=2) Worker group failed: boom\n"


def test_a_stage_run_whose_process_was_sigkilled_is_closed_as_killed(tmp_path, monkeypatch):
    """Nothing runs in a SIGKILLed stage: its MLflow run stays RUNNING until the next run of
    that stage on this host marks it KILLED (a live process's run, another stage's, are left)."""
    import socket

    from pipeline.runtime import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("btbnet")
    here = {"btbnet.host": socket.gethostname()}
    gone = client.create_run(experiment, tags=here | {"btbnet.stage": "pretrain", "btbnet.pid": "999999"}).info.run_id
    live = client.create_run(experiment, tags=here | {"btbnet.stage": "pretrain", "btbnet.pid": str(os.getppid())}).info.run_id
    other = client.create_run(experiment, tags=here | {"btbnet.stage": "finetune", "btbnet.pid": "999999"}).info.run_id
    assert tracking.close_orphaned_runs(experiment, "pretrain") == [gone]
    assert [client.get_run(r).info.status for r in (gone, live, other)] == ["KILLED", "RUNNING", "RUNNING"]


def test_a_parent_run_whose_dvc_was_killed_is_closed_as_killed(tmp_path, monkeypatch):
    """A `dvc repro` SIGKILLed while a stage ran leaves its parent run RUNNING; the next stage
    on this host marks it KILLED (and leaves the parent of a live invocation alone)."""
    import socket

    import psutil
    from mlflow.tracking import MlflowClient

    from pipeline.runtime import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("btbnet")
    host = socket.gethostname()
    me = psutil.Process()
    gone = client.create_run(experiment, tags={tracking.PARENT_TAG: f"{host}:999999:12"}).info.run_id
    live = client.create_run(experiment, tags={tracking.PARENT_TAG: f"{host}:{me.pid}:{me.create_time():.0f}"}).info.run_id
    assert tracking.close_orphaned_parents(experiment) == [gone]
    assert client.get_run(gone).info.status == "KILLED" and client.get_run(live).info.status == "RUNNING"


# --- kills never reach DVC's cache -----------------------------------------------------------


def lock_outs(repo: Path, stage: str) -> list[tuple[str, str]]:
    import yaml

    return [(out["path"], out["md5"]) for out in yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"]]


@pytest.mark.slow
def test_a_dvc_repro_killed_at_any_moment_then_rerun_builds_what_a_clean_run_builds(repo, tmp_path):
    """`kill -9` of `dvc repro -f synthesize` at 0.5 s (the stage still importing), at 3 s (Ray
    starting) and right after the stage wrote its outputs (before DVC recorded them), each time
    `dvc repro` at once: the stage never lives on to write behind the new run's back, so dvc.lock
    records the clean run's outputs (the committed dvc.lock's, built from the embedded default),
    `dvc status` is clean, and no parent MLflow run is left RUNNING."""
    clean = lock_outs(repo, "synthesize")
    for moment in (0.5, 3.0, "written"):
        log = tmp_path / f"killed-at-{moment}.log"
        proc = subprocess.Popen([str(DVC), "repro", "-f", "synthesize"], cwd=repo, env=stage_env(), stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        if moment == "written":
            deadline = time.monotonic() + 240
            while "synthesize: " not in log.read_text():  # the stage's closing line: "synthesize: 560 samples from …"
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        else:
            time.sleep(moment)
        proc.kill()  # dvc alone, as `kill -9 <its pid>`: nothing in it runs again
        proc.wait(timeout=30)
        done = dvc(repo, "repro", "synthesize")
        assert done.returncode == 0, f"after a kill at {moment}: {describe(done)}"
        assert lock_outs(repo, "synthesize") == clean, moment
        status = dvc(repo, "status", "synthesize")
        assert status.returncode == 0 and "up to date" in status.stdout, describe(status)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    parents = [r for r in client.search_runs([client.get_experiment_by_name("btbnet").experiment_id]) if "btbnet.stage" not in r.data.tags]
    assert parents and "RUNNING" not in {r.info.status for r in parents}, [(r.info.run_name, r.info.status) for r in parents]
