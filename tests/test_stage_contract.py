"""dvc.yaml's caching contract, derived from the stages themselves rather than kept by hand.

DVC reruns a stage when one of its `deps` or `params` changes, so a stage must declare
  - every project module it runs: each stage module is imported with no project module loaded
    (one interpreter for all, the project's modules dropped from `sys.modules` before each) and
    the btbnet/ and pipeline/ files it loaded are compared with its `deps` (project code imports
    at module level only, checked below, so that import loads everything the stage runs);
  - exactly the params it reads: its `configure` runs on a recording view of params.yaml and
    the keys read are compared with its `params`.
Each check is also run on a declaration with one entry removed, and must then fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from btbnet.checkpoint import save_checkpoint
from btbnet.config import BTBNetConfig, deep_merge
from btbnet.model import build_model
from pipeline.runtime.params import load_params
from tests.pipeline_helpers import REPO

STAGES = ("synthesize", "pretrain", "finetune", "baselines", "evaluate")
CODE_DIRS = ("btbnet", "pipeline")


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert sorted(stages) == sorted(STAGES)
    return stages


LOADED_BY_EACH = """
import importlib, json, pathlib, sys
root, found = pathlib.Path.cwd().resolve(), {}
def project(name):
    return name.split(".")[0] in CODE_DIRS
for stage in STAGES:
    for name in [n for n in sys.modules if project(n)]:
        del sys.modules[name]  # as if in a fresh interpreter: the stage's import loads all it needs
    importlib.import_module(f"pipeline.{stage}")
    files = {pathlib.Path(m.__file__).resolve() for n, m in list(sys.modules.items()) if project(n) and getattr(m, "__file__", None)}
    found[stage] = sorted(str(f.relative_to(root)) for f in files if f.is_relative_to(root))
print(json.dumps(found))
"""


def loaded_modules() -> dict[str, set[str]]:
    """For each stage, the repo-relative paths of the btbnet/ and pipeline/ files that
    `import pipeline.<stage>` loads, from one interpreter."""
    code = f"STAGES, CODE_DIRS = {STAGES!r}, {CODE_DIRS!r}\n{LOADED_BY_EACH}"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {stage: set(files) for stage, files in json.loads(done.stdout.splitlines()[-1]).items()}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.split("/")[0] in CODE_DIRS}


def dep_problems(loaded: set[str], declared: set[str]) -> list[str]:
    return [f"loads {m} without declaring it" for m in sorted(loaded - declared)] + [
        f"declares {m} without loading it" for m in sorted(declared - loaded)
    ]


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    return loaded_modules()


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_the_modules_the_stage_loads(stage, dvc_stages, loaded):
    assert dep_problems(loaded[stage], code_deps(dvc_stages[stage])) == []
    assert f"pipeline/{stage}.py" in loaded[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_removing_a_declared_module_is_caught(stage, dvc_stages, loaded):
    declared = code_deps(dvc_stages[stage])
    for module in sorted(declared):
        assert dep_problems(loaded[stage], declared - {module}) == [f"loads {module} without declaring it"]


def test_synthesize_does_not_load_the_network(loaded):
    """Changing the model must not regenerate the synthetic set (the lazy btbnet/__init__)."""
    assert "btbnet/model.py" not in loaded["synthesize"] and "btbnet/train.py" not in loaded["synthesize"]


def function_level_project_imports(path: Path) -> list[str]:
    """`import btbnet…` / `import pipeline…` / relative imports inside functions of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            names = []
            if isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = ["." * inner.level + (inner.module or "")]
            found += [f"{path.relative_to(REPO)}:{inner.lineno} {n}" for n in names if n.split(".")[0] in ("", *CODE_DIRS)]
    return found


def test_project_code_is_imported_at_module_level_only():
    files = [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py")) if p.name != "__init__.py"]
    assert [f for p in files for f in function_level_project_imports(p)] == []


# --- params ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[str]], dict, dict]:
    """The keys each stage's `configure` reads from (a copy of) params.yaml, its config, and
    that copy's content."""
    import importlib

    tmp = tmp_path_factory.mktemp("params")
    ckpt = save_checkpoint(build_model(BTBNetConfig(width=0.0625, scales=(1.0,), rrnet_steps=0)), tmp / "p.pt")
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), {"pretrain": {"model": str(ckpt)}})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    keys, configs = {}, {}
    for stage in STAGES:
        p = load_params(tmp / "params.yaml")
        configs[stage] = importlib.import_module(f"pipeline.{stage}").configure(p)
        keys[stage] = p.read_keys()
    return keys, configs, params


@pytest.fixture(scope="module")
def read_keys(configured) -> dict[str, set[str]]:
    return configured[0]


def param_problems(read: set[str], declared: set[str]) -> list[str]:
    def covered(key: str, by: set[str]) -> bool:
        return any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in by)

    return [f"reads {k} without declaring it" for k in sorted(read) if not covered(k, declared)] + [
        f"declares {k} without reading it" for k in sorted(declared) if not covered(k, read)
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_params_declared_are_exactly_the_params_read(stage, dvc_stages, read_keys):
    assert param_problems(read_keys[stage], set(dvc_stages[stage]["params"])) == []
    assert set(dvc_stages[stage]["params"]) == read_keys[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_removing_a_declared_param_is_caught(stage, dvc_stages, read_keys):
    declared = set(dvc_stages[stage]["params"])
    for key in sorted(declared):
        assert param_problems(read_keys[stage], declared - {key}) == [f"reads {key} without declaring it"]


def test_the_architecture_reruns_model_stages_only(read_keys):
    """`scales` / `rrnet_steps` (the `-S` of the README) reach pretrain and nothing else reads
    them: finetune and evaluate take the architecture from the checkpoint."""
    for key in ("scales", "rrnet_steps", "model"):
        assert [s for s in STAGES if key in read_keys[s]] == ["pretrain"], key


# --- outputs ---------------------------------------------------------------------------------


def declared_outputs(stage: dict, params: dict) -> set[Path]:
    """A dvc.yaml stage's outs, metrics and plots, `${a.b}` filled in from params, absolute."""
    def fill(entry: str | dict) -> Path:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        if name.startswith("${"):
            section, key = name[2:-1].split(".")
            name = params[section][key]
        return REPO / name

    return {fill(e) for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])}


@pytest.mark.parametrize("stage", STAGES)
def test_outputs_a_stage_clears_are_exactly_its_declared_outs(stage, dvc_stages, configured):
    """`stage.main` deletes `config.outputs` before running: they must be all of dvc.yaml's outs,
    metrics and plots of the stage (a failed run keeps none of the previous run's) and no more."""
    _, configs, params = configured
    assert set(configs[stage].outputs) == declared_outputs(dvc_stages[stage], params)
