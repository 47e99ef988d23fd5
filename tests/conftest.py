"""Settings shared by every test module."""

from __future__ import annotations

import os
import signal
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


@pytest.fixture(autouse=True)
def no_leftover_environment_or_signal_handlers() -> Iterator[None]:
    """What code run in this process sets for its own children (MLflow's experiment id, Ray's
    client mode, a SIGINT handler) is undone after each test: every later subprocess starts from
    the environment and the Ctrl-C behaviour a shell gives it, whatever ran before."""
    environ, handlers = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    for signum, handler in handlers.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)
