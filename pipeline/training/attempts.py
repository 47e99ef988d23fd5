"""The Ray actor that outlives the worker groups of one stage run (it imports nothing heavy:
its process starts in a moment, whatever the workers load)."""

from __future__ import annotations

from typing import Any


class Attempts:
    """Which nodes the workers ran on, how often the worker group (re)started, how many steps
    rank 0 ran in all, and the bad input that ended an attempt (a restart would only meet it
    again, so the next attempt fails at once)."""

    def __init__(self) -> None:
        self.starts, self.steps, self.nodes, self.bad_input = 0, 0, set(), None

    def join(self, rank: int, node_id: str) -> BaseException | None:
        self.starts += rank == 0
        self.nodes.add(node_id)
        return self.bad_input

    def step(self) -> None:
        self.steps += 1

    def fail(self, error: BaseException) -> None:
        self.bad_input = error

    def summary(self) -> dict[str, Any]:
        return {"starts": self.starts, "steps": self.steps, "nodes": sorted(self.nodes)}
