"""Stage `evaluate`: the paper's protocol (section 4.2) on every test set.

For each test set: F-measure, precision and recall at the adaptive threshold, MAE and max-F
(`evaluate.metrics`), the PR curve over thresholds 0…255 as a DVC plot (`evaluate.plots_dir`),
and PNG pictures (`evaluate.figures_dir`): the PR curves and an image | truth | prediction grid.
A trivial predictor (every pixel in focus) is scored beside the model as `baseline`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import btbnet
from btbnet.data import find_pairs, load_pair
from btbnet.metrics import SetMetrics
from btbnet.predict import predict_map

from . import stage
from .figures import image_grid, plot_pr_curves
from .params import EvaluateParams, TestSet, as_dict, load_params, resolve
from .tracking import stage_run

REPORTED = ("f_measure", "precision", "recall", "mae", "f_max")


def evaluate_set(model: btbnet.MultiStreamBTBNet, root: Path, test_set: TestSet, e: EvaluateParams, device: str):
    """Metrics of the model and of the all-in-focus baseline, plus example rows for the grid."""
    model_metrics, baseline = SetMetrics(), SetMetrics()
    examples = []
    pairs = find_pairs(root / test_set.folder)
    for image_path, mask_path in tqdm(pairs, desc=f"evaluate {test_set.name}", unit="image"):
        image, mask = load_pair(image_path, mask_path, test_set.polarity)
        focus = predict_map(model, image, max_size=e.max_size, device=device)  # uint8, 255 = in focus
        model_metrics.add(focus.astype(np.float64) / 255.0, mask)
        baseline.add(np.ones(mask.shape), mask)
        if len(examples) < e.examples:
            examples.append([image, mask, focus])
    return model_metrics.result(), baseline.result(), examples


def write_pr_curve(path: Path, result: dict) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "precision", "recall"])
        for t, (p, r) in enumerate(zip(result["pr_precision"], result["pr_recall"])):
            writer.writerow([t, f"{p:.6f}", f"{r:.6f}"])


def run() -> None:
    params = load_params()
    e = params.evaluate
    device = ("cuda" if torch.cuda.is_available() else "cpu") if e.device == "auto" else e.device
    model = btbnet.load_checkpoint(resolve(params.finetune.model), map_location=device)
    root = resolve(e.data_root)
    for t in e.test_sets:  # fail fast, before anything is written
        find_pairs(root / t.folder)
    logged = {"model": model.config.to_dict(), "evaluate": as_dict(e)}
    with stage_run("evaluate", logged):
        report, curves, grids = {}, {}, {}
        with stage.staged(resolve(e.plots_dir)) as plots_dir:
            plots_dir.mkdir()
            for t in e.test_sets:
                result, baseline, examples = evaluate_set(model, root, t, e, device)
                report[t.name] = {k: result[k] for k in REPORTED} | {
                    "images": result["images"],
                    "baseline": {k: baseline[k] for k in ("f_measure", "mae")},
                }
                curves[t.name] = (result["pr_precision"], result["pr_recall"])
                grids[t.name] = examples
                write_pr_curve(plots_dir / f"{t.name}.csv", result)
                mlflow.log_metrics({f"{t.name}/{k}": result[k] for k in REPORTED})
                mlflow.log_metrics({f"{t.name}/baseline_{k}": baseline[k] for k in ("f_measure", "mae")})
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
        print(
            f"evaluate {name}: F {r['f_measure']:.3f}  MAE {r['mae']:.3f}  max-F {r['f_max']:.3f}  "
            f"(all-in-focus baseline: F {r['baseline']['f_measure']:.3f}, MAE {r['baseline']['mae']:.3f})"
        )


if __name__ == "__main__":
    stage.main("evaluate", run)
