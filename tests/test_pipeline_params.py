"""params.yaml → typed params (pipeline/params.py), its errors, and dvc.yaml's caching contract.

Every invalid entry must raise `ParamsError` whose message starts with the dotted key, and a
stage run on such a file must end with `<stage>: error: <key>: …` and exit code 2. dvc.yaml
must declare for each stage exactly the params it reads, so DVC reruns only what changed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from btbnet import BTBNetConfig
from pipeline.params import (
    EvaluateParams,
    ModelParams,
    Params,
    ParamsError,
    SynthesizeParams,
    TrainParams,
    load_params,
    resolve,
)
from pipeline.params import TestSet as EvaluateTestSet  # a `Test…` name would be collected by pytest
from tests.pipeline_helpers import REPO, TINY_PARAMS, copy_repo, deep_merge, describe, run_stage

STAGES = ("synthesize", "pretrain", "finetune", "evaluate")
TOP_LEVEL_MODEL_KEYS = ("scales", "rrnet_steps")


@pytest.fixture(scope="module")
def real_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- the real params.yaml ------------------------------------------------------------------


def test_real_params_load_with_the_declared_types():
    p = load_params()
    assert isinstance(p, Params)
    assert p.scales and all(type(s) is float and s > 0 for s in p.scales)
    assert type(p.rrnet_steps) is int and p.rrnet_steps >= 0
    assert isinstance(p.model, ModelParams) and type(p.model.width) is float
    assert isinstance(p.synthesize, SynthesizeParams) and all(isinstance(s, str) for s in p.synthesize.sources)
    for t in (p.pretrain, p.finetune):
        assert isinstance(t, TrainParams)
        assert all(type(v) is int for v in (t.epochs, t.batch_size, t.num_workers, t.seed))
        assert type(t.augment) is bool and type(t.lr_backbone) is float and type(t.cpus_per_worker) is float
        assert t.batch_size % t.num_workers == 0
    assert isinstance(p.evaluate, EvaluateParams)
    assert p.evaluate.test_sets and all(isinstance(t, EvaluateTestSet) for t in p.evaluate.test_sets)

    config = p.model_config()
    assert isinstance(config, BTBNetConfig)
    assert config.scales == tuple(p.scales) and config.rrnet_steps == p.rrnet_steps
    assert config.width == p.model.width and config.variant == p.model.variant


def test_real_params_point_at_the_embedded_data():
    """The defaults run on a fresh clone: every input folder exists in the repo."""
    p = load_params()
    for folder in p.synthesize.sources:
        assert (resolve(p.synthesize.source_root) / folder).is_dir()
    assert (resolve(p.finetune.data) / "image").is_dir() and (resolve(p.finetune.data) / "gt").is_dir()
    for t in p.evaluate.test_sets:
        assert (resolve(p.evaluate.data_root) / t.folder / "image").is_dir()
    assert resolve(p.pretrain.model) == REPO / p.pretrain.model


def test_numbers_are_coerced_to_the_declared_type(tmp_path, real_params):
    path = write(tmp_path, deep_merge(real_params, {"scales": [1, 0.5], "pretrain": {"lr_new": 1}}))
    p = load_params(path)
    assert p.scales == [1.0, 0.5] and all(type(s) is float for s in p.scales)
    assert p.pretrain.lr_new == 1.0 and type(p.pretrain.lr_new) is float


# --- invalid entries: ParamsError starting with the dotted key ------------------------------

TEST_SETS = [{"name": "a", "folder": "test", "polarity": "blurred"}]
INVALID = {
    "empty scales": ({"scales": []}, "scales: "),
    "zero scale": ({"scales": [1, 0]}, "scales: "),
    "negative scale": ({"scales": [1, -0.5]}, "scales: "),
    "scales not a list": ({"scales": 1}, "scales: "),
    "negative rrnet_steps": ({"rrnet_steps": -1}, "rrnet_steps: "),
    "fractional rrnet_steps": ({"rrnet_steps": 1.5}, "rrnet_steps: "),
    "unknown key": ({"pretrain": {"learning_rate": 0.1}}, "pretrain.learning_rate: "),
    "unknown model key": ({"model": {"depth": 16}}, "model.depth: "),
    "string epochs": ({"pretrain": {"epochs": "three"}}, "pretrain.epochs: "),
    "string bool": ({"finetune": {"augment": "yes"}}, "finetune.augment: "),
    "bool as int": ({"finetune": {"seed": True}}, "finetune.seed: "),
    "zero width": ({"model": {"width": 0}}, "model.width: "),
    "bad variant": ({"model": {"variant": "huge"}}, "model.variant: "),
    "indivisible batch": ({"pretrain": {"batch_size": 3, "num_workers": 2, "image_size": 16}}, "pretrain.batch_size: "),
    "zero epochs": ({"finetune": {"epochs": 0}}, "finetune.epochs: "),
    "zero max steps": ({"pretrain": {"max_steps_per_epoch": 0}}, "pretrain.max_steps_per_epoch: "),
    "negative loader workers": ({"finetune": {"loader_workers": -1}}, "finetune.loader_workers: "),
    "zero cpus": ({"pretrain": {"cpus_per_worker": 0}}, "pretrain.cpus_per_worker: "),
    "bad finetune polarity": ({"finetune": {"polarity": "white"}}, "finetune.polarity: "),
    "bad test-set polarity": (
        {"evaluate": {"test_sets": [{"name": "a", "folder": "test", "polarity": "sideways"}]}},
        "evaluate.test_sets[0].polarity: ",
    ),
    "no test sets": ({"evaluate": {"test_sets": []}}, "evaluate.test_sets: "),
    "tiny evaluate max_size": ({"evaluate": {"max_size": 0}}, "evaluate.max_size: "),
    "no sources": ({"synthesize": {"sources": []}}, "synthesize.sources: "),
    "empty path": ({"finetune": {"model": ""}}, "finetune.model: "),
    "section not a mapping": ({"evaluate": [1, 2]}, "evaluate: "),
}


@pytest.mark.parametrize(("updates", "key"), INVALID.values(), ids=INVALID.keys())
def test_invalid_entry_raises_params_error_naming_the_key(tmp_path, real_params, updates, key):
    path = write(tmp_path, deep_merge(real_params, updates))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(key)


def test_duplicate_test_set_names_are_named(tmp_path, real_params):
    test_sets = TEST_SETS + [{"name": "a", "folder": "other", "polarity": "blurred"}]
    path = write(tmp_path, deep_merge(real_params, {"evaluate": {"test_sets": test_sets}}))
    with pytest.raises(ParamsError, match=r"^evaluate\.test_sets\[1\]\.name: 'a' is already used by test_sets\[0\]"):
        load_params(path)


def test_bad_evaluate_device_is_named(tmp_path, real_params):
    path = write(tmp_path, deep_merge(real_params, {"evaluate": {"device": "tpu"}}))
    with pytest.raises(ParamsError, match=r"^evaluate\.device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        load_params(path)


def test_missing_required_key_is_named(tmp_path, real_params):
    params = copy.deepcopy(real_params)
    del params["evaluate"]["metrics"]
    with pytest.raises(ParamsError, match=r"^evaluate\.metrics: missing"):
        load_params(write(tmp_path, params))


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ParamsError, match="params file not found") as info:
        load_params(missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("scales: [1, 0.8\n")
    with pytest.raises(ParamsError, match="not valid YAML") as info:
        load_params(path)
    assert str(info.value).startswith(str(path))


def test_stage_cli_reports_invalid_params_and_exits_2(tmp_path):
    """The stage reads <repo>/params.yaml, so it runs in a copy of the repo with empty scales."""
    repo = copy_repo(tmp_path / "repo", deep_merge(TINY_PARAMS, {"scales": []}))
    done = run_stage(repo, "pretrain", timeout=300)
    assert done.returncode == 2, describe(done)
    assert "pretrain: error: scales: must list at least one scale" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (repo / "models" / "pretrain.pt").exists()


# --- dvc.yaml: each stage declares the params it reads --------------------------------------


@pytest.fixture(scope="module")
def declared() -> dict[str, list[str]]:
    """Stage name → the params keys it declares in dvc.yaml (all from params.yaml)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert sorted(stages) == sorted(STAGES)
    out = {}
    for name, stage in stages.items():
        keys = stage.get("params", [])
        assert all(isinstance(k, str) for k in keys), f"{name}: params from another file than params.yaml"
        out[name] = keys
    return out


def covers(keys: list[str], key: str) -> bool:
    """Whether declaring `keys` makes DVC track `key` (a key or one of its parents is declared)."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def test_every_stage_runs_its_module_and_declares_its_own_section(declared):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in STAGES:
        assert stages[name]["cmd"] == f"python -m pipeline.{name}"
        assert f"pipeline/{name}.py" in stages[name]["deps"]
        assert name in declared[name]


def test_evaluate_depends_on_the_code_that_reads_and_scores_the_test_sets():
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"]
    for module in ("btbnet/data.py", "btbnet/metrics.py", "btbnet/predict.py"):
        assert module in deps


def test_synthesize_ignores_the_architecture(declared):
    """Changing scales, rrnet_steps or model must not regenerate the synthetic set."""
    for key in (*TOP_LEVEL_MODEL_KEYS, "model", "model.width", "model.variant"):
        assert not covers(declared["synthesize"], key), key
    assert all(k == "synthesize" or k.startswith("synthesize.") for k in declared["synthesize"])


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "evaluate"])
def test_model_stages_declare_scales_and_rrnet_steps_directly(declared, stage):
    for key in TOP_LEVEL_MODEL_KEYS:
        assert key in declared[stage]


def test_pretrain_declares_the_model_section(declared):
    assert "model" in declared["pretrain"]


def test_evaluate_params_are_declared_by_evaluate_only(declared):
    evaluate_keys = ["evaluate", *(f"evaluate.{k}" for k in load_params().evaluate.__dataclass_fields__)]
    for stage in ("synthesize", "pretrain", "finetune"):
        for key in evaluate_keys:
            assert not covers(declared[stage], key), f"{stage} declares {key}"
