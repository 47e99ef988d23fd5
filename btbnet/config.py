"""Typed settings: `BTBNetConfig` (the architecture) and the one reader every config class uses.

Every config of the project is a frozen dataclass owned by the library module it configures
(`BTBNetConfig` here, `btbnet.train.OptimConfig` / `LoopConfig`, `btbnet.data.InputConfig`);
each default lives in its dataclass alone. `from_mapping` builds one from a plain mapping (a
section of params.yaml, a checkpoint's stored config), checking keys and types; the class's
`__post_init__` checks ranges. Every error is a `ConfigError` whose message starts with the
offending key, prefixed with where the mapping came from (`pretrain.optim.lr_new: …`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

LITE0 = "efficientnet-lite0"
VARIANTS = ("paper", "fast", LITE0)
NORMS = ("none", "batch")


class ConfigError(ValueError):
    """An invalid setting: `key` (dotted, as the user wrote it) and what is wrong with it.

    Reads "key: problem". Code that knows where a mapping came from re-keys the error with
    `under(prefix)` rather than editing its text.
    """

    def __init__(self, key: str, problem: str):
        super().__init__(key, problem)  # both in args: the error survives pickling (Ray workers)
        self.key, self.problem = key, problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"

    @property
    def field(self) -> str:
        """The key's first part: the field of the config class that raised it ("scales[2]" → "scales")."""
        return re.split(r"[.\[]", self.key, maxsplit=1)[0]

    def under(self, prefix: str) -> "ConfigError":
        """This error, of the same class, with `prefix` ("pretrain.optim.") before its key."""
        return type(self)(f"{prefix}{self.key}", self.problem)


class Choice(enum.StrEnum):
    """A setting with a fixed set of values (a member equals its value: `Polarity.BLURRED ==
    "blurred"`). Converting a bad value, `Polarity("white")`, is a ConfigError keyed by the
    class name in lower case that lists the values; `from_mapping` re-keys it to the field."""

    @classmethod
    def _missing_(cls, value: object) -> None:
        raise ConfigError(cls.__name__.lower(), f"must be one of {[m.value for m in cls]}, got {value!r}")


T = TypeVar("T")


def from_mapping(cls: type[T], d: Mapping[str, Any], prefix: str = "") -> T:
    """Dataclass `cls` from mapping `d`: unknown, missing and ill-typed keys raise ConfigError.

    Field types understood: bool, int, float (ints are accepted and converted), str (not
    empty), a `Choice` (from its value), Optional[...] (null), tuple[X, ...] (from a list),
    unions of those, and nested dataclasses. `prefix` ("pretrain.optim.") is put before every key an error names.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_known(d, fields, prefix)
    values = {}
    for name, f in fields.items():
        if name in d:
            values[name] = _coerce(hints[name], d[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}", "missing")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise exc.under(prefix) from None


def check_known(d: Mapping[str, Any], known: Collection[str], prefix: str = "") -> None:
    """ConfigError naming the first key of `d` that is not in `known`."""
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known: {sorted(known)})")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or ConfigError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc.problem if exc.key == key else str(exc))
        raise ConfigError(key, " or ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, f"{key}.")
    if isinstance(tp, type) and issubclass(tp, Choice):
        try:
            return tp(value)
        except ConfigError as exc:
            raise ConfigError(key, exc.problem) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain data (tuples as lists): what `from_mapping` reads back."""

    def plain(v: Any) -> Any:
        if isinstance(v, Choice):
            return v.value
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(asdict(config))


def deep_merge(base: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `updates` applied key by key (nested mappings merged, anything else replaced)."""
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: nested mappings become dotted keys, other values stay."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_number(key: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    """ConfigError naming `key` unless `value` is a finite real in [low, high) ((low, high) if low_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        lower = f"> {low:g}" if low_open else f">= {low:g}"
        bound = f"a number {lower}" + (f" and < {high:g}" if high is not None else "")
        raise ConfigError(key, f"must be {bound}, got {value!r}")


def check_int(key: str, value: Any, low: int, allow_none: bool = False) -> None:
    """ConfigError naming `key` unless `value` is an integer >= low (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        suffix = " or null" if allow_none else ""
        raise ConfigError(key, f"must be an integer >= {low}{suffix}, got {value!r}")


@dataclass(frozen=True)
class BTBNetConfig:
    """Architecture of the multi-stream BTBNet with FRRNet (paper, section 3).

    variant:      "paper" (VGG16 without pooling, section 3.1), "fast" (pooling kept,
                  top-bottom stream upsamples step by step), or "efficientnet-lite0" (not in
                  the paper: EfficientNet-Lite0's ImageNet-trained stages as the bottom-top
                  stream, the same FFIC steps joining them; `btbnet.model.LiteBackbone`).
    width:        multiplier on every channel count the paper gives (for efficientnet-lite0:
                  those of the top-bottom stream, FNet and RRNet; the encoder's are its own);
                  1.0 is the paper's network.
    scales:       one BTBNet stream per entry (section 3.1, Table 2); (1, 0.8, 0.6) is the paper's.
                  Each must be in (0, 1]: a stream sees the image at most at its own size.
    rrnet_steps:  recurrent RRNet refinements (eq. 5); 0 means FNet alone, 3 is the paper's.
    norm:         "none" (the paper's VGG16) or "batch": BatchNorm after every VGG16 conv,
                  as torchvision's vgg16_bn, for training from random initialisation, where
                  it lets a network learn in a CPU budget (docs/real-data.md, "Real photographs on a CPU").
                  efficientnet-lite0 has BatchNorm in its encoder whatever this says.
    """

    variant: str = "paper"
    width: float = 1.0
    scales: tuple[float, ...] = (1.0, 0.8, 0.6)
    rrnet_steps: int = 3
    norm: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(self.scales))
        if self.variant not in VARIANTS:
            raise ConfigError("variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        check_number("width", self.width, 0.0, low_open=True)
        if len(self.scales) == 0:
            raise ConfigError("scales", "must list at least one scale, got an empty list")
        for s in self.scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 < s <= 1):
                raise ConfigError("scales", f"every scale must be in (0, 1], got {s!r} in {list(self.scales)}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        check_int("rrnet_steps", self.rrnet_steps, 0)
        if self.norm not in NORMS:
            raise ConfigError("norm", f"must be one of {NORMS}, got {self.norm!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> "BTBNetConfig":
        return from_mapping(cls, d, prefix)

    def channels(self, c: int) -> int:
        """Channel count `c` of the paper scaled by `width` (at least 1)."""
        return max(1, int(round(c * self.width)))
