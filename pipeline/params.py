"""params.yaml → typed, validated dataclasses: the pipeline's one config path.

Each stage reads only its own section (plus the top-level `scales` / `rrnet_steps` and the
`model` section where it builds a model), mirroring the `params:` it declares in dvc.yaml, so
DVC reruns exactly the stages whose inputs changed. Every path lives in params.yaml once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from btbnet import BTBNetConfig, ConfigError
from btbnet.data import POLARITIES
from btbnet.train import OptimConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"


class ParamsError(ConfigError):
    """An invalid params.yaml entry; the message starts with the dotted key."""


@dataclass(frozen=True)
class ModelParams:
    variant: str = "paper"
    width: float = 1.0
    # ImageNet initialisation of the backbones (section 3.3): "imagenet" (torchvision's URL),
    # a local path or URL of torchvision's VGG16 state dict, or null for random init.
    vgg16_weights: str | None = None


@dataclass(frozen=True)
class SynthesizeParams:
    source_root: str  # DVC dep: the folder holding every source folder
    sources: list[str]  # folders of clear images, relative to source_root
    out_dir: str
    metrics: str
    max_size: int | None = None  # longer side of a source is resized to at most this (None: keep)
    blocks_per_cpu: int = 4  # Ray Data parallelism: blocks per available CPU


@dataclass(frozen=True)
class TrainParams:
    """One training stage (pretrain or finetune): data, recipe (section 4.1), Ray scaling."""

    model: str  # output checkpoint
    metrics: str
    epochs: int
    batch_size: int  # global, split evenly over the workers
    image_size: int | None  # training crops are resized to image_size² (None: native, batch 1)
    augment: bool  # the 16× rotation/flip augmentation of section 4.1, applied at load time
    lr_backbone: float = 1e-4
    lr_new: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 1.0
    loss_reduction: str = "mean"
    max_steps_per_epoch: int | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 0
    seed: int = 0
    data: str | None = None  # finetune only: the defocus training set (image/ + gt/)
    polarity: str = "blurred"  # what 255 means in the masks of `data`

    def optim(self) -> OptimConfig:
        return OptimConfig(
            lr_backbone=self.lr_backbone,
            lr_new=self.lr_new,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            aux_weight=self.aux_weight,
            loss_reduction=self.loss_reduction,
        )


@dataclass(frozen=True)
class TestSet:
    name: str
    folder: str  # relative to evaluate.data_root, holding image/ and gt/
    polarity: str = "blurred"


@dataclass(frozen=True)
class EvaluateParams:
    data_root: str  # DVC dep: the folder holding every test set
    test_sets: list[TestSet]
    metrics: str
    plots_dir: str  # PR-curve CSVs, one per test set (DVC plots)
    figures_dir: str  # PNG pictures
    max_size: int | None = None  # longer side the model sees; maps are resized back
    examples: int = 4  # rows in the example grid
    device: str = "auto"


@dataclass(frozen=True)
class Params:
    scales: list[float]
    rrnet_steps: int
    model: ModelParams
    synthesize: SynthesizeParams
    pretrain: TrainParams
    finetune: TrainParams
    evaluate: EvaluateParams

    def model_config(self) -> BTBNetConfig:
        try:
            return BTBNetConfig(
                variant=self.model.variant, width=self.model.width, scales=tuple(self.scales), rrnet_steps=self.rrnet_steps
            )
        except ConfigError as exc:
            key = str(exc).split(":", 1)[0]
            prefix = "" if key in ("scales", "rrnet_steps") else "model."
            raise ParamsError(f"{prefix}{exc}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; errors name the dotted key and the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    params = _build(Params, raw, "")
    params.model_config()  # validates scales, rrnet_steps, model.*
    _validate(params)
    return params


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types; errors name the key."""
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown key (known: {sorted(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{key}: missing")
            continue
        values[f.name] = _coerce(hints[f.name], raw[f.name], key)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ParamsError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported type {tp}")


def _validate(p: Params) -> None:
    if not p.synthesize.sources:
        raise ParamsError("synthesize.sources: must list at least one folder")
    if p.synthesize.max_size is not None and p.synthesize.max_size < 8:
        raise ParamsError(f"synthesize.max_size: must be >= 8 or null, got {p.synthesize.max_size}")
    for stage in ("pretrain", "finetune"):
        t: TrainParams = getattr(p, stage)
        positive = {"epochs": t.epochs, "batch_size": t.batch_size, "num_workers": t.num_workers}
        for name, value in positive.items():
            if value < 1:
                raise ParamsError(f"{stage}.{name}: must be >= 1, got {value}")
        if t.batch_size % t.num_workers:
            raise ParamsError(f"{stage}.batch_size: {t.batch_size} is not divisible by {stage}.num_workers={t.num_workers}")
        if t.image_size is None and t.batch_size != t.num_workers:
            raise ParamsError(f"{stage}.image_size: null (native sizes) needs batch_size 1 per worker")
        if t.image_size is not None and t.image_size < 8:
            raise ParamsError(f"{stage}.image_size: must be >= 8 or null, got {t.image_size}")
        if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
            raise ParamsError(f"{stage}.max_steps_per_epoch: must be >= 1 or null, got {t.max_steps_per_epoch}")
        if t.loader_workers < 0:
            raise ParamsError(f"{stage}.loader_workers: must be >= 0, got {t.loader_workers}")
        if t.cpus_per_worker <= 0:
            raise ParamsError(f"{stage}.cpus_per_worker: must be > 0, got {t.cpus_per_worker}")
        if t.polarity not in POLARITIES:
            raise ParamsError(f"{stage}.polarity: must be one of {POLARITIES}, got {t.polarity!r}")
        try:
            t.optim()
        except ValueError as exc:
            raise ParamsError(f"{stage}.{exc}") from None
    if p.finetune.data is None:
        raise ParamsError("finetune.data: missing (the defocus training set folder)")
    if not p.evaluate.test_sets:
        raise ParamsError("evaluate.test_sets: must list at least one test set")
    names = [t.name for t in p.evaluate.test_sets]
    for i, t in enumerate(p.evaluate.test_sets):
        if t.polarity not in POLARITIES:
            raise ParamsError(f"evaluate.test_sets[{i}].polarity: must be one of {POLARITIES}, got {t.polarity!r}")
        if t.name in names[:i]:
            raise ParamsError(f"evaluate.test_sets[{i}].name: {t.name!r} is already used by test_sets[{names.index(t.name)}]")
    if p.evaluate.max_size is not None and p.evaluate.max_size < 8:
        raise ParamsError(f"evaluate.max_size: must be >= 8 or null, got {p.evaluate.max_size}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", p.evaluate.device):
        raise ParamsError(f"evaluate.device: must be auto, cpu, cuda or cuda:N, got {p.evaluate.device!r}")
    if p.evaluate.examples < 0:
        raise ParamsError(f"evaluate.examples: must be >= 0, got {p.evaluate.examples}")


def resolve(path: str | Path) -> Path:
    """A params path made absolute against the repo root (Ray workers run elsewhere)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def as_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
