"""btbnet: defocus blur detection with the multi-stream BTBNet (Zhao et al., CVPR 2018).

Convention, project-wide: maps and model outputs use 255 / 1.0 = in focus, 0 = blurred.

The names below are imported on first use (PEP 562), so `import btbnet.synthesis` loads
synthesis alone and not the network: each pipeline stage loads, and depends on, only the
modules it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BTBNetConfig": "config",
    "ConfigError": "config",
    "MultiStreamBTBNet": "model",
    "Prediction": "model",
    "build_model": "model",
    "load_checkpoint": "checkpoint",
    "read_config": "checkpoint",
    "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'btbnet' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
