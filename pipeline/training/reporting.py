"""A training stage's MLflow records beyond its params and metrics: the loss plots (also its DVC
plots), its training pairs as an MLflow dataset, and its model, logged with its exports and,
for finetune, registered with the alias `candidate`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from btbnet.checkpoint import load_checkpoint
from btbnet.data import PairDataset, to_tensor
from btbnet.export import MissingPackage, export_model
from btbnet.io import file_sha256
from btbnet.model import FocusMap

from ..runtime import stage
from ..runtime.figures import plot_lines
from ..runtime.params import REPO_ROOT
from ..runtime.tracking import SHA_TAG, tracking_uri
from .config import StageSpec

def loss_history(run_id: str, prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """The losses rank 0 logged as `<prefix>/<term>`: term → (steps, values), by step."""
    client = mlflow.tracking.MlflowClient(tracking_uri())
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith(f"{prefix}/"))
    lines = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        lines[key.removeprefix(f"{prefix}/")] = ([m.step for m in history], [m.value for m in history])
    return lines


# One colour per loss term, in every run's picture (matplotlib's cycle, in the order of the CSVs).
TERM_COLOURS = {t: f"C{i}" for i, t in enumerate(["total", "main", "aux_0", "aux_1", "aux_2", "aux_3", "refine_0", "refine_1", "refine_2"])}


def term_order(term: str) -> tuple[bool, bool, str]:
    """total, main, then the rest by name (aux_*, refine_*): the columns of steps.csv."""
    return term != "total", term != "main", term


def write_loss_plots(run_id: str, folder: Path) -> None:
    """The stage's DVC plots, from what its MLflow run holds: `steps.csv` (step, then each
    term of eq. 6: total, main, aux_*), `epochs.csv` (epoch, the step it ended at, the same
    terms averaged over it) and `losses.png` (for viewers without the vega charts); logged to
    the run as well. Values are written with 9 significant digits: same training, same bytes."""
    steps = loss_history(run_id, "step")
    epochs = loss_history(run_id, "epoch")
    per_epoch = (max(steps["total"][0]) + 1) // max(len(epochs["total"][0]), 1)  # the last step of each epoch is logged
    with stage.staged(folder) as tmp:
        tmp.mkdir()
        for lines, name in ((steps, "steps.csv"), (epochs, "epochs.csv")):
            terms = sorted(lines, key=term_order)
            index = sorted({i for term in terms for i in lines[term][0]})
            values = {term: dict(zip(*lines[term])) for term in terms}
            head = ["step"] if name == "steps.csv" else ["epoch", "step"]
            rows = [[str(i)] + ([] if name == "steps.csv" else [str((i + 1) * per_epoch - 1)]) + [f"{values[t][i]:.9g}" if i in values[t] else "" for t in terms] for i in index]
            (tmp / name).write_text("".join(",".join(row) + "\n" for row in [head + terms, *rows]))
        ordered = {term: steps[term] for term in sorted(steps, key=term_order)}
        plot_lines(ordered, tmp / "losses.png", xlabel="step", ylabel="loss (eq. 6) per term", title="training loss",
                   colours=TERM_COLOURS, log_y=True)  # fmt: skip  (as .dvc/plots/loss.json draws them)
    mlflow.log_artifacts(str(folder), artifact_path="plots")


CANDIDATE = "candidate"  # the registry alias of the latest fine-tuned model (evaluate links its metrics)


def log_model(spec: StageSpec, checkpoint: Path, example: np.ndarray, final: dict[str, float], step: int) -> Any:
    """Log a checkpoint's model (probability maps out) with its signature and `example` (a
    training input, uint8 [H, W, 3]: a real photo patch) as input example, named
    `btbnet-<stage>`, with the run's metrics at its last logged `step` and the `final` ones
    (`final/<term>`: the last epoch's mean losses) linked to it. Extra files: the checkpoint, so
    that `btbnet predict --model models:/…` loads plain weights, never a pickle, and the
    TorchScript / ONNX exports (`exported_files`). The code it carries is `btbnet/` without
    the released weights (the model needs its own only). With `spec.registered_model`, a new
    registry version gets the alias `candidate`.

    The network is fully convolutional, so the signature takes any batch and any H × W. It is
    pickled: torch.export ("pt2", MLflow's default) fixes H × W at the example's size, since
    it cannot keep them symbolic through the streams' `round(H * scale)` resizes.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    net = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="btbnet-export-") as tmp:
        files, export_tags = exported_files(net, Path(tmp))
        code = shutil.copytree(REPO_ROOT / "btbnet", Path(tmp) / "btbnet", ignore=shutil.ignore_patterns("weights", "__pycache__"))
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),  # RGB [B, 3, H, W] in [0, 1]
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),  # in-focus probability
        )
        info = mlflow.pytorch.log_model(
            FocusMap(net).eval(),
            name=f"btbnet-{spec.name}",
            input_example=to_tensor(example)[None].numpy(),  # [1, 3, H, W] float32 in [0, 1]
            signature=signature,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pillow"],
            code_paths=[str(code)],
            extra_files=[str(checkpoint), *map(str, files)],
            registered_model_name=spec.registered_model,
            tags={SHA_TAG: file_sha256(checkpoint), "btbnet.stage": spec.name} | export_tags,
            step=step,
        )
    mlflow.log_metrics(final, model_id=info.model_id, step=step)
    if spec.registered_model and info.registered_model_version is not None:
        client = mlflow.tracking.MlflowClient(tracking_uri())
        client.set_registered_model_alias(spec.registered_model, CANDIDATE, str(info.registered_model_version))
    return info


def exported_files(model: torch.nn.Module, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """`model` as TorchScript and, where onnx and onnxruntime are installed, ONNX, for users
    outside Python (`btbnet.export`: any batch and H × W, each checked against PyTorch before
    it is written); (the files, tags with each one's max abs difference)."""
    files, tags = [], {}
    for fmt, name in (("torchscript", "btbnet.torchscript"), ("onnx", "btbnet.onnx")):
        try:
            report = export_model(model, folder / name, fmt)
        except MissingPackage:
            continue
        files.append(report.path)
        tags[f"btbnet.export.{fmt}.max_abs_diff"] = f"{report.max_abs_diff:.1e}"
    return files, tags


def log_data(spec: StageSpec, dataset: PairDataset, digest: str) -> None:
    """The training pairs as the run's MLflow input (context "training"): one row per pair,
    the source named as the params give it, the digest of the files' content."""
    import mlflow.data
    import pandas as pd

    rows = pd.DataFrame({"image": [i.name for i, _ in dataset.pairs], "mask": [m.name for _, m in dataset.pairs]})
    mlflow.log_input(
        mlflow.data.from_pandas(rows, source=str(spec.data), name=f"{spec.name}-data", digest=digest),
        context="training",
    )
