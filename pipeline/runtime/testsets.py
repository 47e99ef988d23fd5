"""The test sets that `evaluate` and `baselines` both score: `evaluate.data_root` and
`evaluate.test_sets` of params.yaml (each a `btbnet.evaluation.TestSet`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from btbnet.config import ConfigError, from_mapping
from btbnet.data import DataError, read_stems
from btbnet.evaluation import TestSet

from .params import Params, resolve


@dataclass(frozen=True)
class TestSets:
    """data_root: the folder holding every test set (the stages' DVC dependency)."""

    data_root: str
    test_sets: tuple[TestSet, ...]

    def __post_init__(self) -> None:
        if not self.test_sets:
            raise ConfigError("test_sets", "must list at least one test set")
        names = [t.name for t in self.test_sets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"test_sets[{i}].name", f"{name!r} is already used by test_sets[{names.index(name)}]")

    def present(self) -> list[tuple[TestSet, Path, list[str] | None]]:
        """(set, its folder, its stems or None) of every set there is; an absent optional set
        is skipped with a note on stdout, an absent required one is a DataError."""
        found = []
        for t in self.test_sets:
            folder = resolve(self.data_root) / t.folder
            if not folder.is_dir():
                if t.optional:
                    print(f"test set {t.name}: {folder} is absent, skipped (optional)")
                    continue
                raise DataError(f"{folder}: test set {t.name!r} not found")
            found.append((t, folder, read_stems(resolve(t.stems)) if t.stems else None))
        if not found:
            raise DataError(f"{resolve(self.data_root)}: none of the test sets is there")
        return found


def read_test_sets(params: Params) -> TestSets:
    e = params.section("evaluate")
    return from_mapping(TestSets, {"data_root": e["data_root"], "test_sets": e["test_sets"]}, prefix="evaluate.")
