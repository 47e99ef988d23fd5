"""The evaluate stage, run in-process on a copy of the repo: the scale the model sees comes from
the checkpoint it scores (the training `input.max_size` it records), unless `evaluate.max_size`
overrides it, as in `btbnet predict` and batch_predict (one source of truth for the scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from btbnet.checkpoint import save_checkpoint
from btbnet.config import BTBNetConfig
from btbnet.model import build_model
from tests.pipeline_helpers import TINY_PARAMS, copy_repo, execute_stage, write_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy whose fine-tuned model says it was trained at 24 px, baselines already scored."""
    repo = copy_repo(tmp_path_factory.mktemp("evaluate") / "repo", TINY_PARAMS)
    save_checkpoint(build_model(BTBNetConfig(width=0.0625, scales=(1.0,), rrnet_steps=0)), repo / "models/finetune.pt", max_size=24)
    return repo


def seen_max_size(repo: Path, monkeypatch, capsys, override: int | None) -> tuple[str, dict]:
    write_params(repo, {"evaluate": {"max_size": override, "tta": "none"}, "baselines": {"methods": ["all_in_focus"]}})
    store = repo.parent / "inprocess.db"
    for stage in ("baselines", "evaluate"):
        status, stderr = execute_stage(repo, stage, monkeypatch, capsys)
        assert status == 0, stderr
    client = MlflowClient(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name("btbnet").experiment_id], "tags.`btbnet.stage` = 'evaluate'",
                               order_by=["start_time DESC"], max_results=1)  # fmt: skip
    return run.data.params["evaluate.seen_max_size"], json.loads((repo / "metrics/evaluate.json").read_text())


def test_evaluate_sees_the_checkpoints_scale_unless_overridden(repo, monkeypatch, capsys):
    own, at_own = seen_max_size(repo, monkeypatch, capsys, None)
    assert own == "24"  # the checkpoint's training scale, not the photographs' native size
    other, at_other = seen_max_size(repo, monkeypatch, capsys, 40)
    assert other == "40"
    assert at_own["embedded"]["paper"]["mae"] != at_other["embedded"]["paper"]["mae"]  # another scale, other maps
