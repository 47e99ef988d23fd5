"""btbnet: defocus blur detection with the multi-stream BTBNet (Zhao et al., CVPR 2018).

Convention, project-wide: maps and model outputs use 255 / 1.0 = in focus, 0 = blurred.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import BTBNetConfig, ConfigError
from .model import MultiStreamBTBNet, Prediction, build_model

__all__ = [
    "BTBNetConfig",
    "ConfigError",
    "MultiStreamBTBNet",
    "Prediction",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]
__version__ = "0.1.0"
