"""Settings shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def tiny_model_cpu_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread and native (non-oneDNN) kernels during each test, restored afterwards.

    The tests run tiny models on tiny images: one thread avoids thread hand-offs (costly on a
    busy 2-core machine, see bench/README.md) and native kernels avoid a oneDNN kernel build
    per new conv shape.
    """
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The modules that run whole stages (their set-ups and tests take minutes; the rest, seconds)
# start first. xdist hands the first modules out in turn (gw0, gw1, gw0, …; pyproject: -n 2
# --dist loadfile --no-loadscope-reorder) and the rest to whichever worker is free, so this
# order pairs them into two similar loads (measured in a fresh clone, 2 cores, seconds):
# gw0 e2e (~460) + batch predict, pipeline errors; gw1 scale-out (~450) + reliability (~360),
# training order; the short modules then fill gw0. Every other module, and the tests within
# each, keep the random order.
LONG_MODULES = ("test_pipeline_e2e.py", "test_scale_out.py", "test_batch_predict.py", "test_reliability.py",
                "test_pipeline_errors.py", "test_training_order.py")  # fmt: skip


@pytest.hookimpl(trylast=True)  # after pytest-random-order has shuffled
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the shuffled order within each rank stays
