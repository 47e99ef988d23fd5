"""Stage `pretrain`: train BTBNet + FNet + RRNet jointly on the synthetic set (section 4.1).

Reads: `scales`, `rrnet_steps` and `model` (→ `btbnet.BTBNetConfig`), the recipe `train` with
this stage's overrides, `pretrain` (outputs, `backbone_weights`) and `synthesize.out_dir` (its data).
The backbones start from ImageNet weights when `pretrain.backbone_weights` is set (section 3.3:
VGG16's; EfficientNet-Lite0's for that variant), the new layers at random; Ray Train runs DDP over `ray.num_workers` workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from btbnet.config import BTBNetConfig, ConfigError, from_mapping
from btbnet.data import Polarity

from .runtime import stage
from .runtime.params import Params, ParamsError, is_uri, resolve
from .training.config import BLOCKS, StageSpec, stage_spec
from .training.driver import train_stage

NAME = "pretrain"


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretrain` section besides its recipe overrides: outputs and initialisation
    (backbone_weights: "imagenet", or a path of the backbone's ImageNet weights, for VGG16 also
    an URL, `btbnet.build_model`; None: random)."""

    model: str
    metrics: str
    plots: str
    backbone_weights: str | None = None


def configure(params: Params) -> StageSpec:
    own = params.build(PretrainConfig, NAME, drop=BLOCKS)
    return stage_spec(
        params, NAME, own,
        data=resolve(params["synthesize"]["out_dir"]),
        polarity=Polarity.IN_FOCUS,  # the synthesize stage writes 255 = in focus
        model=model_config(params),
        backbone_weights=weights_source(own.backbone_weights),
    )


def weights_source(source: str | None) -> str | None:
    """`backbone_weights` with a file path made absolute (the workers run elsewhere); "imagenet"
    and URLs as they are."""
    if source is None or source == "imagenet" or is_uri(source):
        return source
    return str(resolve(source))


TOP_LEVEL = ("scales", "rrnet_steps")  # model settings kept at params.yaml's top: `dvc exp run -S scales=[1,0.8]`


def model_config(params: Params) -> BTBNetConfig:
    """`BTBNetConfig` from the `model` section and the top-level `scales` and `rrnet_steps`;
    an error names the key where params.yaml holds it."""
    model = params.section("model")
    for key in TOP_LEVEL:
        if key in model:
            raise ParamsError(f"model.{key}", f"set {key} at the top level of params.yaml, not under model")
    values = {**model, **{key: params[key] for key in TOP_LEVEL}}
    try:
        return from_mapping(BTBNetConfig, values)
    except ConfigError as exc:
        raise ParamsError(exc.key if exc.field in TOP_LEVEL else f"model.{exc.key}", exc.problem) from None


if __name__ == "__main__":
    stage.main(NAME, configure, train_stage)
