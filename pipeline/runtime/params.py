"""params.yaml for the stages: a read-only view that records which keys a stage reads.

Every setting's schema and default live in the library's config dataclasses (and, for what
only the pipeline knows, such as paths and Ray scaling, in the stage modules); this module
only reads the file. `Params` hands out sections and values like a mapping and remembers the
dotted key of everything read, so a test can check that a stage's `params:` in dvc.yaml are
exactly the keys its `configure` reads (DVC reruns a stage only when those change).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from btbnet.config import ConfigError, from_mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO_ROOT / "params.yaml"

T = TypeVar("T")


class ParamsError(ConfigError):
    """An invalid params.yaml entry; the message starts with the dotted key."""


class Params(Mapping[str, Any]):
    """A section of params.yaml (the whole file at the top); nested mappings are sections too.

    `accessed` collects the dotted key of each value read and of each section iterated
    (reading a section as a whole, e.g. to build a dataclass from it, reads all of it);
    `read_keys()` is that set without the keys a recorded section already covers.
    """

    def __init__(self, data: Mapping[str, Any], key: str = "", accessed: set[str] | None = None):
        self._data = data
        self._key = key
        self.accessed: set[str] = set() if accessed is None else accessed

    def _child(self, name: str) -> str:
        return f"{self._key}.{name}" if self._key else name

    def __getitem__(self, name: str) -> Any:
        key = self._child(name)
        if name not in self._data:
            raise ParamsError(key, "missing")
        value = self._data[name]
        if isinstance(value, Mapping):
            return Params(value, key, self.accessed)  # recorded when read (iterated) as a whole
        self.accessed.add(key)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        if self._key:
            self.accessed.add(self._key)
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def read_keys(self) -> set[str]:
        """The dotted keys read so far, each section read as a whole standing for its keys."""
        return {k for k in self.accessed if not any(k.startswith(f"{a}.") for a in self.accessed)}

    def section(self, name: str) -> "Params":
        """The section `name`; ParamsError naming it if it is not a mapping."""
        section = self[name]
        if not isinstance(section, Params):
            raise ParamsError(self._child(name), f"expected a mapping, got {section!r}")
        return section

    def build(self, cls: type[T], name: str, drop: Collection[str] = ()) -> T:
        """Dataclass `cls` from section `name` (without the keys in `drop`); errors name the key."""
        section = self.section(name)
        values = {k: section[k] for k in section if k not in drop}
        return from_mapping(cls, values, prefix=f"{self._child(name)}.")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml as `Params`; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(str(path), "params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(str(path), f"not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ParamsError(str(path), "expected a mapping at the top level")
    return Params(raw)


def resolve(path: str | Path) -> Path:
    """A params path made absolute against the repo root (Ray workers run elsewhere)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def is_uri(location: str | Path | None) -> bool:
    """Whether a location is a URI (s3://…, gs://…, file://…, http://…) rather than a path."""
    return location is not None and "://" in str(location)


def resolve_data(location: str) -> str | Path:
    """A data folder setting: a URI as it is, a path resolved."""
    return location if is_uri(location) else resolve(location)
