"""Run the pipeline at the paper's scale: `dvc exp run` with every override of infra/paper.yaml.

    python infra/paper_scale.py              # run it (on a Ray GPU cluster: see infra/README.md)
    python infra/paper_scale.py --dry-run    # print the command only
    python infra/paper_scale.py --file other.yaml --name my-exp
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

HERE = Path(__file__).resolve().parent


def override_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested overrides → `-S key=value` pairs for every leaf (lists stay whole, as JSON/YAML)."""
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            args += override_args(value, f"{prefix}{key}.")
        else:
            args += ["-S", f"{prefix}{key}={to_literal(value)}"]
    return args


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=HERE / "paper.yaml")
    parser.add_argument("--name", default="paper-scale", help="DVC experiment name")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    overrides = yaml.safe_load(args.file.read_text())
    cmd = ["dvc", "exp", "run", "-n", args.name, *override_args(overrides)]
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, cwd=HERE.parent)


if __name__ == "__main__":
    sys.exit(main())
