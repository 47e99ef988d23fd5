"""Released models, loadable by name: `load_pretrained("btbnet-cpu")`.

Each released checkpoint ships inside the package (`btbnet/weights/`), with the scale it is
run at: defocus is a property of scale, so its maps are only right when the photograph is shown
to it at that scale, `predict_map(model, image, max_size=released.max_size)` (what `btbnet
predict` does when `--model` is a name or absent). That scale was chosen on the validation
split, near the scale it was trained at (which the checkpoint records, `extra["max_size"]`). The model cards are in `docs/models.md`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, model_from, read_checkpoint
from .io import file_sha256
from .model import MultiStreamBTBNet

WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Released:
    """A released checkpoint: its file in btbnet/weights/, SHA-256, and the longer side (px) that
    photographs are shrunk to before the model sees them (the training scale is the checkpoint's
    own `extra["max_size"]`)."""

    file: str
    sha256: str
    max_size: int | None
    summary: str


MODELS: dict[str, Released] = {
    "btbnet-lite0": Released(
        file="btbnet-lite0.pt",
        sha256="d5bc9d0b2a55e315b62ff91352b91403032f0ff2ce991e05bdba4274924fc181",
        max_size=416,  # 1.3 × its training scale, 320, as btbnet-cpu (docs/real-data.md, "Inference scale")
        summary="EfficientNet-Lite0 encoder (ImageNet init) in the BTBNet structure, width 0.25, 1 stream + FNet + "
        "1 RRNet step; lens synthesis, IoU + deep supervision; trained on 2 CPU cores (infra/presets/imagenet.yaml) "
        "on BSDS500 synthesis and Shi's 604 pairs",
    ),
    "btbnet-cpu": Released(
        file="btbnet-cpu.pt",
        sha256="c3844503c7961e7749469c0a287ad2f2a8ed540b34e26ac19cdd80230d74abee",
        max_size=416,  # 1.3 × its training scale, 320: the best of 256…640 on the validation split (docs/real-data.md, "Inference scale")
        summary="fast variant, width 0.25, BatchNorm, 1 stream + FNet + 1 RRNet step; trained from random "
        "initialisation on 2 CPU cores (infra/presets/cpu.yaml) on BSDS500 synthesis and Shi's 604 pairs",
    ),
}
DEFAULT = "btbnet-lite0"  # ahead of btbnet-cpu in every column on the validation split (docs/models.md)


def released(name: str) -> Released:
    """The entry of `name`; ValueError listing the known names."""
    if name not in MODELS:
        raise ValueError(f"{name}: no released model of that name (released: {', '.join(sorted(MODELS)) or 'none'})")
    return MODELS[name]


def weights_path(name: str) -> Path:
    """The checkpoint file of `name`, its SHA-256 checked (a clear error if it is absent or altered)."""
    entry = released(name)
    path = WEIGHTS / entry.file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the weights of {name!r} are missing from this installation")
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ValueError(f"{path}: SHA-256 {digest[:12]}… is not the released {entry.sha256[:12]}… of {name!r}")
    return path


def load_pretrained(name: str = DEFAULT, map_location: str | torch.device = "cpu") -> MultiStreamBTBNet:
    """The released model `name`, in eval mode."""
    return load_checkpoint(weights_path(name), map_location=map_location)


def is_name(text: str) -> bool:
    """Whether a `--model` argument names a released model rather than a file."""
    return text in MODELS


def load_model(name_or_path: str, map_location: str | torch.device = "cpu") -> tuple[MultiStreamBTBNet, int | None]:
    """A `--model` argument's model, in eval mode, and the longer side (px) it should see.

    name_or_path: a released model's name (its checked weights, its `Released.max_size`) or a
    checkpoint file (its `extra["max_size"]`, the scale it was trained at; None if it has none). A missing or unreadable
    file raises FileNotFoundError or ValueError naming it; an unknown name is taken as a path.
    An MLflow model URI (`models:/btbnet@candidate`, `runs:/<id>/btbnet-finetune`, …: a model
    the pipeline logged) is read through MLflow, if installed (`mlflow_checkpoint`).
    """
    if is_name(name_or_path):
        path, scale = weights_path(name_or_path), released(name_or_path).max_size
        return load_checkpoint(path, map_location=map_location), scale
    if name_or_path.startswith(MLFLOW_SCHEMES):
        with tempfile.TemporaryDirectory(prefix="btbnet-mlflow-") as tmp:
            path = mlflow_checkpoint(name_or_path, Path(tmp))
            return checkpoint_and_scale(path, map_location)
    return checkpoint_and_scale(Path(name_or_path), map_location)


def checkpoint_and_scale(path: Path, map_location: str | torch.device) -> tuple[MultiStreamBTBNet, int | None]:
    """A checkpoint file's model and the scale it was trained at (`extra["max_size"]`), read once."""
    payload = read_checkpoint(path, map_location)
    return model_from(payload, path, map_location), payload["extra"].get("max_size")


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def mlflow_checkpoint(uri: str, folder: Path) -> Path:
    """Download the MLflow model at `uri` into `folder`; the btbnet checkpoint it carries.

    The pipeline logs each model with its checkpoint as an extra file (`extra_files/<name>.pt`),
    which loads as plain weights (`load_checkpoint`), never by unpickling the logged module.
    The store is MLflow's usual: $MLFLOW_TRACKING_URI, else its default. MLflow is imported
    here only: the library needs it for nothing else.
    """
    try:
        import mlflow.artifacts
    except ImportError:
        raise ValueError(f"{uri}: reading an MLflow model needs mlflow (pip install 'btbnet[pipeline]')") from None
    # MLflow's INFO lines ("Creating initial MLflow database tables…") are not the caller's
    # business; its warnings and errors still show.
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except Exception as exc:  # MlflowException and the store's own errors: one line for the user
        raise ValueError(f"{uri}: cannot read this MLflow model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        logger.setLevel(level)
    found = sorted(local.glob("extra_files/*.pt"))
    if len(found) != 1:
        raise ValueError(f"{uri}: not a model logged by the btbnet pipeline (no extra_files/*.pt checkpoint in it)")
    return found[0]

