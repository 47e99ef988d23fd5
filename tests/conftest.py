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

