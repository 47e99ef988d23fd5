"""Stage `finetune`: continue from models/pretrain.pt on Shi's training set (section 4.1).

The architecture comes with the pre-trained checkpoint; the data set is `finetune.data`
(image/ + gt/, mask polarity `finetune.polarity`), with the 16× augmentation.
"""

from __future__ import annotations

from . import stage
from .params import as_dict, load_params, resolve
from .training import train_stage


def run() -> None:
    params = load_params()
    t = params.finetune
    train_stage(
        "finetune",
        t,
        data=resolve(t.data),
        polarity=t.polarity,
        logged_params={"model": params.model_config().to_dict(), "finetune": as_dict(t)},
        init_checkpoint=resolve(params.pretrain.model),
    )


if __name__ == "__main__":
    stage.main("finetune", run)
