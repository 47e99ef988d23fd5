"""Stage `baselines`: the classical and trivial detectors of the paper's Table 1, scored with
the same evaluator and protocols as BTBNet on every test set (`btbnet.baselines`).

Reads `baselines` and the test sets (`evaluate.data_root`, `evaluate.test_sets`); writes
`baselines.metrics`: {method: {test set: {protocol: figures}}}, which `evaluate` puts beside
the model in Table 1. It does not depend on the model, so retraining never reruns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow

from btbnet.baselines import BASELINES
from btbnet.config import ConfigError, to_dict
from btbnet.evaluation import comparison_table, evaluate
from btbnet.metrics import PROTOCOLS, reported_keys

from .runtime import stage
from .runtime.params import Params, resolve
from .runtime.testsets import TestSets, read_test_sets
from .runtime.tracking import stage_run

NAME = "baselines"


@dataclass(frozen=True)
class BaselinesConfig:
    """methods: names in `btbnet.baselines.BASELINES`; metrics: the figures' JSON file."""

    methods: tuple[str, ...]
    metrics: str

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods", "must list at least one method")
        for i, method in enumerate(self.methods):
            if method not in BASELINES:
                raise ConfigError(f"methods[{i}]", f"{method!r} is not one of {sorted(BASELINES)}")


@dataclass(frozen=True)
class BaselinesStage:
    baselines: BaselinesConfig
    sets: TestSets

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (resolve(self.baselines.metrics),)


def configure(params: Params) -> BaselinesStage:
    return BaselinesStage(params.build(BaselinesConfig, NAME), read_test_sets(params))


def run(cfg: BaselinesStage) -> None:
    b = cfg.baselines
    sets = cfg.sets.present()
    predictors = {method: BASELINES[method] for method in b.methods}
    report: dict[str, dict] = {method: {} for method in b.methods}
    with stage_run(NAME, {NAME: to_dict(b), "sets": to_dict(cfg.sets)}):
        for t, folder, stems in sets:
            ev = evaluate(predictors, folder, t.polarity, desc=f"baselines {t.name}", stems=stems)
            for method, by_protocol in ev.results.items():
                report[method][t.name] = {p: {k: by_protocol[p][k] for k in reported_keys(p)} for p in PROTOCOLS}
                for p in PROTOCOLS:
                    mlflow.log_metrics({f"{method}/{t.name}/{p}/{k}": v for k, v in report[method][t.name][p].items()})
        stage.write_json(resolve(b.metrics), report)
        mlflow.log_artifact(str(resolve(b.metrics)))
        table = comparison_table(report)
        mlflow.log_text(table, "table1_baselines.md")
    print(table)


if __name__ == "__main__":
    stage.main(NAME, configure, run)
