"""Stage `finetune`: continue from the pre-trained model on Shi's training set (section 4.1).

Reads: the recipe `train` with this stage's overrides, `finetune` (the data set `data` with
image/ + gt/ and its mask `polarity`, outputs) and `pretrain.model` (its input). The
architecture is the pre-trained checkpoint's, read from it before any worker starts.
"""

from __future__ import annotations

from btbnet.checkpoint import read_config
from btbnet.data import POLARITIES

from . import stage
from .params import Params, ParamsError, resolve
from .training import StageSpec, check_keys, train_config, train_stage

NAME = "finetune"


def configure(params: Params) -> StageSpec:
    check_keys(params, NAME, ("data", "polarity", "model", "metrics"))
    own = params[NAME]
    init = resolve(params["pretrain"]["model"])
    if own["polarity"] not in POLARITIES:
        raise ParamsError(f"{NAME}.polarity: must be one of {POLARITIES}, got {own['polarity']!r}")
    return StageSpec(
        name=NAME,
        data=resolve(own["data"]),
        polarity=own["polarity"],
        out=resolve(own["model"]),
        metrics=resolve(own["metrics"]),
        train=train_config(params, NAME),
        model=read_config(init),
        init_checkpoint=init,
    )


if __name__ == "__main__":
    stage.main(NAME, configure, train_stage)
