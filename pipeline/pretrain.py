"""Stage `pretrain`: train BTBNet + FNet + RRNet jointly on the synthetic set (section 4.1).

The backbones start from ImageNet VGG16 when `model.vgg16_weights` is set (section 3.3),
the new layers at random; Ray Train runs DDP over `pretrain.num_workers` workers.
"""

from __future__ import annotations

from . import stage
from .params import as_dict, load_params, resolve
from .training import train_stage


def run() -> None:
    params = load_params()
    config = params.model_config()
    train_stage(
        "pretrain",
        params.pretrain,
        data=resolve(params.synthesize.out_dir),
        polarity="in_focus",  # the synthesize stage writes 255 = in focus
        logged_params={"model": config.to_dict(), "vgg16_weights": params.model.vgg16_weights, "pretrain": as_dict(params.pretrain)},
        model_config=config,
        vgg16_weights=params.model.vgg16_weights,
    )


if __name__ == "__main__":
    stage.main("pretrain", run)
