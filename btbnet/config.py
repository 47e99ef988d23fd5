"""Typed model configuration: the one place the architecture's knobs live."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, TypeVar

VARIANTS = ("paper", "fast")


class ConfigError(ValueError):
    """An invalid setting; the message names the key."""


T = TypeVar("T")


def from_mapping(cls: type[T], d: Mapping[str, Any], what: str) -> T:
    """Dataclass `cls` from a mapping; an unknown key raises ConfigError naming it."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown {what} (known: {sorted(known)})")
    return cls(**d)


@dataclass(frozen=True)
class BTBNetConfig:
    """Architecture of the multi-stream BTBNet with FRRNet (paper, section 3).

    variant:      "paper" (VGG16 without pooling, section 3.1) or "fast" (pooling kept,
                  top-bottom stream upsamples step by step).
    width:        multiplier on every channel count; 1.0 is the paper's network.
    scales:       one BTBNet stream per entry (section 3.1, Table 2); (1, 0.8, 0.6) is the paper's.
    rrnet_steps:  recurrent RRNet refinements (eq. 5); 0 means FNet alone, 3 is the paper's.
    """

    variant: str = "paper"
    width: float = 1.0
    scales: tuple[float, ...] = (1.0, 0.8, 0.6)
    rrnet_steps: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: must be one of {VARIANTS}, got {self.variant!r}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ConfigError(f"width: must be a number > 0, got {self.width!r}")
        if len(self.scales) == 0:
            raise ConfigError("scales: must list at least one scale, got an empty list")
        for s in self.scales:
            if not (math.isfinite(s) and s > 0):
                raise ConfigError(f"scales: every scale must be > 0, got {s!r} in {list(self.scales)}")
        if isinstance(self.rrnet_steps, bool) or not isinstance(self.rrnet_steps, int) or self.rrnet_steps < 0:
            raise ConfigError(f"rrnet_steps: must be an integer >= 0, got {self.rrnet_steps!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BTBNetConfig":
        return from_mapping(cls, d, "model setting")

    def channels(self, c: int) -> int:
        """Channel count `c` of the paper scaled by `width` (at least 1)."""
        return max(1, int(round(c * self.width)))
