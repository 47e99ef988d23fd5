"""`train.loop.seed` fixes the data order on any number of Ray Train workers.

Ray Train's `prepare_data_loader` replaces a loader's sampler with its own DistributedSampler
(seed 0) unless told not to; the stages build theirs with `pipeline.training.make_loader`.
This runs that function inside a real 2-worker TorchTrainer, as the stages do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btbnet.data import InputConfig
from btbnet.train import LoopConfig, OptimConfig
from pipeline.training import RayConfig, TrainConfig, make_loader
from tests.pipeline_helpers import REPO

DATA = REPO / "data" / "embedded" / "defocus" / "train"
pytestmark = pytest.mark.slow


def first_batch_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    train: TrainConfig = config["train"]
    ctx = ray.train.get_context()
    dataset = train.input.dataset(DATA, "blurred")
    loader = make_loader(dataset, train, ctx.get_world_rank(), ctx.get_world_size())
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    loader.sampler.set_epoch(0)
    per_worker = train.loop.batch_size // ctx.get_world_size()
    indices = list(loader.sampler)[:per_worker]
    batch = [f"{dataset.stems[i // 16]}/{i % 16}" for i in indices]
    (Path(config["out"]) / f"rank{ctx.get_world_rank()}.json").write_text(json.dumps(batch))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def first_batch(seed: int, tmp_path) -> list[list[str]]:
    """Each rank's first batch (item names `stem/version`) for `seed`, from a real TorchTrainer."""
    import ray.train
    from ray.train.torch import TorchTrainer

    train = TrainConfig(
        optim=OptimConfig(),
        loop=LoopConfig(batch_size=4, seed=seed),
        input=InputConfig(image_size=16, augment=True),
        ray=RayConfig(num_workers=2, cpus_per_worker=0.5),
    )
    trainer = TorchTrainer(
        first_batch_loop,
        train_loop_config={"train": train, "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name=f"seed{seed}-{tmp_path.name}"),
    )
    trainer.fit()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_seed_decides_the_first_batch_on_two_workers(ray_local, tmp_path_factory):
    a = first_batch(1, tmp_path_factory.mktemp("a"))
    b = first_batch(2, tmp_path_factory.mktemp("b"))
    again = first_batch(1, tmp_path_factory.mktemp("c"))
    assert [len(batch) for batch in a] == [2, 2]
    assert set(a[0]).isdisjoint(a[1])  # the two ranks read different shards
    assert a == again
    assert a[0] != b[0] and a[1] != b[1]
