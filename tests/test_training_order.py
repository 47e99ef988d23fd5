"""`train.loop.seed` fixes the data order on any number of Ray Train workers.

Ray Train's `prepare_data_loader` replaces a loader's sampler with its own DistributedSampler
(seed 0) unless told not to; the stages build theirs with `pipeline.training.worker.make_loader`.
This runs that function inside a real 2-worker TorchTrainer, as the stages do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btbnet.data import InputConfig
from btbnet.train import LoopConfig, OptimConfig
from pipeline.training.config import RayConfig, TrainConfig
from pipeline.training.worker import make_loader
from tests.pipeline_helpers import REPO

DATA = REPO / "data" / "embedded" / "defocus" / "train"
pytestmark = pytest.mark.slow


def train_config(seed: int) -> TrainConfig:
    return TrainConfig(
        optim=OptimConfig(),
        loop=LoopConfig(batch_size=4, seed=seed),
        input=InputConfig(image_size=16, augment=True),
        ray=RayConfig(num_workers=2, cpus_per_worker=0.5),
    )


def first_batch_loop(config: dict) -> None:
    """Each rank's first batch for each seed, as the stages build their loaders: a list per seed."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    batches = []
    for seed in config["seeds"]:
        train = train_config(seed)
        dataset = train.input.dataset(DATA, "blurred")
        loader = make_loader(dataset, train, ctx.get_world_rank(), ctx.get_world_size())
        loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
        loader.sampler.set_epoch(0)
        per_worker = train.loop.batch_size // ctx.get_world_size()
        indices = list(loader.sampler)[:per_worker]
        batches.append([f"{dataset.stems[i // 16]}/{i % 16}" for i in indices])
    (Path(config["out"]) / f"rank{ctx.get_world_rank()}.json").write_text(json.dumps(batches))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from pipeline.runtime.cluster import state_api_address

    kwargs, env = state_api_address("local")  # as the stages start theirs (its docstring: why)
    ray.init(address="local", num_cpus=2, logging_level="ERROR", runtime_env={"env_vars": env}, **kwargs)
    yield
    ray.shutdown()


def first_batches(seeds: list[int], tmp_path) -> list[list[list[str]]]:
    """For each seed, each rank's first batch (item names `stem/version`), from one run of a real
    2-worker TorchTrainer (the loaders of all seeds built in turn in the same workers)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        first_batch_loop,
        train_loop_config={"seeds": seeds, "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name=f"order-{tmp_path.name}"),
    )
    trainer.fit()
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return [[per_rank[r][i] for r in range(2)] for i in range(len(seeds))]


def test_the_seed_decides_the_first_batch_on_two_workers(ray_local, tmp_path):
    a, b, again = first_batches([1, 2, 1], tmp_path)
    assert [len(batch) for batch in a] == [2, 2]
    assert set(a[0]).isdisjoint(a[1])  # the two ranks read different shards
    assert a == again
    assert a[0] != b[0] and a[1] != b[1]
