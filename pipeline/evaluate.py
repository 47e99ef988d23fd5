"""Stage `evaluate`: section 4.2's criteria, under both scoring protocols, on every test set.

Reads `finetune.model` (the model) and `evaluate`. For each test set, `metrics/evaluate.json`
holds per protocol of `btbnet.metrics` ("paper": in-focus positives, adaptive threshold, F of
the mean P and R and the per-image mean F, MAE, max-F; "ddff": blurred positives, threshold
0.5, per-image F averaged, MAE) the model's figures and those of the all-in-focus map
(`baseline`); the "paper" PR curve over thresholds 0…255 is a DVC plot (`plots_dir`), and
`figures_dir` gets PNGs: the PR curves and an image | truth | prediction grid.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from PIL import Image

from btbnet.baselines import all_in_focus
from btbnet.checkpoint import load_checkpoint
from btbnet.config import check_int, to_dict
from btbnet.data import find_pairs
from btbnet.evaluation import TestSet, evaluate
from btbnet.metrics import PROTOCOLS, reported_keys
from btbnet.predict import predict_map

from . import stage
from .figures import image_grid, plot_pr_curves
from .params import Params, ParamsError, resolve
from .tracking import stage_run

NAME = "evaluate"


@dataclass(frozen=True)
class EvaluateConfig:
    """data_root: the folder holding every test set (the stage's DVC dependency); max_size:
    longer side the model sees, maps resized back (None: native); examples: rows of the
    example grid; device: auto, cpu, cuda or cuda:N."""

    data_root: str
    test_sets: tuple[TestSet, ...]
    metrics: str
    plots_dir: str
    figures_dir: str
    max_size: int | None = None
    examples: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.test_sets:
            raise ParamsError("test_sets: must list at least one test set")
        names = [t.name for t in self.test_sets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ParamsError(f"test_sets[{i}].name: {name!r} is already used by test_sets[{names.index(name)}]")
        check_int("max_size", self.max_size, 8, allow_none=True)
        check_int("examples", self.examples, 0)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ParamsError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class EvaluateStage:
    model: Path
    evaluate: EvaluateConfig


def configure(params: Params) -> EvaluateStage:
    return EvaluateStage(model=resolve(params["finetune"]["model"]), evaluate=params.build(EvaluateConfig, NAME))


def write_pr_curve(path: Path, result: dict) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "precision", "recall"])
        for t, (p, r) in enumerate(zip(result["pr_precision"], result["pr_recall"])):
            writer.writerow([t, f"{p:.6f}", f"{r:.6f}"])


def run(cfg: EvaluateStage) -> None:
    e = cfg.evaluate
    device = ("cuda" if torch.cuda.is_available() else "cpu") if e.device == "auto" else e.device
    model = load_checkpoint(cfg.model, map_location=device)
    root = resolve(e.data_root)
    for t in e.test_sets:  # fail fast, before anything is written
        find_pairs(root / t.folder)
    predictors = {
        "model": lambda image: predict_map(model, image, max_size=e.max_size, device=device),
        "baseline": all_in_focus,
    }
    with stage_run(NAME, {"model": model.config.to_dict(), NAME: to_dict(e)}):
        report, curves, grids = {}, {}, {}
        with stage.staged(resolve(e.plots_dir)) as plots_dir:
            plots_dir.mkdir()
            for t in e.test_sets:
                ev = evaluate(predictors, root / t.folder, t.polarity, examples=e.examples, desc=f"evaluate {t.name}")
                ours, baseline = ev.results["model"], ev.results["baseline"]
                report[t.name] = {p: {k: ours[p][k] for k in reported_keys(p)} for p in PROTOCOLS}
                report[t.name]["images"] = ours["paper"]["images"]
                report[t.name]["baseline"] = {p: {k: baseline[p][k] for k in ("f_measure", "mae")} for p in PROTOCOLS}
                curves[t.name] = (ours["paper"]["pr_precision"], ours["paper"]["pr_recall"])
                grids[t.name] = ev.examples
                write_pr_curve(plots_dir / f"{t.name}.csv", ours["paper"])
                for p in PROTOCOLS:
                    mlflow.log_metrics({f"{t.name}/{p}/{k}": v for k, v in report[t.name][p].items()})
                    mlflow.log_metrics({f"{t.name}/{p}/baseline_{k}": v for k, v in report[t.name]["baseline"][p].items()})
        with stage.staged(resolve(e.figures_dir)) as figures_dir:
            figures_dir.mkdir()
            plot_pr_curves(curves, figures_dir / "pr_curves.png")
            for name, rows in grids.items():
                if rows:
                    Image.fromarray(image_grid(rows)).save(figures_dir / f"examples_{name}.png")
        stage.write_json(resolve(e.metrics), report)
        mlflow.log_artifact(str(resolve(e.metrics)))
        for folder in (resolve(e.plots_dir), resolve(e.figures_dir)):
            mlflow.log_artifacts(str(folder), artifact_path=folder.name)
    for name, r in report.items():
        paper, ddff, base = r["paper"], r["ddff"], r["baseline"]["paper"]
        print(
            f"evaluate {name}: paper F {paper['f_measure']:.3f} (per image {paper['f_measure_per_image']:.3f})  "
            f"MAE {paper['mae']:.3f}  max-F {paper['f_max']:.3f}  ddff F {ddff['f_measure']:.3f}  "
            f"(all-in-focus: F {base['f_measure']:.3f}, MAE {base['mae']:.3f})"
        )


if __name__ == "__main__":
    stage.main(NAME, configure, run)
