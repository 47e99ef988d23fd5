"""infra/: the Ray cluster config and the paper-scale overrides, checked without a cloud.

Nothing here launches machines. The cluster config goes through Ray's own config preparation
and schema check (what `ray up` runs before it calls AWS); its shell snippets that write the
node environment are run in a temporary HOME. The paper-scale overrides are checked against
the pipeline's params validation and against DVC's own `-S` parser.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from btbnet.config import deep_merge, flatten
from btbnet.checkpoint import read_checkpoint, read_config
from btbnet.pretrained import released, weights_path
from pipeline.runtime.params import load_params

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILE = REPO_ROOT / "infra" / "cluster.yaml"
PRESETS = sorted((REPO_ROOT / "infra" / "presets").glob("*.yaml"))
PAPER_FILE = REPO_ROOT / "infra" / "presets" / "paper.yaml"
PARAMS_FILE = REPO_ROOT / "params.yaml"
REPO_ON_NODES = "/home/ubuntu/btbnet"
ENV_FILE = "~/.btbnet_env"

# vCPUs and GPUs of the AWS instance types the GPU worker may use (AWS's published shapes).
GPU_INSTANCES = {
    "g5.2xlarge": (8, 1), "g6e.xlarge": (4, 1), "g6e.2xlarge": (8, 1), "g6e.4xlarge": (16, 1), "p4d.24xlarge": (96, 8),
}  # fmt: skip


# ---------------------------------------------------------------------------- helpers


def load_preset_script() -> ModuleType:
    """infra/preset.py as a module (infra/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("preset", REPO_ROOT / "infra" / "preset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preset = load_preset_script()


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def prepared(cluster: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` sees it: defaults filled in, setup commands merged per node type."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(cluster))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def paper() -> dict[str, Any]:
    return yaml.safe_load(PAPER_FILE.read_text())


def head_commands(config: dict[str, Any]) -> list[str]:
    return config["head_setup_commands"]


def worker_commands(config: dict[str, Any]) -> list[str]:
    node_type = config["available_node_types"]["gpu_worker"]
    return node_type.get("worker_setup_commands", config["worker_setup_commands"])


def run_env_commands(commands: list[str], home: Path, fake_bin: Path) -> dict[str, str]:
    """Run the commands that write ~/.btbnet_env in `home`, then source it: the node's environment."""
    env = {"HOME": str(home), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        if ENV_FILE in command:
            subprocess.run(["bash", "-c", command], env=env, check=True)
    out = subprocess.run(
        ["bash", "-c", "source ~/.btbnet_env && env -0"], env=env, check=True, capture_output=True, text=True
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A `hostname` that answers `-I` like an EC2 node: private IPv4 first."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "hostname"
    script.write_text('#!/bin/sh\n[ "$1" = "-I" ] && echo "10.1.2.3 fd00::7 " || echo node\n')
    script.chmod(0o755)
    return folder


# ---------------------------------------------------------------------------- cluster.yaml


def test_cluster_config_passes_rays_own_preparation_and_schema(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}


def test_cpu_head_and_up_to_eight_single_gpu_workers(cluster: dict[str, Any]) -> None:
    head = cluster["available_node_types"]["head"]
    worker = cluster["available_node_types"]["gpu_worker"]
    assert head["resources"]["GPU"] == 0
    assert (worker["min_workers"], worker["max_workers"], cluster["max_workers"]) == (0, 8, 8)
    instance = worker["node_config"]["InstanceType"]
    assert instance in GPU_INSTANCES, f"{instance}: not a known GPU instance type"
    cpus, gpus = GPU_INSTANCES[instance]
    assert (worker["resources"]["CPU"], worker["resources"]["GPU"]) == (cpus, gpus)


def test_every_node_type_installs_python_311_torch_and_the_project(prepared: dict[str, Any]) -> None:
    for name, commands in (("head", head_commands(prepared)), ("gpu_worker", worker_commands(prepared))):
        text = "\n".join(commands)
        assert "--python 3.11" in text, name
        install = [c for c in commands if "pip install -e '.[pipeline]'" in c]
        assert len(install) == 1, f"{name}: expected one project install, got {install}"
        command = install[0]
        assert command.startswith(f"cd {REPO_ON_NODES} && "), command
        assert command.index("torch==2.13.0") < command.index("pip install -e"), "torch first: the pinned build"


def test_no_node_shares_a_file_system_and_workers_reach_s3(cluster: dict[str, Any], prepared: dict[str, Any]) -> None:
    """The repo is copied to every node (for its install); nothing is exported or mounted: the
    workers get code by runtime env and data through `train.ray.storage` (S3, their profile)."""
    assert cluster["file_mounts"][REPO_ON_NODES] == "."
    every_command = "\n".join(head_commands(prepared) + worker_commands(prepared) + cluster["head_start_ray_commands"])
    assert set(re.findall(r"/home/ubuntu/[\w.-]+", every_command)) == {REPO_ON_NODES}
    for word in ("nfs", "exportfs", "mount "):
        assert word not in every_command.lower(), word
    worker = cluster["available_node_types"]["gpu_worker"]["node_config"]
    assert worker["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}  # the head's: EC2 and S3 access
    assert "-S train.ray.storage=s3://" in CLUSTER_FILE.read_text()  # the run command its header gives


def test_data_and_run_state_are_not_pushed_by_ray_up(cluster: dict[str, Any], paper: dict[str, Any]) -> None:
    excluded = set(cluster["rsync_exclude"])
    for path in ("/data/external/", "/data/synthetic/", "/models/", "/.dvc/cache/", "/.ray_runs/", "/mlruns/"):
        assert path in excluded
    # every data folder of the paper-scale run lives under the excluded data/external/
    for key in ("synthesize.source_root", "finetune.data", "evaluate.data_root"):
        assert flatten(paper)[key].startswith("data/external"), key


def test_token_auth_everywhere_and_the_token_at_its_default_path(
    cluster: dict[str, Any], prepared: dict[str, Any], tmp_path: Path, fake_bin: Path
) -> None:
    home = f"/home/{cluster['auth']['ssh_user']}"
    assert cluster["file_mounts"][f"{home}/.ray/auth_token"] == "~/.ray/auth_token"
    for name, commands in (("head", head_commands(prepared)), ("gpu_worker", worker_commands(prepared))):
        (tmp_path / name).mkdir()
        env = run_env_commands(commands, tmp_path / name, fake_bin)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["PATH"].startswith(f"{tmp_path / name}/venv/bin:"), name


def test_head_clients_connect_to_the_cluster_and_log_to_its_mlflow_server(
    prepared: dict[str, Any], tmp_path: Path, fake_bin: Path
) -> None:
    head = run_env_commands(head_commands(prepared), tmp_path, fake_bin)
    assert head["RAY_ADDRESS"] == "auto"
    assert head["MLFLOW_TRACKING_URI"] == "http://10.1.2.3:5000"  # the head's private IP: workers log there
    (tmp_path / "worker").mkdir()
    worker = run_env_commands(worker_commands(prepared), tmp_path / "worker", fake_bin)
    assert "RAY_ADDRESS" not in worker and "MLFLOW_TRACKING_URI" not in worker


def test_head_starts_ray_without_the_client_address_and_one_mlflow_server(cluster: dict[str, Any]) -> None:
    start = " ".join(cluster["head_start_ray_commands"])
    assert "env -u RAY_ADDRESS ray start --head --port=6379" in start
    server = next(c for c in cluster["head_start_ray_commands"] if "mlflow server" in c)
    argv = shlex.split(server.split("mlflow server", 1)[1].split(">", 1)[0])
    options = dict(zip(argv[::2], argv[1::2]))
    assert options["--port"] == "5000" and options["--host"] == "0.0.0.0"
    assert options["--backend-store-uri"] == f"sqlite:///{REPO_ON_NODES}/mlflow.db"
    assert options["--artifacts-destination"] == f"{REPO_ON_NODES}/mlruns"
    assert server.startswith("curl -sf http://127.0.0.1:5000/health > /dev/null ||"), "restarts reuse a running server"
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers


@pytest.mark.parametrize("bashrc", [None, "", "case $- in\n    *i*) ;;\n      *) return;;\nesac\nalias ll='ls -l'\n"])
def test_the_environment_is_sourced_first_thing_in_bashrc_once(
    cluster: dict[str, Any], tmp_path: Path, bashrc: str | None
) -> None:
    """First line, before Ubuntu's "not interactive: return" guard; rerunning setup adds nothing."""
    if bashrc is not None:
        (tmp_path / ".bashrc").write_text(bashrc)
    command = next(c for c in cluster["setup_commands"] if ".bashrc" in c)
    for _ in range(2):
        subprocess.run(["bash", "-c", command], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, check=True)
    lines = (tmp_path / ".bashrc").read_text().splitlines()
    assert lines[0] == "source ~/.btbnet_env"
    assert lines.count("source ~/.btbnet_env") == 1
    assert lines[1:] == (bashrc or "").splitlines()


# ---------------------------------------------------------------------------- paper.yaml and preset.py


def configure_all(path: Path) -> dict[str, Any]:
    """Every stage's `configure` on the params file at `path` (a finetune needs its input
    checkpoint only for the architecture, so it is pointed at a tiny one)."""
    import torch

    import pipeline.baselines
    import pipeline.evaluate
    import pipeline.finetune
    import pipeline.pretrain
    import pipeline.synthesize
    from btbnet.checkpoint import save_checkpoint
    from btbnet.config import BTBNetConfig
    from btbnet.model import build_model

    params = yaml.safe_load(path.read_text())
    ckpt = path.parent / "pretrain.pt"
    with torch.device("cpu"):
        save_checkpoint(build_model(BTBNetConfig(width=0.0625, scales=(1.0,), rrnet_steps=0)), ckpt)
    params["pretrain"]["model"] = str(ckpt)
    path.write_text(yaml.safe_dump(params))
    modules = {
        "synthesize": pipeline.synthesize, "pretrain": pipeline.pretrain,
        "finetune": pipeline.finetune, "baselines": pipeline.baselines, "evaluate": pipeline.evaluate,
    }  # fmt: skip
    return {name: m.configure(load_params(path)) for name, m in modules.items()}


@pytest.mark.parametrize("preset_file", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_merged_over_params_configures_every_stage(preset_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), yaml.safe_load(preset_file.read_text()))))
    configured = configure_all(path)
    assert set(configured) == {"synthesize", "pretrain", "finetune", "baselines", "evaluate"}


def test_paper_preset_is_the_papers_recipe(tmp_path: Path, paper: dict[str, Any]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), paper)))
    c = configure_all(path)
    pre, fine = c["pretrain"], c["finetune"]
    assert (pre.model.width, pre.model.variant, pre.model.scales, pre.model.rrnet_steps) == (1.0, "paper", (1.0, 0.8, 0.6), 3)
    assert pre.backbone_weights == "imagenet"
    for t in (pre.train, fine.train):
        assert (t.optim.lr_backbone, t.optim.lr_new, t.optim.momentum, t.optim.weight_decay) == (1e-4, 1e-3, 0.9, 5e-4)
        assert (t.ray.num_workers, t.ray.use_gpu, t.input.image_size) == (8, True, None)
    assert (pre.train.loop.epochs, fine.train.loop.epochs) == (1, 10)  # per-stage overrides of train.loop
    assert [t.name for t in c["evaluate"].sets.test_sets] == ["shi", "dut"]


def test_paper_scale_training_fits_the_gpu_workers(cluster: dict[str, Any], paper: dict[str, Any]) -> None:
    worker = cluster["available_node_types"]["gpu_worker"]
    gpus = worker["max_workers"] * worker["resources"]["GPU"]
    r = paper["train"]["ray"]
    assert r["use_gpu"] is True
    assert r["num_workers"] <= gpus, f"{r['num_workers']} workers, the cluster has {gpus} GPUs"
    assert r["cpus_per_worker"] <= worker["resources"]["CPU"]
    assert r["loader_workers"] + 1 <= r["cpus_per_worker"], "loader processes + the trainer"


def test_dry_run_prints_the_dvc_command_with_every_leaf(paper: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    assert preset.main(["paper", "--dry-run"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[:5] == ["dvc", "exp", "run", "-n", "paper"]
    assert argv[5::2] == ["-S"] * len(flatten(paper))
    assigned = dict(arg.split("=", 1) for arg in argv[6::2])
    assert set(k.lstrip("+") for k in assigned) == set(flatten(paper))
    assert assigned["model.width"] == "1.0"
    assert assigned["train.ray.use_gpu"] == "true"
    assert assigned["+pretrain.loop.epochs"] == "1"  # not in params.yaml: added, as DVC requires
    assert assigned["synthesize.max_size"] == "null"
    assert assigned["synthesize.sources"] == "[bsds500,ucid]"
    assert assigned["evaluate.test_sets"] == (
        "[{name:shi,folder:cuhk/test,polarity:blurred},{name:dut,folder:dut,polarity:in_focus}]"
    )


def test_unknown_preset_is_refused_with_the_list(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        preset.main(["huge"])
    assert info.value.code == 2
    assert "no such preset (presets: " in capsys.readouterr().err


def test_dvc_parses_the_overrides_back_into_the_paper_values(paper: dict[str, Any], tmp_path: Path) -> None:
    """`dvc exp run -S ...` on params.yaml gives exactly params.yaml deep-merged with paper.yaml."""
    from dvc.utils.hydra import apply_overrides

    applied = tmp_path / "applied" / "params.yaml"
    expected = tmp_path / "expected" / "params.yaml"
    for path in (applied, expected):
        path.parent.mkdir()
    applied.write_text(PARAMS_FILE.read_text())
    params = yaml.safe_load(PARAMS_FILE.read_text())
    apply_overrides(applied, preset.override_args(paper, params)[1::2])
    assert yaml.safe_load(applied.read_text()) == deep_merge(params, paper)


def test_main_runs_dvc_from_the_repo_root_with_another_file_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    overrides = tmp_path / "small.yaml"
    overrides.write_text("model:\n  width: 0.25\nrrnet_steps: 0\n")
    calls = []
    monkeypatch.setattr(preset.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 3)
    assert preset.main(["--file", str(overrides), "--name", "quarter"]) == 3
    expected = ["dvc", "exp", "run", "-n", "quarter", "-S", "model.width=0.25", "-S", "rrnet_steps=0"]
    assert calls == [(expected, REPO_ROOT)]
    assert capsys.readouterr().out.strip() == shlex.join(expected)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (8, "8"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        ("imagenet", "imagenet"),
        ("cuhk/test", "cuhk/test"),
        ("null", "'null'"),
        ("1.0", "'1.0'"),
        ("a,b", "'a,b'"),
        ("it's", "'it\\'s'"),
        ([], "[]"),
        ([1, 0.8, 0.6], "[1,0.8,0.6]"),
        ([True, None, "a"], "[true,null,a]"),
        ({"name": "dut", "polarity": "in_focus"}, "{name:dut,polarity:in_focus}"),
        ([{"a": [1, 2]}, {"b": {"c": None}}], "[{a:[1,2]},{b:{c:null}}]"),
    ],
)
def test_to_literal(value: Any, literal: str) -> None:
    assert preset.to_literal(value) == literal


def test_to_literal_refuses_what_the_grammar_cannot_express() -> None:
    with pytest.raises(TypeError, match="cannot express"):
        preset.to_literal(object())


def test_override_args_flattens_nested_mappings_and_keeps_lists_whole() -> None:
    overrides = {"a": {"b": {"c": 1}, "d": [True, None]}, "e": "x", "f": {"g": {"name": "n"}}, "h": {}}
    assert preset.override_args(overrides) == [
        "-S", "a.b.c=1", "-S", "a.d=[true,null]", "-S", "e=x", "-S", "f.g.name=n",
    ]  # fmt: skip
    assert preset.override_args({}) == []


def test_dvc_reads_quoted_strings_back_as_the_same_strings(tmp_path: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    values = {"a": "null", "b": "1.0", "c": "a,b", "d": "it's", "e": "cuhk/test", "f": ["true", "x:y"]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({k: 0 for k in values}))
    apply_overrides(path, preset.override_args(values)[1::2])
    assert yaml.safe_load(path.read_text()) == values


@pytest.mark.parametrize(("preset", "release"), [("cpu", "btbnet-cpu"), ("imagenet", "btbnet-lite0")])
def test_a_cpu_preset_trains_at_one_scale_and_scores_at_its_released_model_s(tmp_path: Path, preset: str, release: str) -> None:
    """Defocus is a property of scale: synthesis and training crops share one size; evaluation
    sees photos at the scale the released model is run at (chosen on val, near the training one);
    the selection run holds the validation split out."""
    values = yaml.safe_load((REPO_ROOT / "infra" / "presets" / f"{preset}.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), values)))
    c = configure_all(path)
    sizes = {c["synthesize"].max_size, c["pretrain"].train.input.max_size, c["finetune"].train.input.max_size}
    trained_at = read_checkpoint(weights_path(release))["extra"]["max_size"]  # what the release records
    assert sizes == {trained_at} == {320}
    assert c["evaluate"].evaluate.max_size == released(release).max_size == 416
    assert read_config(weights_path(release)) == c["pretrain"].model  # the released architecture is the preset's
    if preset == "cpu":
        assert c["pretrain"].model.norm == "batch" and c["pretrain"].backbone_weights is None  # from random init
    else:
        assert c["pretrain"].backbone_weights == "imagenet" and c["synthesize"].mode == "lens"
        assert c["finetune"].train.optim.iou_weight == 1.0 and c["finetune"].train.optim.deep_supervision
    assert c["finetune"].exclude == tuple((REPO_ROOT / "data" / "splits" / "cuhk_val.txt").read_text().split())
    val = c["evaluate"].sets.test_sets[0]
    assert (val.name, val.folder, val.stems) == ("val", "cuhk/train", "data/splits/cuhk_val.txt")
    assert all(t.optional for t in c["evaluate"].sets.test_sets[1:])  # Shi's test split and DUT where present


def test_extra_overrides_follow_the_preset(capsys: pytest.CaptureFixture) -> None:
    assert preset.main(["cpu", "--dry-run", "--name", "cpu-release", "-S", "finetune.exclude=null", "-S", "model.width=0.5"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[:5] == ["dvc", "exp", "run", "-n", "cpu-release"]
    assigned = dict(arg.split("=", 1) for arg in argv[6::2])
    assert assigned["finetune.exclude"] == "null" and assigned["model.width"] == "0.5"
    with pytest.raises(SystemExit):
        preset.main(["cpu", "--dry-run", "-S", "no-equals-sign"])
