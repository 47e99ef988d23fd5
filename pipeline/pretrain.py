"""Stage `pretrain`: train BTBNet + FNet + RRNet jointly on the synthetic set (section 4.1).

Reads: `scales`, `rrnet_steps` and `model` (→ `btbnet.BTBNetConfig`), the recipe `train` with
this stage's overrides, `pretrain` (outputs, `backbone_weights`) and `synthesize.out_dir` (its data).
The backbones start from ImageNet weights when `pretrain.backbone_weights` is set (section 3.3:
VGG16's; EfficientNet-Lite0's for that variant), the new layers at random; Ray Train runs DDP over `ray.num_workers` workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from btbnet.config import BTBNetConfig, ConfigError, from_mapping

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
        params,
        NAME,
        own,
        data=resolve(params["synthesize"]["out_dir"]),
        polarity="in_focus",  # the synthesize stage writes 255 = in focus
        model=model_config(params),
        backbone_weights=weights_source(own.backbone_weights),
    )


def weights_source(source: str | None) -> str | None:
    """`backbone_weights` with a file path made absolute (the workers run elsewhere); "imagenet"
    and URLs as they are."""
    if source is None or source == "imagenet" or is_uri(source):
        return source
    return str(resolve(source))


def model_config(params: Params) -> BTBNetConfig:
    """`BTBNetConfig` from the `model` section and the top-level `scales` and `rrnet_steps`."""
    values = {**params["model"], "scales": params["scales"], "rrnet_steps": params["rrnet_steps"]}
    try:
        return from_mapping(BTBNetConfig, values)
    except ConfigError as exc:
        top_level = str(exc).startswith(("scales", "rrnet_steps"))
        raise ParamsError(("" if top_level else "model.") + str(exc)) from None


if __name__ == "__main__":
    stage.main(NAME, configure, train_stage)
