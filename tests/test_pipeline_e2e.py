"""The whole DVC pipeline, end to end, in a temporary git copy of the repo with tiny params.

One `dvc repro` (module fixture) feeds the checks of its outputs and MLflow runs; a second
`dvc repro` must do nothing, `dvc status` must list exactly the stages a param edit touches.
What changes the repo runs in a copy of it made after the repro (outputs, DVC cache, MLflow
store and all), so that no test sees another's leftovers, in any order: `dvc exp run -S
scales=[1,0.8]` must rerun everything but synthesize, logging its MLflow runs under the
experiment's name; a queue of two experiments runs to the end; an identical retraining writes
identical bytes, so DVC reruns nothing after it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pytorch
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
import numpy as np
from PIL import Image

import btbnet
from btbnet.data import list_images
from btbnet.synthesis import DIRECTIONS, LEVELS
from tests.pipeline_helpers import TINY_PARAMS, copy_repo, describe, dvc, git, read_params, write_params

pytestmark = pytest.mark.slow

STAGES = ("synthesize", "pretrain", "finetune", "baselines", "evaluate")
EXP_SHOW_INFO_COLUMNS = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}  # dvc exp show --csv, before the metrics
REPORTED = {"paper": ("f_measure", "f_measure_per_image", "precision", "recall", "mae", "f_max"),
            "ddff": ("f_measure", "precision", "recall", "mae")}
SAMPLES_PER_SOURCE = len(DIRECTIONS) * len(LEVELS)  # 20 (section 4.1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("e2e") / "repo", TINY_PARAMS)


@pytest.fixture(scope="module")
def params(repo) -> dict[str, Any]:
    return read_params(repo)


@pytest.fixture(scope="module")
def repro(repo) -> subprocess.CompletedProcess[str]:
    done = dvc(repo, "repro")
    assert done.returncode == 0, describe(done)
    return done


def copy_after_repro(repo: Path, dest: Path) -> Path:
    """The repro's repo as it stands (git, outputs, DVC cache, MLflow store), copied to `dest`."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def client(repo) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def stage_runs(client: MlflowClient, exp_name: str) -> dict[str, Run]:
    """The MLflow runs tagged with DVC experiment `exp_name`, by stage; one run per stage."""
    experiment = client.get_experiment_by_name("btbnet")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.exp_name` = '{exp_name}'")
    runs = [r for r in runs if "btbnet.stage" in r.data.tags]  # not the parent run
    stages = [r.data.tags["btbnet.stage"] for r in runs]
    assert len(stages) == len(set(stages)), stages
    return {r.data.tags["btbnet.stage"]: r for r in runs}


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


# --- dvc repro: every stage, every output -------------------------------------------------


def test_repro_runs_every_stage(repro):
    assert ran(repro.stdout) == set(STAGES)


SILENCED = (  # docs/reliability.md, "Console output": each pattern a line the stages keep off the console
    "Traceback (most recent call last)",
    "Token authentication is enabled",  # Ray's notice at each local start (a logger of its _private package)
    "system metrics",  # MLflow's INFO lines on system-metrics sampling
    "can be interpreted in multiple ways",  # MLflow's dataset-source warning
    "PreemptionWatcher",  # Ray's error-level line at every worker-group start (RayLineFilter)
    "Failed to send resource request",
    "Timed out while waiting for GCS",
)


def test_a_clean_repro_prints_no_traceback_error_line_or_silenced_notice(repro):
    output = repro.stdout + repro.stderr
    assert "Ray dashboard: http://" in output and re.search(r"pretrain: step \d+/\d+ \(epoch \d+/\d+\)", output)
    for pattern in SILENCED:
        assert pattern.lower() not in output.lower(), pattern
    glog_errors = [line for line in output.splitlines() if re.search(r"(^|\s)[EF]\d{4} \d\d:\d\d:\d\d", line)]
    assert glog_errors == []


def test_synthetic_set_has_20_samples_per_source(repo, params, repro):
    s = params["synthesize"]
    sources = sum(len(list_images(repo / s["source_root"] / folder)) for folder in s["sources"])
    out = repo / s["out_dir"]
    images = sorted(p.name for p in (out / "image").iterdir())
    assert len(images) == SAMPLES_PER_SOURCE * sources
    assert sorted(p.name for p in (out / "gt").iterdir()) == images
    assert json.loads((repo / s["metrics"]).read_text())["samples"] == len(images)


def test_models_load_with_the_configured_architecture(repo, params, repro):
    pretrained = btbnet.load_checkpoint(repo / params["pretrain"]["model"])
    finetuned = btbnet.load_checkpoint(repo / params["finetune"]["model"])
    for model in (pretrained, finetuned):
        assert model.config.scales == (1.0, 0.8, 0.6)
        assert model.config.width == TINY_PARAMS["model"]["width"]
        assert model.config.rrnet_steps == params["rrnet_steps"]
    # finetune started from pretrain's weights and trained them further
    before, after = pretrained.state_dict(), finetuned.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_evaluation_metrics_curves_and_figures(repo, params, repro):
    e = params["evaluate"]
    names = [t["name"] for t in e["test_sets"]]
    report = json.loads((repo / e["metrics"]).read_text())
    assert sorted(report) == sorted(names)
    for name in names:
        for protocol, keys in REPORTED.items():
            for key in keys:
                value = report[name][protocol][key]
                assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, protocol, key)
    baselines = json.loads((repo / params["baselines"]["metrics"]).read_text())
    assert sorted(baselines) == sorted(params["baselines"]["methods"])
    for name in names:
        assert baselines["all_in_focus"][name]["ddff"]["f_measure"] == 0.0  # no blurred positive at all
        assert baselines["all_in_focus"][name]["paper"]["recall"] == 1.0
        assert 0.0 < baselines["lbp"][name]["paper"]["f_measure"] <= 1.0
        # MAE of the trivial maps: the in-focus and the blurred fractions, adding up to one
        assert baselines["all_in_focus"][name]["paper"]["mae"] + baselines["all_blurred"][name]["paper"]["mae"] == pytest.approx(1.0)
    table = (repo / e["figures_dir"] / "table1.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["BTBNet", *sorted(params["baselines"]["methods"])]
    for name in names:
        with (repo / e["plots_dir"] / f"{name}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [int(r["threshold"]) for r in rows] == list(range(256))
        assert all(0.0 <= float(r["precision"]) <= 1.0 and 0.0 <= float(r["recall"]) <= 1.0 for r in rows)
    figures = repo / e["figures_dir"]
    pngs = ["pr_curves.png", *(f"examples_{name}.png" for name in names)]
    assert sorted(p.name for p in figures.iterdir()) == sorted([*pngs, "table1.md"])
    assert {p: list(by_key) for p, by_key in json.loads((repo / e["headline"]).read_text()).items()} == {n: ["F", "MAE"] for n in names}
    for png in pngs:
        with Image.open(figures / png) as img:
            assert img.format == "PNG" and min(img.size) > 16
    for name in names:  # image | truth | prediction, tiles of at least 256 px, captions and a legend
        with Image.open(figures / f"examples_{name}.png") as img:
            assert img.size[0] >= 3 * 256 and img.size[1] >= params["evaluate"]["examples"] * 256


def parent_runs(client: MlflowClient, exp_name: str) -> list[Run]:
    experiment = client.get_experiment_by_name("btbnet")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.exp_name` = '{exp_name}'")
    return [r for r in runs if "btbnet.stage" not in r.data.tags]


def test_mlflow_has_one_run_per_stage_nested_under_one_parent_per_repro(repo, client, params, repro):
    runs = stage_runs(client, "workspace")
    assert sorted(runs) == sorted(STAGES)
    [parent] = parent_runs(client, "workspace")
    assert parent.info.run_name == "workspace" and parent.info.status == "FINISHED"
    # the parent carries evaluate's headline (the runs table compares experiments without expanding them)
    headline = json.loads((repo / params["evaluate"]["headline"]).read_text())
    assert parent.data.metrics == {f"{name}/{key}": value for name, row in headline.items() for key, value in row.items()}
    assert headline["embedded"]["F"] == json.loads((repo / params["evaluate"]["metrics"]).read_text())["embedded"]["paper"]["f_measure"]
    # the experiment opens in MLflow's model-training view, not its GenAI overview
    assert client.get_experiment_by_name("btbnet").tags["mlflow.experimentKind"] == "custom_model_development"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert {r.info.run_name for r in runs.values()} == {f"workspace/{stage}" for stage in STAGES}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert {r.data.tags["git.commit"] for r in runs.values()} == {commit}
    assert {r.data.tags["pipeline"] for r in runs.values()} == {f"workspace@{commit[:12]}"}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


def test_mlflow_runs_hold_params_and_metrics(client, params, repro):
    runs = stage_runs(client, "workspace")
    assert runs["synthesize"].data.params["synthesize.out_dir"] == params["synthesize"]["out_dir"]
    assert runs["synthesize"].data.metrics["samples"] > 0
    for stage in ("pretrain", "finetune"):
        run = runs[stage]
        assert run.data.params["train.loop.epochs"] == "1"
        assert run.data.params["train.loop.batch_size"] == "2"
        assert json.loads(run.data.params["model.scales"]) == [1.0, 0.8, 0.6]
        steps = client.get_metric_history(run.info.run_id, "step/total")
        assert [m.step for m in steps] == [0, 1]  # max_steps_per_epoch 2, one epoch
        epochs = client.get_metric_history(run.info.run_id, "epoch/total")
        assert len(epochs) == 1 and math.isfinite(epochs[0].value)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {f"{stage}.json", "plots"} <= artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {f"plots/{n}" for n in ("steps.csv", "epochs.csv", "losses.png")}
        assert "system/cpu_utilization_percentage" in run.data.metrics and "system/system_memory_usage_megabytes" in run.data.metrics
        [data] = run.inputs.dataset_inputs  # mlflow.log_input: the training pairs
        assert data.dataset.name == f"{stage}-data" and len(data.dataset.digest) == 16
        assert [t.value for t in data.tags if t.key == "mlflow.data.context"] == ["training"]
    synthesize_id, evaluate_id = runs["synthesize"].info.run_id, runs["evaluate"].info.run_id
    assert {"samples.png", "synthesize.json"} <= {a.path for a in client.list_artifacts(synthesize_id)}
    assert {"evaluate.json", "figures", "pr_curves"} <= {a.path for a in client.list_artifacts(evaluate_id)}
    assert "figures/pr_curves.png" in {a.path for a in client.list_artifacts(evaluate_id, "figures")}
    evaluate = runs["evaluate"]
    assert evaluate.data.params["evaluate.examples"] == str(params["evaluate"]["examples"])
    for name in (t["name"] for t in params["evaluate"]["test_sets"]):
        for protocol, keys in REPORTED.items():
            for key in keys:
                assert math.isfinite(evaluate.data.metrics[f"{name}/{protocol}/{key}"])


def test_mlflow_logged_models_of_pretrain_and_finetune(repo, params, client, repro):
    """Each training run logs its checkpoint's model: probability maps, any batch and H × W."""
    runs = stage_runs(client, "workspace")
    experiment_id = runs["pretrain"].info.experiment_id
    models = {m.source_run_id: m for m in client.search_logged_models([experiment_id])}
    assert set(models) == {runs["pretrain"].info.run_id, runs["finetune"].info.run_id}
    image = torch.rand(2, 3, 20, 28)  # neither the training size nor square
    for stage in ("pretrain", "finetune"):
        logged = models[runs[stage].info.run_id]
        assert logged.name == f"btbnet-{stage}"
        last_step = max(m.step for m in client.get_metric_history(runs[stage].info.run_id, "step/total"))
        linked = {m.key: m for m in logged.metrics}
        assert linked["final/total"].value == runs[stage].data.metrics["epoch/total"]  # the final loss, not step 0's
        assert linked["step/total"].step == last_step == 1
        for fmt in ("torchscript", "onnx"):  # exports for users outside Python, checked when written
            assert float(logged.tags[f"btbnet.export.{fmt}.max_abs_diff"]) < 1e-4
        scripted = torch.jit.load(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/extra_files/btbnet.torchscript"))
        with torch.no_grad():
            torch.testing.assert_close(scripted(image), torch.sigmoid(btbnet.load_checkpoint(repo / params[stage]["model"])(image).final))
        local = Path(mlflow.artifacts.download_artifacts(logged.artifact_location))
        assert not list(local.rglob("weights/*.pt"))  # the code it carries has no released weights
        example = json.loads((local / "serving_input_example.json").read_text())["inputs"]
        patch = np.asarray(example, dtype=np.float32)
        assert patch.shape[:2] == (1, 3) and patch.std() > 0.02  # a photo patch, not a constant
        shuffled = np.random.default_rng(0).permutation(patch.ravel()).reshape(patch.shape)
        assert np.abs(np.diff(patch, axis=-1)).mean() < 0.7 * np.abs(np.diff(shuffled, axis=-1)).mean()  # neighbours alike
        model = mlflow.pytorch.load_model(logged.artifact_location)
        checkpoint = btbnet.load_checkpoint(repo / params[stage]["model"])
        with torch.no_grad():
            focus = model(image)  # [2, 1, 20, 28]
            expected = torch.sigmoid(checkpoint(image).final)
        torch.testing.assert_close(focus, expected)


def test_training_stages_write_their_loss_plots(repo, params, repro):
    for stage in ("pretrain", "finetune"):
        folder = repo / params[stage]["plots"]
        steps = list(csv.DictReader((folder / "steps.csv").open()))
        epochs = list(csv.DictReader((folder / "epochs.csv").open()))
        assert [int(r["step"]) for r in steps] == [0, 1] and list(steps[0])[:3] == ["step", "total", "main"]
        assert [(int(r["epoch"]), int(r["step"])) for r in epochs] == [(0, 1)]  # the step the epoch ended at
        assert all(math.isfinite(float(r["total"])) for r in steps + epochs)
        with Image.open(folder / "losses.png") as img:
            assert img.format == "PNG" and min(img.size) > 100


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_offline(page: Path) -> str:
    """The DOM of `page` once its scripts have run in headless Chromium with every host
    unresolvable and no proxy: what a reader without the network sees."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return done.stdout


def charts_drawn(folder: Path) -> tuple[int, int]:
    """(vega charts on DVC's page in `folder`, charts drawn on a canvas when rendered offline)."""
    page = folder / "index.html"
    return len(re.findall(r"vegaEmbed\('#", page.read_text())), len(re.findall(r'<canvas[^>]*class="marks"', rendered_offline(page)))


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (Debian package chromium; README: run the tests)")
def test_dvc_plots_show_draws_every_chart_without_the_network(repo, tmp_path, repro):
    """`dvc plots show` uses the repo's page (.dvc/plots/offline.html: vega, vega-lite and
    vega-embed inside it, nothing from a CDN): every interactive chart draws offline, and the
    PNG of each loss plot is there too."""
    done = dvc(repo, "plots", "show", "-o", str(tmp_path / "html"))
    assert done.returncode == 0, describe(done)
    html = (tmp_path / "html" / "index.html").read_text()
    body = html.rsplit("<body>", 1)[1]  # the page's own body: vega-embed's script holds a "<body>" string too
    assert "cdn.jsdelivr" not in html and "https://" not in re.sub(r'"\$schema": "[^"]*"', "", body)
    images = re.findall(r'<img src="(static/[^"]+)"', html)
    assert {Path(i).name.removeprefix("workspace_") for i in images} == {"figures_pr_curves.png", "plots_pretrain_losses.png", "plots_finetune_losses.png"}
    charts, drawn = charts_drawn(tmp_path / "html")
    assert charts == 5 and drawn == charts  # the PR curve, each training stage's steps and epochs


def test_the_finetuned_model_is_registered_as_candidate_with_its_evaluation(repo, params, client, repro):
    version = client.get_model_version_by_alias("btbnet", "candidate")
    runs = stage_runs(client, "workspace")
    assert version.run_id == runs["finetune"].info.run_id
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    evaluation = json.loads((repo / params["evaluate"]["metrics"]).read_text())
    linked = {m.key: m.value for m in logged.metrics}
    for name, report in evaluation.items():
        assert linked[f"{name}/paper/f_measure"] == pytest.approx(report["paper"]["f_measure"])
        assert linked[f"{name}/ddff/mae"] == pytest.approx(report["ddff"]["mae"])
    assert "embedded/paper/f_measure" in runs["evaluate"].data.metrics  # and still the evaluate run's own


def test_the_readmes_mlflow_ui_command_serves_the_pipelines_runs(repo, tmp_path, repro):
    """`mlflow ui --workers 1` from the repo root (README): it serves the store the stages wrote."""
    import urllib.request

    from pipeline.runtime.cluster import free_ports

    [port] = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--workers", "1", "--port", str(port)], cwd=repo,
                            env=env, stdout=(tmp_path / "ui.log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert answer.read() == b"OK"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-2000:]
                time.sleep(0.5)
        served = MlflowClient(f"http://127.0.0.1:{port}")
        assert sorted(stage_runs(served, "workspace")) == sorted(STAGES)
        assert served.get_model_version_by_alias("btbnet", "candidate").version
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- a second repro, and what a param edit invalidates --------------------------------------


def test_repro_again_runs_nothing(repo, client, repro):
    runs_before = len(client.search_runs([client.get_experiment_by_name("btbnet").experiment_id]))
    done = dvc(repo, "repro")
    assert done.returncode == 0, describe(done)
    assert ran(done.stdout) == set()
    assert "Data and pipelines are up to date." in done.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in done.stdout
    assert len(client.search_runs([client.get_experiment_by_name("btbnet").experiment_id])) == runs_before


STATUS_CASES = {
    "evaluate param": ({"evaluate": {"examples": 2}}, {"evaluate"}),
    "test sets": ({"evaluate": {"test_sets": [{"name": "x", "folder": "test", "polarity": "blurred"}]}}, {"baselines", "evaluate"}),
    "synthesize param": ({"synthesize": {"max_size": 64}}, {"synthesize"}),
    "baselines param": ({"baselines": {"methods": ["lbp"]}}, {"baselines"}),
    "model param": ({"model": {"width": 0.125}}, {"pretrain"}),
    "finetune param": ({"finetune": {"loop": {"epochs": 2}}}, {"finetune"}),
    "shared recipe": ({"train": {"optim": {"momentum": 0.5}}}, {"pretrain", "finetune"}),
    "rrnet_steps": ({"rrnet_steps": 1}, {"pretrain"}),
}


@pytest.mark.parametrize(("updates", "stages"), STATUS_CASES.values(), ids=STATUS_CASES.keys())
def test_status_lists_only_the_stages_that_declare_the_changed_param(repo, repro, updates, stages):
    """Downstream stages rerun through their deps on the changed outs, not through params."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    try:
        write_params(repo, updates)
        done = dvc(repo, "status", "--json")
        assert done.returncode == 0, describe(done)
        status = json.loads(done.stdout)
    finally:
        params_file.write_text(original)
    assert set(status) == stages
    for stage in stages:
        assert any("params.yaml" in entry.get("changed deps", {}) for entry in status[stage]), status[stage]


# --- dvc exp run: an ablation of Table 2 --------------------------------------------------


@pytest.fixture(scope="module")
def exp_repo(repo, repro, tmp_path_factory) -> Path:
    """A copy of the repo after the repro, committed as a user would (the experiment's baseline:
    the code hashes in its dvc.lock are the workspace's), where the experiment runs."""
    copy = copy_after_repro(repo, tmp_path_factory.mktemp("exp") / "repo")
    git(copy, "add", "--all")
    git(copy, "commit", "--quiet", "-m", "dvc repro")
    return copy


@pytest.fixture(scope="module")
def exp_client(exp_repo) -> MlflowClient:
    return MlflowClient(f"sqlite:///{exp_repo / 'mlflow.db'}")


@pytest.fixture(scope="module")
def experiment(exp_repo) -> tuple[subprocess.CompletedProcess[str], str]:
    """`dvc exp run -S scales=[1,0.8]` after the repro; (its process, the experiment's name)."""
    done = dvc(exp_repo, "exp", "run", "-S", "scales=[1,0.8]")
    assert done.returncode == 0, describe(done)
    names = re.findall(r"Reproducing experiment '([^']+)'", done.stdout)
    assert len(names) == 1, done.stdout[-3000:]
    return done, names[0]


def test_experiment_reruns_all_but_synthesize(experiment):
    done, _ = experiment
    assert ran(done.stdout) == {"pretrain", "finetune", "evaluate"}
    assert "Stage 'synthesize' didn't change, skipping" in done.stdout


def test_exp_show_leads_with_the_headline_metrics_and_only_changed_drops_the_code(exp_repo, experiment):
    """The README's commands: evaluate's figures are the first metric columns; with
    --only-changed the code hashes (unchanged by an experiment) are gone, the params it set stay."""
    done = dvc(exp_repo, "exp", "show", "--no-pager", "--csv")
    assert done.returncode == 0, describe(done)
    header = done.stdout.splitlines()[0].split(",")
    metrics = [c for c in header if c not in EXP_SHOW_INFO_COLUMNS]  # what DVC shows before them varies (parent, State)
    assert metrics[:2] == ["embedded.F", "embedded.MAE"], header[:8]  # the paper protocol's headline, per test set
    assert not [c for c in header if "f_measure_code" in c]  # no column that repeats another
    changed = dvc(exp_repo, "exp", "show", "--no-pager", "--csv", "--only-changed").stdout.splitlines()[0].split(",")
    assert not [c for c in changed if c.startswith(("btbnet/", "pipeline/"))], changed
    assert "scales" in changed and any("f_measure" in c for c in changed), changed
    dropped = dvc(exp_repo, "exp", "show", "--no-pager", "--csv", "--drop", "^(btbnet|pipeline)/").stdout.splitlines()[0].split(",")
    assert not [c for c in dropped if c.startswith(("btbnet/", "pipeline/"))] and "bytes" in dropped, dropped


def test_plots_diff_overlays_the_workspace_and_the_experiment(exp_repo, tmp_path, experiment):
    """Both revisions' losses in one chart per file, a colour per loss term (the same in both
    revisions) and a dash per revision, on one log axis; drawn offline."""
    _, name = experiment
    done = dvc(exp_repo, "plots", "diff", name, "--json", "-o", str(tmp_path / "plots"))
    assert done.returncode == 0, describe(done)
    report = json.loads(done.stdout)["data"]
    [steps] = next(v for k, v in report.items() if k.endswith("pretrain/steps.csv"))  # one chart, not one per revision
    assert {row["rev"] for row in steps["content"]["data"]["values"]} == {"workspace", name}
    encoding = steps["content"]["encoding"]
    assert encoding["color"]["field"] == "term" and encoding["strokeDash"]["field"] == "rev"
    assert encoding["y"]["field"] == "loss" and encoding["y"]["scale"] == {"type": "log"}
    if CHROMIUM is not None:
        html = dvc(exp_repo, "plots", "diff", name, "-o", str(tmp_path / "html"))
        assert html.returncode == 0, describe(html)
        charts, drawn = charts_drawn(tmp_path / "html")
        assert charts >= 5 and drawn == charts


def test_experiment_models_have_two_scales(exp_repo, params, experiment):
    for key in ("pretrain", "finetune"):
        model = btbnet.load_checkpoint(exp_repo / params[key]["model"])  # the experiment's, applied to the workspace
        assert model.config.scales == (1.0, 0.8) and len(model.streams) == 2
    report = json.loads((exp_repo / params["evaluate"]["metrics"]).read_text())
    assert all(math.isfinite(r["paper"]["f_measure"]) for r in report.values())


def test_experiment_mlflow_runs_carry_the_experiment_name(exp_client, experiment):
    client = exp_client
    _, name = experiment
    assert name != "workspace"
    runs = stage_runs(client, name)
    assert sorted(runs) == ["evaluate", "finetune", "pretrain"]  # not baselines: it reads no model
    pipeline_tags = {r.data.tags["pipeline"] for r in runs.values()}
    assert len(pipeline_tags) == 1 and pipeline_tags.pop().startswith(f"{name}@")
    assert json.loads(runs["pretrain"].data.params["model.scales"]) == [1.0, 0.8]
    assert json.loads(runs["evaluate"].data.params["model.scales"]) == [1.0, 0.8]
    [parent] = parent_runs(client, name)  # one parent per `dvc exp run`, named after the experiment
    assert parent.info.run_name == name and {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert {r.info.run_name for r in runs.values()} == {f"{name}/{stage}" for stage in runs}
    # the first repro's runs keep their own group
    assert sorted(stage_runs(client, "workspace")) == sorted(STAGES)


# --- a queue of experiments (docs/experiments.md) -----------------------------------------


@pytest.fixture(scope="module")
def queue_repo(repo, repro, tmp_path_factory) -> Path:
    return copy_after_repro(repo, tmp_path_factory.mktemp("queue") / "repo")


def test_a_queue_of_two_experiments_runs_to_the_end(queue_repo):
    """`dvc exp run --queue` twice, then `dvc queue start`: both run (in copies of the repo
    under .dvc/tmp), their metrics are in `dvc exp show`, their MLflow runs in the repo's store.
    One trains (fine-tuning longer: Ray Train in the queue's copy of the repo), the other only
    scores again."""
    repo, client = queue_repo, MlflowClient(f"sqlite:///{queue_repo / 'mlflow.db'}")
    names = ["q-finetune-longer", "q-two-examples"]
    reran = {"q-finetune-longer": ["evaluate", "finetune"], "q-two-examples": ["evaluate"]}
    for name, setting in zip(names, ["+finetune.loop.max_steps_per_epoch=3", "evaluate.examples=2"]):  # + adds a key
        queued = dvc(repo, "exp", "run", "--queue", "-n", name, "-S", setting)
        assert queued.returncode == 0, describe(queued)
    assert dvc(repo, "queue", "start", "-j", "1").returncode == 0
    try:
        deadline = time.monotonic() + 900
        while True:
            status = dvc(repo, "queue", "status").stdout
            states = {n: re.search(rf"{n}\s+\S+ \S+\s+(\w+)", status) for n in names}
            if all(m and m.group(1) in ("Success", "Failed") for m in states.values()):
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert all(m.group(1) == "Success" for m in states.values()), status
    finally:
        dvc(repo, "queue", "stop")
    rows = {r["Experiment"]: r for r in csv.DictReader(dvc(repo, "exp", "show", "--no-pager", "--csv").stdout.splitlines())}
    for name in names:
        assert math.isfinite(float(rows[name]["embedded.paper.f_measure"])), rows[name]
        [parent] = parent_runs(client, name)
        assert parent.info.status == "FINISHED"
        assert sorted(stage_runs(client, name)) == reran[name]
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing logged to a throw-away copy


def test_an_identical_retraining_writes_identical_bytes_and_reruns_nothing_after_it(repo, repro, params, tmp_path):
    """`dvc repro -f pretrain` (the same training again): the same bytes in its model, metrics
    and plots (no timestamp, no temporary name), so DVC finds finetune up to date."""
    again = copy_after_repro(repo, tmp_path / "again")
    outputs = [params["pretrain"]["model"], params["pretrain"]["metrics"], f"{params['pretrain']['plots']}/steps.csv"]
    before = [(repo / rel).read_bytes() for rel in outputs]
    done = dvc(again, "repro", "-f", "--single-item", "pretrain")
    assert done.returncode == 0, describe(done)
    assert [(again / rel).read_bytes() for rel in outputs] == before
    assert "seconds" not in json.loads(before[1])
    status = dvc(again, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
