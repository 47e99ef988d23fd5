"""Run the pipeline with a preset: `dvc exp run` with every override of infra/presets/NAME.yaml.

    python infra/preset.py paper               # the paper's settings (on a Ray GPU cluster: infra/README.md)
    python infra/preset.py paper --dry-run     # print the command only
    python infra/preset.py --file other.yaml --name my-exp
    python infra/preset.py cpu --name cpu-release -S finetune.exclude=null   # one more override

A preset is a partial params.yaml: each leaf becomes one `-S key=value` (lists stay whole);
a key that params.yaml does not have yet is added (`-S +key=value`), as DVC requires.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from btbnet.config import deep_merge, flatten

HERE = Path(__file__).resolve().parent
PRESETS = HERE / "presets"
PARAMS_FILE = HERE.parent / "params.yaml"


def override_args(overrides: dict[str, Any], params: dict[str, Any] | None = None) -> list[str]:
    """Nested overrides → `-S key=value` pairs for every leaf, `+key` where `params` lacks it."""
    existing = set(flatten(params)) if params is not None else None
    args: list[str] = []
    for key, value in flatten(overrides).items():
        plus = "+" if existing is not None and not _covered(key, existing) else ""
        args += ["-S", f"{plus}{key}={to_literal(value)}"]
    return args


def _covered(key: str, existing: set[str]) -> bool:
    """Whether params.yaml already holds `key` (a leaf, or a mapping the key replaces whole)."""
    return key in existing or any(e.startswith(f"{key}.") for e in existing)


# Unquoted strings the grammar reads back as the same string: no `,:[]{}='"` or spaces.
PLAIN_STRING = re.compile(r"[A-Za-z_./-][A-Za-z0-9_./-]*")


def quote(text: str) -> str:
    """A quoted string of the override grammar: 'it\\'s', so "null" or "1.0" stay strings."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_literal(value: Any) -> str:
    """A value in the override grammar DVC uses (Hydra's): null, numbers, [lists], {dicts}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if PLAIN_STRING.fullmatch(value) and yaml.safe_load(value) == value else quote(value)
    if isinstance(value, list):
        return "[" + ",".join(to_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{to_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {value!r} as an override")


def unflatten(key: str, value: Any) -> dict[str, Any]:
    """"a.b.c", 1 → {"a": {"b": {"c": 1}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", help=f"one of {available()}")
    parser.add_argument("--file", type=Path, help="a preset file of your own instead of a named preset")
    parser.add_argument("--name", help="DVC experiment name (default: the preset's name)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override after the preset's (YAML value), e.g. finetune.exclude=null")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if (args.preset is None) == (args.file is None):
        parser.error("give a preset name or --file")
    path = args.file or PRESETS / f"{args.preset}.yaml"
    if not path.is_file():
        parser.error(f"{path}: no such preset (presets: {', '.join(available())})")
    overrides = yaml.safe_load(path.read_text()) or {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"-S {item}: expected KEY=VALUE")
        overrides = deep_merge(overrides, unflatten(key, yaml.safe_load(value)))
    params = yaml.safe_load(PARAMS_FILE.read_text())
    cmd = ["dvc", "exp", "run", "-n", args.name or path.stem, *override_args(overrides, params)]
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, cwd=HERE.parent)


if __name__ == "__main__":
    sys.exit(main())
