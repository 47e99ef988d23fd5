"""Stage `finetune`: continue from the pre-trained model on Shi's training set (section 4.1).

Reads: the recipe `train` with this stage's overrides, `finetune` (the data set `data` with
image/ + gt/ and its mask `polarity`, outputs) and `pretrain.model` (its input). The
architecture is the pre-trained checkpoint's, read from it before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from btbnet.checkpoint import read_config
from btbnet.data import Polarity, read_stems

from .runtime import stage
from .runtime.params import Params, resolve, resolve_data
from .training.config import BLOCKS, StageSpec, stage_spec
from .training.driver import train_stage

NAME = "finetune"
REGISTERED_MODEL = "btbnet"  # MLflow's model registry: a version per fine-tuning, alias `candidate`


@dataclass(frozen=True)
class FinetuneConfig:
    """The `finetune` section besides its recipe overrides: the defocus training set `data`
    (image/ + gt/; a path, or a URI such as s3://bucket/cuhk/train that every Train worker
    copies once into its node's cache, `pipeline.training.store.local_folder`), what white means in its masks, the outputs, and `exclude`: a file of
    stems (data/splits/) held out of training for validation (None: train on every pair)."""

    data: str
    model: str
    metrics: str
    plots: str
    polarity: Polarity = Polarity.BLURRED
    exclude: str | None = None


def configure(params: Params) -> StageSpec:
    own = params.build(FinetuneConfig, NAME, drop=BLOCKS)
    init = resolve(params["pretrain"]["model"])
    return stage_spec(
        params, NAME, own,
        data=resolve_data(own.data),
        polarity=own.polarity,
        model=read_config(init),
        init_checkpoint=init,
        exclude=tuple(read_stems(resolve(own.exclude))) if own.exclude else (),
        registered_model=REGISTERED_MODEL,
    )


if __name__ == "__main__":
    stage.main(NAME, configure, train_stage)
