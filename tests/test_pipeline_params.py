"""params.yaml → each stage's config (`configure`), and the errors of a bad entry.

Every invalid entry must raise a ConfigError whose message starts with the dotted key, raised by
the stage that reads it (and by no other), and a stage run on such a file must end with
`<stage>: error: <key>: …` and exit code 2.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import pipeline.baselines
import pipeline.evaluate
import pipeline.finetune
import pipeline.pretrain
import pipeline.synthesize
from btbnet.checkpoint import save_checkpoint
from btbnet.config import BTBNetConfig, ConfigError, deep_merge
from btbnet.model import build_model
from btbnet.predict import predict_map, with_views
from pipeline.runtime.params import ParamsError, load_params, resolve
from tests.pipeline_helpers import REPO, TINY_PARAMS, copy_repo, describe, run_stage

MODULES = {
    "synthesize": pipeline.synthesize,
    "pretrain": pipeline.pretrain,
    "finetune": pipeline.finetune,
    "baselines": pipeline.baselines,
    "evaluate": pipeline.evaluate,
}
PRETRAINED = BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.5), rrnet_steps=1)


@pytest.fixture(scope="module")
def real_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint for finetune's `pretrain.model`: finetune takes the architecture from it."""
    return save_checkpoint(build_model(PRETRAINED), tmp_path_factory.mktemp("ckpt") / "pretrain.pt")


def write(tmp_path: Path, params: dict[str, Any], pretrained: Path) -> Path:
    params = deep_merge(params, {"pretrain": {"model": str(pretrained)}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def configure(stage: str, path: Path) -> Any:
    return MODULES[stage].configure(load_params(path))


# --- the real params.yaml ------------------------------------------------------------------


def test_real_params_configure_every_stage(tmp_path, real_params, pretrained):
    path = write(tmp_path, real_params, pretrained)
    s = configure("synthesize", path)
    assert s.sources == (".",) and s.max_size is None
    pre = configure("pretrain", path)
    assert pre.model == BTBNetConfig(variant="paper", width=0.0625, scales=(1.0, 0.8, 0.6), rrnet_steps=3)
    assert pre.polarity == "in_focus" and pre.data == REPO / "data" / "synthetic"
    assert pre.train.optim.lr_new == 0.05 and type(pre.train.optim.lr_new) is float
    assert (pre.train.loop.batch_size, pre.train.ray.num_workers, pre.train.input.image_size) == (8, 2, 48)
    fine = configure("finetune", path)
    assert fine.model == PRETRAINED  # read from the checkpoint, not from params.yaml
    assert fine.train == pre.train  # no per-stage overrides in the defaults
    assert fine.init_checkpoint == pretrained and fine.polarity == "blurred"
    e = configure("evaluate", path)
    assert [t.name for t in e.sets.test_sets] == ["embedded"] and e.evaluate.device == "auto"
    b = configure("baselines", path)
    assert b.sets == e.sets and "lbp" in b.baselines.methods


def test_evaluate_scores_the_maps_of_the_views_it_is_set_to(tmp_path, real_params, pretrained):
    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0,), rrnet_steps=1))
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    maps = {}
    for views in ("none", "dihedral"):
        path = write(tmp_path, deep_merge(real_params, {"evaluate": {"tta": views, "max_size": 16}}), pretrained)
        e = configure("evaluate", path).evaluate
        assert e.tta == views
        maps[views] = pipeline.evaluate.predictor(model, e, e.max_size, "cpu")(image)
        np.testing.assert_array_equal(maps[views], predict_map(with_views(model, views), image, max_size=16))
    assert real_params["evaluate"]["tta"] == "none"  # the paper's single pass by default


def test_real_params_point_at_the_embedded_data(real_params):
    """The defaults run on a fresh clone: every input folder exists in the repo."""
    s = real_params["synthesize"]
    for folder in s["sources"]:
        assert (resolve(s["source_root"]) / folder).is_dir()
    data = resolve(real_params["finetune"]["data"])
    assert (data / "image").is_dir() and (data / "gt").is_dir()
    for t in real_params["evaluate"]["test_sets"]:
        assert (resolve(real_params["evaluate"]["data_root"]) / t["folder"] / "image").is_dir()


def test_a_stage_section_overrides_the_shared_recipe_block_by_block(tmp_path, real_params, pretrained):
    updates = {"finetune": {"optim": {"lr_new": 0.5}, "loop": {"epochs": 7}}, "train": {"optim": {"momentum": 0.5}}}
    path = write(tmp_path, deep_merge(real_params, updates), pretrained)
    pre, fine = configure("pretrain", path), configure("finetune", path)
    assert (pre.train.optim.lr_new, pre.train.optim.momentum, pre.train.loop.epochs) == (0.05, 0.5, 3)
    assert (fine.train.optim.lr_new, fine.train.optim.momentum, fine.train.loop.epochs) == (0.5, 0.5, 7)
    assert fine.train.optim.lr_backbone == pre.train.optim.lr_backbone  # keys not overridden stay shared


def test_numbers_are_coerced_to_the_declared_type(tmp_path, real_params, pretrained):
    path = write(tmp_path, deep_merge(real_params, {"scales": [1, 0.5], "train": {"optim": {"lr_new": 1}}}), pretrained)
    pre = configure("pretrain", path)
    assert pre.model.scales == (1.0, 0.5) and all(type(s) is float for s in pre.model.scales)
    assert pre.train.optim.lr_new == 1.0 and type(pre.train.optim.lr_new) is float


# --- invalid entries: ConfigError starting with the dotted key, from the stage that reads it --

TEST_SET = {"name": "a", "folder": "test", "polarity": "blurred"}
INVALID = {
    "empty scales": ({"scales": []}, "pretrain", "scales: "),
    "zero scale": ({"scales": [1, 0]}, "pretrain", "scales: "),
    "scale above one": ({"scales": [1.5]}, "pretrain", "scales: "),
    "scales not a list": ({"scales": 1}, "pretrain", "scales: "),
    "scale not a number": ({"scales": [1, "x"]}, "pretrain", "scales[1]: "),
    "scales under model": ({"model": {"scales": [1]}}, "pretrain", "model.scales: set scales at the top level"),
    "negative rrnet_steps": ({"rrnet_steps": -1}, "pretrain", "rrnet_steps: "),
    "fractional rrnet_steps": ({"rrnet_steps": 1.5}, "pretrain", "rrnet_steps: "),
    "unknown stage key": ({"pretrain": {"learning_rate": 0.1}}, "pretrain", "pretrain.learning_rate: "),
    "unknown recipe block": ({"train": {"optimiser": {}}}, "finetune", "train.optimiser: "),
    "unknown optim key": ({"train": {"optim": {"lr": 0.1}}}, "pretrain", "train.optim.lr: "),
    "unknown model key": ({"model": {"depth": 16}}, "pretrain", "model.depth: "),
    "string epochs": ({"train": {"loop": {"epochs": "three"}}}, "pretrain", "train.loop.epochs: "),
    "string bool": ({"finetune": {"input": {"augment": "yes"}}}, "finetune", "finetune.input.augment: "),
    "bool as int": ({"train": {"loop": {"seed": True}}}, "finetune", "train.loop.seed: "),
    "zero width": ({"model": {"width": 0}}, "pretrain", "model.width: "),
    "bad variant": ({"model": {"variant": "huge"}}, "pretrain", "model.variant: "),
    "indivisible batch": ({"train": {"loop": {"batch_size": 3}, "ray": {"num_workers": 2}}}, "pretrain", "pretrain.loop.batch_size: "),
    "native size, big batch": ({"train": {"input": {"image_size": None}}}, "finetune", "finetune.input.image_size: "),
    "zero epochs": ({"finetune": {"loop": {"epochs": 0}}}, "finetune", "finetune.loop.epochs: "),
    "zero max steps": ({"train": {"loop": {"max_steps_per_epoch": 0}}}, "pretrain", "train.loop.max_steps_per_epoch: "),
    "negative loader workers": ({"train": {"ray": {"loader_workers": -1}}}, "finetune", "train.ray.loader_workers: "),
    "zero cpus": ({"train": {"ray": {"cpus_per_worker": 0}}}, "pretrain", "train.ray.cpus_per_worker: "),
    "negative lr": ({"train": {"optim": {"lr_new": -1}}}, "pretrain", "train.optim.lr_new: "),
    "bad loss reduction": ({"finetune": {"optim": {"loss_reduction": "max"}}}, "finetune", "finetune.optim.loss_reduction: "),
    "bad finetune polarity": ({"finetune": {"polarity": "white"}}, "finetune", "finetune.polarity: "),
    "bad test-set polarity": (
        {"evaluate": {"test_sets": [{"name": "a", "folder": "test", "polarity": "sideways"}]}},
        "evaluate",
        "evaluate.test_sets[0].polarity: ",
    ),
    "duplicate test-set names": ({"evaluate": {"test_sets": [TEST_SET, TEST_SET]}}, "evaluate", "evaluate.test_sets[1].name: "),
    "no test sets": ({"evaluate": {"test_sets": []}}, "evaluate", "evaluate.test_sets: "),
    "tiny evaluate max_size": ({"evaluate": {"max_size": 0}}, "evaluate", "evaluate.max_size: "),
    "bad device": ({"evaluate": {"device": "tpu"}}, "evaluate", "evaluate.device: must be auto, cpu, cuda or cuda:N"),
    "bad tta": ({"evaluate": {"tta": "rot90"}}, "evaluate", "evaluate.tta: must be one of ['dihedral', 'flip', 'none'], got 'rot90'"),
    "no sources": ({"synthesize": {"sources": []}}, "synthesize", "synthesize.sources: "),
    "empty path": ({"finetune": {"model": ""}}, "finetune", "finetune.model: "),
    "section not a mapping": ({"evaluate": [1, 2]}, "evaluate", "evaluate: "),
}


@pytest.mark.parametrize(("updates", "stage", "key"), INVALID.values(), ids=INVALID.keys())
def test_invalid_entry_is_named_by_the_stage_that_reads_it(tmp_path, real_params, pretrained, updates, stage, key):
    params = copy.deepcopy(real_params)
    for section, value in updates.items():  # replace, not merge, where the entry is not a mapping
        params[section] = deep_merge(params[section], value) if isinstance(value, dict) and isinstance(params.get(section), dict) else value
    path = write(tmp_path, params, pretrained)
    with pytest.raises(ConfigError) as info:
        configure(stage, path)
    assert str(info.value).startswith(key) and info.value.key == key.split(": ")[0]


def test_a_bad_section_stops_only_the_stages_that_read_it(tmp_path, real_params, pretrained):
    path = write(tmp_path, deep_merge(real_params, {"evaluate": {"device": "tpu"}, "synthesize": {"sources": []}}), pretrained)
    assert configure("pretrain", path).name == "pretrain"
    assert configure("finetune", path).name == "finetune"
    for stage in ("evaluate", "synthesize"):
        with pytest.raises(ConfigError):
            configure(stage, path)


def test_missing_required_key_is_named(tmp_path, real_params, pretrained):
    params = copy.deepcopy(real_params)
    del params["evaluate"]["metrics"]
    with pytest.raises(ConfigError, match=r"^evaluate\.metrics: missing"):
        configure("evaluate", write(tmp_path, params, pretrained))


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
