"""Stage `evaluate`: section 4.2's criteria, under both scoring protocols, on every test set.

Reads `finetune.model` (the model), `evaluate` and `baselines.metrics` (the baselines stage's
figures). For each test set there is, `metrics/headline.json` holds the paper protocol's F and
MAE (`<set>.F`, `<set>.MAE`: the first columns of `dvc exp show`, and the metrics of the DVC
invocation's parent run in MLflow), `metrics/evaluate.json` the model's figures per
protocol of `btbnet.metrics` ("paper": in-focus positives, adaptive threshold, F of the mean
P and R and the per-image mean F, MAE, max-F; "ddff": blurred positives, threshold 0.5,
per-image F averaged, MAE); the "paper" PR curve over thresholds 0…255 is a DVC plot
(`plots_dir`), and `figures_dir` gets the PR curves and an image | truth | prediction grid as
PNG, and `table1.md`: the paper's Table 1, BTBNet beside every baseline, set × protocol.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from btbnet.checkpoint import unwrap
from btbnet.pretrained import load_model
from btbnet.config import ConfigError, check_int, to_dict
from btbnet.evaluation import comparison_table, evaluate
from btbnet.metrics import PROTOCOLS, adaptive_threshold, f_measure, mae, precision_recall_at, reported_keys
from btbnet.predict import check_views, predict_maps, with_views
from btbnet.speed import SpeedConfig

from .runtime import stage
from .runtime.figures import example_grid, plot_pr_curves
from .runtime.params import Params, resolve
from .runtime.testsets import TestSets, read_test_sets
from .runtime.tracking import log_headline, logged_model_id, stage_run

NAME = "evaluate"


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` section besides its test sets (`pipeline.runtime.testsets`): max_size, the longer
    side the model sees, maps resized back (None: the scale the checkpoint was trained at, as
    `btbnet predict` and batch_predict do, or native resolution if it records none);
    examples: rows of the example grid; device: auto, cpu, cuda or cuda:N; speed: precision,
    layout and compilation of the forward pass (`btbnet.speed`; metrics are computed in fp32);
    tta: test-time views whose maps are averaged (`btbnet.predict.VIEWS`; "none": the paper's
    single forward pass); the outputs."""

    metrics: str
    headline: str
    plots_dir: str
    figures_dir: str
    max_size: int | None = None
    examples: int = 4
    device: str = "auto"
    speed: SpeedConfig = SpeedConfig()
    tta: str = "none"

    def __post_init__(self) -> None:
        check_int("max_size", self.max_size, 8, allow_none=True)
        check_views(self.tta, "tta")
        check_int("examples", self.examples, 0)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class EvaluateStage:
    model: Path
    baselines: Path  # the baselines stage's figures, for Table 1
    sets: TestSets
    evaluate: EvaluateConfig

    @property
    def outputs(self) -> tuple[Path, ...]:
        e = self.evaluate
        return resolve(e.headline), resolve(e.metrics), resolve(e.plots_dir), resolve(e.figures_dir)


def configure(params: Params) -> EvaluateStage:
    return EvaluateStage(
        model=resolve(params["finetune"]["model"]),
        baselines=resolve(params["baselines"]["metrics"]),
        sets=read_test_sets(params),
        evaluate=params.build(EvaluateConfig, NAME, drop=("data_root", "test_sets")),
    )


def predictor(model: torch.nn.Module, e: EvaluateConfig, max_size: int | None, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """image → the map the stage scores: `model` under e.tta's views, at max_size, e.speed."""
    views = with_views(model, e.tta)
    return lambda image: predict_maps(views, [image], max_size=max_size, device=device, speed=e.speed)[0]


def caption(truth: np.ndarray, focus: np.ndarray) -> str:
    """One example's per-image F (section 4.2: adaptive threshold, in-focus pixels positive)
    and MAE (eq. 9)."""
    p = focus.astype(np.float64) / 255
    return f"F {f_measure(*precision_recall_at(p, truth, adaptive_threshold(p))):.3f} · MAE {mae(p, truth):.3f}"


def write_pr_curve(path: Path, result: dict) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "precision", "recall"])
        for t, (p, r) in enumerate(zip(result["pr_precision"], result["pr_recall"])):
            writer.writerow([t, f"{p:.6f}", f"{r:.6f}"])


def run(cfg: EvaluateStage) -> None:
    e = cfg.evaluate
    device = ("cuda" if torch.cuda.is_available() else "cpu") if e.device == "auto" else e.device
    model, trained_at = load_model(str(cfg.model), map_location=device)  # the checkpoint, read once
    model = e.speed.prepare(model)
    max_size = e.max_size or trained_at  # one source of truth for the scale: the checkpoint, unless overridden
    sets = cfg.sets.present()  # fail fast, before anything is written
    baselines = json.loads(cfg.baselines.read_text())
    predict = {"BTBNet": predictor(model, e, max_size, device)}
    logged = {"model": unwrap(model).config.to_dict(), NAME: to_dict(e) | {"seen_max_size": max_size}, "sets": to_dict(cfg.sets)}
    with stage_run(NAME, logged):
        model_id = logged_model_id(cfg.model)  # the fine-tuned model in MLflow: the metrics are linked to it
        report, curves, grids = {}, {}, {}
        with stage.staged(resolve(e.plots_dir)) as plots_dir:
            plots_dir.mkdir()
            for t, folder, stems in sets:
                ev = evaluate(predict, folder, t.polarity, examples=e.examples, desc=f"evaluate {t.name}", stems=stems)
                ours = ev.results["BTBNet"]
                report[t.name] = {p: {k: ours[p][k] for k in reported_keys(p)} for p in PROTOCOLS}
                report[t.name]["images"] = ours["paper"]["images"]
                curves[t.name] = (ours["paper"]["pr_precision"], ours["paper"]["pr_recall"])
                grids[t.name] = ev.examples
                write_pr_curve(plots_dir / f"{t.name}.csv", ours["paper"])
                for p in PROTOCOLS:
                    mlflow.log_metrics({f"{t.name}/{p}/{k}": v for k, v in report[t.name][p].items()}, model_id=model_id)
        table = comparison_table({"BTBNet": report, **baselines})
        with stage.staged(resolve(e.figures_dir)) as figures_dir:
            figures_dir.mkdir()
            plot_pr_curves(curves, figures_dir / "pr_curves.png")
            for name, rows in grids.items():
                if rows:
                    example_grid(rows, [caption(truth, focus) for _, truth, focus in rows], figures_dir / f"examples_{name}.png",
                                 title=f"{name}: BTBNet examples")  # fmt: skip
            (figures_dir / "table1.md").write_text(table)
        headline = {name: {"F": r["paper"]["f_measure"], "MAE": r["paper"]["mae"]} for name, r in report.items()}
        stage.write_json(resolve(e.headline), headline)
        stage.write_json(resolve(e.metrics), report)
        log_headline({f"{name}/{key}": value for name, row in headline.items() for key, value in row.items()})
        for path in (resolve(e.headline), resolve(e.metrics)):
            mlflow.log_artifact(str(path))
        for folder in (resolve(e.plots_dir), resolve(e.figures_dir)):
            mlflow.log_artifacts(str(folder), artifact_path=folder.name)
    print(table)


if __name__ == "__main__":
    stage.main(NAME, configure, run)
