"""The network: multi-stream BTBNet (section 3.1) with FRRNet = FNet + RRNet (section 3.2).

Shapes: B batch, H×W input size, C channels. Every map the model returns is a *logit* map
[B, 1, H, W]; sigmoid(logit) is the probability that a pixel is in focus (1.0 = in focus).

Module tree (these names are what checkpoints and `vgg16_to_btbnet` use):

    MultiStreamBTBNet
    ├── streams[n]: BTBNet                      one per scale, own weights
    │   ├── backbone: VGG16Backbone             bottom-top stream, VGG16's 13 convs
    │   │   ├── blocks[b].convs[i]: Conv2d      b = 0…4, VGG16 conv{b+1}_{i+1}
    │   │   └── blocks[b].norms[i]: BatchNorm2d only with norm="batch"
    │   └── top_bottom: TopBottomStream
    │       └── steps[k]: FFIC                  k = 0…3, 256/128/64/1 channels
    ├── fnet: FNet                              eq. 2–4
    └── rrnet: RRNet | None                     eq. 5, applied rrnet_steps times
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BTBNetConfig, ConfigError
from .io import why_unreadable

# VGG16 conv channels per block (Simonyan & Zisserman, configuration D).
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Top-bottom stream channels, one FFIC step per block boundary (section 3.1).
TOP_BOTTOM_CHANNELS: tuple[int, ...] = (256, 128, 64, 1)
# FNet / RRNet conv channels (section 3.2, Figure 5).
FRRNET_CHANNELS: tuple[int, ...] = (64, 128, 64, 1)
# torchvision normalisation, matching the ImageNet weights of the backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HEAD_INIT_STD = 1e-3

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


class Prediction(NamedTuple):
    final: torch.Tensor  # [B, 1, H, W] logits of M_final
    streams: list[torch.Tensor]  # N × [B, 1, H, W] logits of M^n, resized to the input size


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class VGGBlock(nn.Module):
    """One VGG16 block: 3×3 Conv(+BatchNorm)+ReLU layers at constant resolution."""

    def __init__(self, c_in: int, widths: tuple[int, ...], batch_norm: bool = False):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(a, b) for a, b in zip((c_in, *widths[:-1]), widths))
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = F.relu(x, inplace=True)
        return x


class VGG16Backbone(nn.Module):
    """Bottom-top stream: VGG16 without its three FC layers (section 3.1).

    paper: all five pooling layers deleted, every block at the input's resolution.
    fast:  2×2 max pooling (ceil mode, so odd sizes work) before blocks 2…5, as in VGG16;
           pool5 is dropped because it only fed the deleted FC layers.
    """

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        self.pool = config.variant == "fast"
        blocks, c_in = [], 3
        for widths in VGG16_BLOCKS:
            widths = tuple(config.channels(c) for c in widths)
            blocks.append(VGGBlock(c_in, widths, batch_norm=config.norm == "batch"))
            c_in = widths[-1]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: [B, 3, H, W] → 5 maps [B, C_b, H_b, W_b]; paper: H_b = H, fast: H_b = ceil(H / 2^b)
        features = []
        for b, block in enumerate(self.blocks):
            if self.pool and b > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = block(x)
            features.append(x)
        return features


class FFIC(nn.Module):
    """Feedback and forward information combination (Figure 4): one top-bottom step.

    A 3×3 conv on the top-bottom input and one on the bottom-top block's output, added
    element-wise. Both convs are followed by ReLU except in the last step (`relu=False`),
    whose sum is the stream's logit map: a ReLU there would clamp the logits to ≥ 0, i.e.
    sigmoid ≥ 0.5, and the stream could never predict "blurred" under the loss of eq. 6.
    """

    def __init__(self, c_top: int, c_lateral: int, c_out: int, relu: bool = True):
        super().__init__()
        self.top = conv3x3(c_top, c_out)
        self.lateral = conv3x3(c_lateral, c_out)
        self.relu = relu

    def forward(self, top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        # top: [B, C_top, h, w], lateral: [B, C_lat, H', W'] → [B, C_out, H', W']
        top = self.top(top)
        if top.shape[-2:] != lateral.shape[-2:]:  # fast variant: upsample to the block's size
            top = F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        lateral = self.lateral(lateral)
        if self.relu:
            return F.relu(top, inplace=True) + F.relu(lateral, inplace=True)
        return top + lateral


class TopBottomStream(nn.Module):
    """Top-bottom refinement: block 5's output flows down through blocks 4, 3, 2, 1."""

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        block_out = [config.channels(widths[-1]) for widths in VGG16_BLOCKS]  # [64, 128, 256, 512, 512]·w
        outs = [config.channels(c) for c in TOP_BOTTOM_CHANNELS[:-1]] + [1]
        c_top, steps = block_out[-1], []
        for k, c_out in enumerate(outs):
            steps.append(FFIC(c_top, block_out[-2 - k], c_out, relu=k < len(outs) - 1))
            c_top = c_out
        self.steps = nn.ModuleList(steps)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features: 5 backbone maps → [B, 1, H, W] logits at block 1's (= input) resolution
        x = features[-1]
        for k, step in enumerate(self.steps):
            x = step(x, features[-2 - k])
        return x


class BTBNet(nn.Module):
    """One bottom-top-bottom stream (Figure 4): image [B, 3, h, w] → logits [B, 1, h, w]."""

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        self.backbone = VGG16Backbone(config)
        self.top_bottom = TopBottomStream(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top_bottom(self.backbone(x))


class FNet(nn.Module):
    """Fusion network (eq. 2–4): N maps and the image → one fused logit map.

    F⁰ = cat(M¹…Mᴺ, I) (eq. 2), then 3×3 convs with 64, 128, 64, 1 channels, ReLU between
    (eq. 3) and none after the last (eq. 4). The maps enter as probabilities sigmoid(Mⁿ) in
    [0, 1], the image normalised as the backbone sees it; the output is a logit map.
    """

    def __init__(self, num_maps: int, config: BTBNetConfig):
        super().__init__()
        widths = [config.channels(c) for c in FRRNET_CHANNELS[:-1]] + [1]
        self.convs = nn.ModuleList(conv3x3(a, b) for a, b in zip([num_maps + 3, *widths[:-1]], widths))

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        # maps: N × [B, 1, H, W] logits, image: [B, 3, H, W] normalised → [B, 1, H, W] logits
        x = torch.cat([torch.sigmoid(m) for m in maps] + [image], dim=1)  # F⁰: [B, N + 3, H, W]
        for conv in self.convs[:-1]:
            x = F.relu(conv(x), inplace=True)
        return self.convs[-1](x)


class RRNet(FNet):
    """Recurrent reconstruction network (eq. 5): FNet's architecture with its own weights,
    applied `steps` times to (map, image), each output the next step's input map."""

    def __init__(self, config: BTBNetConfig, steps: int):
        super().__init__(num_maps=1, config=config)
        self.steps = steps

    def forward(self, m: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # m: [B, 1, H, W] logits of M̂ᶠ → M_final, same shape (R ∘ R ∘ … ∘ R, shared weights)
        for _ in range(self.steps):
            m = super().forward([m], image)
        return m


class MultiStreamBTBNet(nn.Module):
    """The full model of Figure 3: one BTBNet per scale, FNet, then RRNet `rrnet_steps` times.

    Input: RGB images in [0, 1], [B, 3, H, W], any H, W ≥ 1. Output: `Prediction`.
    """

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        self.config = config
        self.streams = nn.ModuleList(BTBNet(config) for _ in config.scales)
        self.fnet = FNet(len(config.scales), config)
        self.rrnet = RRNet(config, config.rrnet_steps) if config.rrnet_steps > 0 else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        init_weights(self)

    def forward(self, image: torch.Tensor) -> Prediction:
        size = image.shape[-2:]
        x = (image - self.mean) / self.std  # I¹: [B, 3, H, W]
        maps = []
        for scale, stream in zip(self.config.scales, self.streams):
            scaled = resize(x, scaled_size(size, scale))  # Iⁿ: [B, 3, h_n, w_n]
            maps.append(resize(stream(scaled), size))  # Mⁿ: [B, 1, H, W]
        m = self.fnet(maps, x)  # M̂ᶠ: [B, 1, H, W]
        if self.rrnet is not None:
            m = self.rrnet(m, x)  # M_final: [B, 1, H, W]
        return Prediction(final=m, streams=maps)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The VGG16 layers (ImageNet-initialised in the paper; learning rate 1e-4, section 4.1)."""
        return [p for s in self.streams for p in s.backbone.parameters()]

    def new_parameters(self) -> list[nn.Parameter]:
        """Layers the paper adds and initialises randomly (learning rate 1e-3, section 4.1)."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]


def scaled_size(size: torch.Size | tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (section 3.1); identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block's duration, then every submodule's own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def init_weights(model: nn.Module) -> None:
    """Random initialisation of every conv: Kaiming-normal (fan-in, ReLU gain), zero bias.

    The paper initialises the top-bottom stream and FRRNet "with random values" (section
    3.3); He et al.'s scheme keeps activations' variance through the ReLU stacks, which
    matters here since the no-pooling backbone is 13 layers deep before the first skip.
    The 1-channel logit convs (last FFIC step, last FNet/RRNet conv) instead start small
    (std HEAD_INIT_STD), so every map starts near p = 0.5 and the first updates are stable.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
            if m.out_channels == 1:  # a logit head: start near 0 (p = 0.5), as HED's score layers
                nn.init.normal_(m.weight, std=HEAD_INIT_STD)


def build_model(config: BTBNetConfig | None = None, vgg16_weights: str | Path | None = None) -> MultiStreamBTBNet:
    """The model for `config` (default: the paper's), backbones optionally from ImageNet VGG16.

    vgg16_weights: a local file or an URL of torchvision's VGG16 state dict, or "imagenet"
    for torchvision's official URL (downloaded once into torch.hub's cache).
    """
    model = MultiStreamBTBNet(config or BTBNetConfig())
    if vgg16_weights is not None:
        if model.config.norm != "none":
            raise ConfigError(f"norm: torchvision's VGG16 weights have no BatchNorm; use norm none with them, got {model.config.norm!r}")
        state = vgg16_to_btbnet(load_vgg16_state_dict(vgg16_weights), num_streams=len(model.streams))
        check_shapes(model, state, source=str(vgg16_weights))
        model.load_state_dict(state, strict=False)
    return model


# --- ImageNet initialisation -------------------------------------------------------------

# torchvision's `features.N` index of each VGG16 conv, in (block, conv) order.
VGG16_FEATURE_INDEX: dict[tuple[int, int], int] = {
    (b, i): idx
    for (b, i), idx in zip(
        [(b, i) for b, widths in enumerate(VGG16_BLOCKS) for i in range(len(widths))],
        [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    )
}


def vgg16_to_btbnet(vgg_state: dict[str, torch.Tensor], num_streams: int) -> dict[str, torch.Tensor]:
    """Pure mapping of torchvision's VGG16 state dict onto every stream's backbone.

    `features.{idx}.{weight,bias}` → `streams.{n}.backbone.blocks.{b}.convs.{i}.{weight,bias}`
    for n < num_streams. Raises KeyError naming the first missing tensor.
    """
    out = {}
    for (b, i), idx in VGG16_FEATURE_INDEX.items():
        for kind in ("weight", "bias"):
            src = f"features.{idx}.{kind}"
            if src not in vgg_state:
                raise KeyError(f"{src}: missing from the VGG16 state dict (is it torchvision's vgg16?)")
            for n in range(num_streams):
                out[f"streams.{n}.backbone.blocks.{b}.convs.{i}.{kind}"] = vgg_state[src]
    return out


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
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a foreign pickle
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or a pickle holding code
        raise ValueError(f"{path}: not a readable PyTorch state dict ({why_unreadable(path, exc)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


class FocusMap(nn.Module):
    """Deployment wrapper: RGB [B, 3, H, W] in [0, 1] → in-focus probability [B, 1, H, W]."""

    def __init__(self, model: MultiStreamBTBNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).final)
