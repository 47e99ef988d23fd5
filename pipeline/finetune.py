"""Stage `finetune`: continue from models/pretrain.pt on Shi's training set (section 4.1).

The architecture comes with the pre-trained checkpoint; the data set is `finetune.data`
(image/ + gt/, mask polarity `finetune.polarity`), with the 16× augmentation.
"""

from __future__ import annotations

import btbnet

from . import stage
from .params import as_dict, load_params, resolve
from .training import train_stage


def run() -> None:
    params = load_params()
    t = params.finetune
    init = resolve(params.pretrain.model)
    config = btbnet.load_checkpoint(init).config  # readable before any worker starts
    train_stage(
        "finetune",
        t,
        data=resolve(t.data),
        polarity=t.polarity,
        logged_params={"model": config.to_dict(), "finetune": as_dict(t)},
        init_checkpoint=init,
    )


if __name__ == "__main__":
    stage.main("finetune", run)
