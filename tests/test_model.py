"""The network (paper, section 3), its ImageNet initialisation, its config, and its MAC/parameter counts."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from btbnet import BTBNetConfig, ConfigError, Prediction, build_model
from btbnet.config import from_mapping
from btbnet.summary import count_macs, count_parameters, summarize

VARIANTS = ("paper", "fast", "efficientnet-lite0")
VGG_VARIANTS = ("paper", "fast")
LITE0 = "efficientnet-lite0"
NORMS = ("none", "batch")
TABLE2_SCALES = [(1.0,), (1.0, 0.8), (1.0, 0.8, 0.6), (1.0, 0.8, 0.6, 0.4)]  # paper, Table 2
TINY = 0.0625  # width: 4…32 channels instead of 64…512
# Every configuration: variant × scale set of Table 2 × RRNet depth × norm (efficientnet-lite0's
# encoder has BatchNorm whatever `norm` says, so it counts once).
CONFIGS = [
    pytest.param(v, s, r, n, id=f"{v}-{len(s)}S-{r}-{n}")
    for v in VARIANTS for s in TABLE2_SCALES for r in (0, 1, 3) for n in NORMS if not (v == LITE0 and n == "none")
]  # fmt: skip

# Paper channel counts, written out independently of btbnet.model.
VGG16_CONVS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
TOP_BOTTOM = [256, 128, 64, 1]
FRRNET = [64, 128, 64, 1]
VGG16_FEATURES_PARAMS = 14_714_688  # torchvision vgg16().features, a well-known figure


def tiny(variant: str = "paper", scales=(1.0, 0.8), rrnet_steps: int = 1, seed: int = 0, norm: str = "none") -> nn.Module:
    torch.manual_seed(seed)
    return build_model(BTBNetConfig(variant=variant, width=TINY, scales=scales, rrnet_steps=rrnet_steps, norm=norm))


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scales", TABLE2_SCALES, ids=lambda s: f"{len(s)}S")
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_map_has_the_input_size(variant: str, scales: tuple[float, ...]) -> None:
    model = tiny(variant, scales).eval()
    for height, width in [(1, 1), (5, 7), (9, 9), (17, 23), (32, 32)]:
        with torch.no_grad():
            out = model(torch.rand(2, 3, height, width))
        assert isinstance(out, Prediction)
        assert out.final.shape == (2, 1, height, width)
        assert len(out.streams) == len(scales)
        for m in out.streams:
            assert m.shape == (2, 1, height, width)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backbone_resolution_per_variant(variant: str) -> None:
    # paper: all five pooling layers deleted (section 3.1); fast: VGG16's pooling, ceil mode
    stream = tiny(variant).streams[0]
    features = stream.backbone(torch.rand(2, 3, 20, 30))
    sizes = [tuple(f.shape[-2:]) for f in features]
    if variant == "paper":
        assert sizes == [(20, 30)] * 5
    elif variant == "fast":
        assert sizes == [(20, 30), (10, 15), (5, 8), (3, 4), (2, 2)]
    else:  # EfficientNet-Lite0's stages 1, 2, 3, 5, 7: strides 2 … 32, its own channels whatever the width
        assert sizes == [(10, 15), (5, 8), (3, 4), (2, 2), (1, 1)]
    expected = [16, 24, 40, 112, 320] if variant == LITE0 else [4, 8, 16, 32, 32]
    assert [f.shape[1] for f in features] == expected


# --- training: forward + backward ------------------------------------------------------------


@pytest.mark.parametrize(("variant", "scales", "rrnet_steps", "norm"), CONFIGS)
def test_forward_backward_reaches_every_parameter(variant: str, scales: tuple[float, ...], rrnet_steps: int, norm: str) -> None:
    model = tiny(variant, scales, rrnet_steps, norm=norm).train()
    assert (model.rrnet is None) == (rrnet_steps == 0)
    image = torch.rand(2, 3, 13, 18)
    target = (torch.rand(2, 1, 13, 18) > 0.5).float()

    out = model(image)
    # eq. 7 with alpha_n = 1: main loss on M_final, auxiliary loss on every stream
    loss = sum(F.binary_cross_entropy_with_logits(m, target) for m in [out.final, *out.streams])
    loss.backward()

    for m in [out.final, *out.streams]:
        assert torch.isfinite(m).all()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
    dead = [name for name, p in model.named_parameters() if not p.grad.any()]
    assert len(dead) <= len(list(model.parameters())) // 20, f"all-zero gradients: {dead}"


# --- architecture --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_rrnet_steps_change_only_the_final_map(variant: str) -> None:
    weights = tiny(variant, rrnet_steps=3).state_dict()
    image = torch.rand(1, 3, 16, 20)
    outs = {}
    for steps in (0, 1, 3):
        model = tiny(variant, rrnet_steps=steps).eval()
        shared = {k: v for k, v in weights.items() if steps > 0 or not k.startswith("rrnet.")}
        model.load_state_dict(shared)  # same streams, FNet and RRNet for every step count
        with torch.no_grad():
            outs[steps] = model(image)
    for a, b in [(0, 1), (1, 3), (0, 3)]:
        assert not torch.allclose(outs[a].final, outs[b].final), f"rrnet_steps {a} and {b} give the same map"
        for sa, sb in zip(outs[a].streams, outs[b].streams):
            torch.testing.assert_close(sa, sb)


def test_one_stream_per_scale_each_with_its_own_weights() -> None:
    model = tiny(scales=(1.0, 0.8, 0.6, 0.4))
    assert len(model.streams) == 4
    firsts = [s.backbone.blocks[0].convs[0].weight for s in model.streams]
    lasts = [s.top_bottom.steps[-1].lateral.weight for s in model.streams]
    for i in range(4):
        for j in range(i + 1, 4):
            for w in (firsts, lasts):
                assert w[i].data_ptr() != w[j].data_ptr()
                assert not torch.equal(w[i], w[j])


def test_stream_output_has_no_relu_so_logits_can_be_negative() -> None:
    # A ReLU after the last FFIC step would clamp every logit to >= 0 (section 3.1, eq. 6).
    model = tiny(scales=(1.0,), rrnet_steps=0).eval()
    last = model.streams[0].top_bottom.steps[-1]
    with torch.no_grad():
        for conv, bias in [(last.top, -3.0), (last.lateral, -2.0)]:
            conv.weight.zero_()
            conv.bias.fill_(bias)
        out = model(torch.rand(1, 3, 9, 11))
    torch.testing.assert_close(out.streams[0], torch.full((1, 1, 9, 11), -5.0))


@pytest.mark.parametrize("rrnet_steps", [0, 2])
def test_final_conv_has_no_relu(rrnet_steps: int) -> None:
    # eq. 4: the last conv of FNet (and of RRNet, eq. 5) outputs the logit map directly
    model = tiny(rrnet_steps=rrnet_steps).eval()
    last = (model.rrnet or model.fnet).convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-4.0)
        out = model(torch.rand(1, 3, 9, 11))
    torch.testing.assert_close(out.final, torch.full((1, 1, 9, 11), -4.0))


def test_fusion_input_channels_follow_eq2_and_eq5() -> None:
    model = tiny(scales=(1.0, 0.8, 0.6), rrnet_steps=3)
    assert model.fnet.convs[0].in_channels == 3 + 3  # N maps + RGB image (eq. 2)
    assert model.rrnet.convs[0].in_channels == 1 + 3  # one map + RGB image (eq. 5)
    assert [c.out_channels for c in model.fnet.convs] == [4, 8, 4, 1]


def test_fnet_and_rrnet_see_probability_maps_and_the_normalised_image() -> None:
    """Eq. 2 and 5: F⁰ = cat(sigmoid(M¹…Mᴺ), I) with I normalised as VGG16's ImageNet input.

    Feeding the logits, or the raw [0, 1] image, would also run: only the values tell."""
    from btbnet.model import RRNet

    model = tiny(scales=(1.0, 0.5), rrnet_steps=2).eval()
    assert isinstance(model.rrnet, RRNet) and model.rrnet.steps == 2
    seen = {"fnet": [], "rrnet": []}
    model.fnet.convs[0].register_forward_pre_hook(lambda m, args: seen["fnet"].append(args[0].clone()))
    model.rrnet.convs[0].register_forward_pre_hook(lambda m, args: seen["rrnet"].append(args[0].clone()))
    image = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        out = model(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # torchvision's ImageNet statistics
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalised = (image - mean) / std
    (f0,) = seen["fnet"]
    torch.testing.assert_close(f0[:, :2], torch.sigmoid(torch.cat(out.streams, dim=1)))
    torch.testing.assert_close(f0[:, 2:], normalised)
    assert len(seen["rrnet"]) == 2  # two recurrent steps, each on the previous step's map
    for r in seen["rrnet"]:
        assert 0.0 <= float(r[:, :1].min()) and float(r[:, :1].max()) <= 1.0
        torch.testing.assert_close(r[:, 1:], normalised)
    with torch.no_grad():  # the last step's input map is the sigmoid of RRNet's first output
        fused = model.fnet(out.streams, normalised)
        step1 = super(RRNet, model.rrnet).forward([fused], normalised)
    torch.testing.assert_close(seen["rrnet"][1][:, :1], torch.sigmoid(step1))


def test_batch_norm_follows_every_vgg16_conv_only_when_asked() -> None:
    plain, normed = tiny(norm="none"), tiny(norm="batch")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    bns = [m for m in normed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * 13  # two streams × VGG16's 13 convs
    assert [bn.num_features for bn in bns[:13]] == [max(1, round(c * TINY)) for block in VGG16_CONVS for c in block]
    assert all(isinstance(m, nn.BatchNorm2d) is False for m in normed.fnet.modules())  # FNet / RRNet as in the paper
    image = torch.rand(2, 3, 16, 16)
    normed.eval()
    with torch.no_grad():  # eval mode: running statistics, so a sample's map does not depend on its batch
        torch.testing.assert_close(normed(image[:1]).final, normed(image).final[:1])


def test_backbone_and_new_parameters_partition_the_model() -> None:
    model = tiny(scales=(1.0, 0.8, 0.6), rrnet_steps=3)
    backbone = {id(p) for p in model.backbone_parameters()}
    new = {id(p) for p in model.new_parameters()}
    everything = {id(p) for p in model.parameters()}
    assert backbone.isdisjoint(new)
    assert backbone | new == everything
    assert len(backbone) == 3 * 13 * 2  # 13 convs per stream, weight + bias
    assert {id(p) for p in model.fnet.parameters()} <= new


def test_default_model_is_the_papers() -> None:
    with torch.device("meta"):
        model = build_model()
    assert model.config == BTBNetConfig(variant="paper", width=1.0, scales=(1.0, 0.8, 0.6), rrnet_steps=3)
    assert model.streams[0].backbone.blocks[4].convs[2].out_channels == 512


# --- config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, 0.0)}, "scales"),
        ({"scales": (1.0, -0.5)}, "scales"),
        ({"rrnet_steps": -1}, "rrnet_steps"),
        ({"rrnet_steps": 1.5}, "rrnet_steps"),
        ({"variant": "resnet"}, "variant"),
        ({"width": 0}, "width"),
        ({"width": -0.5}, "width"),
    ],
)
def test_config_errors_start_with_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        BTBNetConfig(**kwargs)
    assert err.value.key == key and str(err.value).startswith(f"{key}: ")


def test_a_config_error_keeps_its_key_through_prefixes_and_pickling() -> None:
    """Callers re-key an error by its fields, never by its text; Ray ships it from workers by pickle."""
    with pytest.raises(ConfigError) as err:
        from_mapping(BTBNetConfig, {"scales": [1, "big"]}, prefix="model.")
    assert (err.value.key, err.value.field) == ("model.scales[1]", "model")
    assert err.value.problem == "expected a number, got 'big'"
    moved = pickle.loads(pickle.dumps(err.value.under("pretrain.")))
    assert type(moved) is ConfigError and str(moved) == "pretrain.model.scales[1]: expected a number, got 'big'"


def test_config_dict_round_trip_and_unknown_keys() -> None:
    config = BTBNetConfig(variant="fast", width=0.5, scales=(1, 0.8), rrnet_steps=2)
    assert BTBNetConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["scales"] == [1.0, 0.8]
    with pytest.raises(ConfigError) as err:
        BTBNetConfig.from_dict({**config.to_dict(), "depth": 16})
    assert str(err.value).startswith("depth:")


def test_lite0_normalises_the_image_as_its_weights_were_trained() -> None:
    """TensorFlow's EfficientNet-Lite preprocessing, (pixel − 127) / 128, reaches FNet too."""
    model = tiny(LITE0, scales=(1.0,), rrnet_steps=0).eval()
    seen = []
    model.fnet.convs[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    image = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        model(image)
    torch.testing.assert_close(seen[0][:, 1:], (image * 255 - 127) / 128)


# --- parameter and MAC counts (btbnet.summary) -----------------------------------------------


def test_macs_of_single_layers() -> None:
    assert count_macs(nn.Conv2d(3, 4, 3, padding=1), 5) == 5 * 5 * 4 * 3 * 9
    assert count_macs(nn.Conv2d(3, 4, 3), (5, 7)) == 3 * 5 * 4 * 3 * 9  # valid conv: 3×5 outputs
    assert count_macs(nn.Conv2d(3, 6, 1, groups=3), 4) == 4 * 4 * 6 * 1
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 10))
    assert count_macs(net, 5) == 5 * 5 * 4 * 3 * 9 + 10 * 100


def test_macs_fall_back_to_a_real_pass_when_meta_cannot_run() -> None:
    class ReadsData(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.conv(x).sum().item() > 1e9:  # .item() has no meaning on the meta device
                return x
            return self.conv(x)

    assert count_macs(ReadsData(), 4) == 2 * (4 * 4 * 2 * 3)


@pytest.mark.parametrize("training", [True, False])
def test_counting_leaves_the_model_as_it_was(training: bool) -> None:
    model = tiny().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, 16)
    assert all(m.training == training for m in model.modules())
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu"
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks for m in model.modules())


def test_parameters_of_the_papers_model_counted_by_hand() -> None:
    conv = lambda a, b: 9 * a * b + b  # noqa: E731  3×3 conv with bias
    top_bottom = sum(conv(t, o) + conv(lat, o) for t, lat, o in [(512, 512, 256), (256, 256, 128), (128, 128, 64), (64, 64, 1)])
    stream = VGG16_FEATURES_PARAMS + top_bottom  # 14,714,688 + 3,098,626
    frrnet = lambda c_in: conv(c_in, 64) + conv(64, 128) + conv(128, 64) + conv(64, 1)  # noqa: E731
    expected = 3 * stream + frrnet(3 + 3) + frrnet(1 + 3)
    assert expected == 53_742_280
    with torch.device("meta"):
        model = build_model(BTBNetConfig())
    assert count_parameters(model) == expected
    assert count_parameters(nn.Conv2d(3, 4, 3)) == 3 * 4 * 9 + 4


def conv_chain_macs(area: int, channels: list[int]) -> int:
    return sum(area * a * b * 9 for a, b in zip(channels, channels[1:]))


def hand_macs(variant: str, width: float, size: tuple[int, int], stream_sizes, rrnet_steps: int) -> int:
    """MACs of Figure 3 counted by hand: streams (Figure 4) at their own sizes, FNet, RRNet."""
    ch = lambda c: max(1, round(c * width))  # noqa: E731
    total = 0
    for h, w in stream_sizes:
        if variant == "paper":  # every block at the stream's input size
            areas = [h * w] * 5
        else:  # pooling before blocks 2…5, ceil mode
            areas = [math.ceil(h / 2**b) * math.ceil(w / 2**b) for b in range(5)]
        c_in = 3
        for b, block in enumerate(VGG16_CONVS):
            total += conv_chain_macs(areas[b], [c_in] + [ch(c) for c in block])
            c_in = ch(block[-1])
        c_top = ch(512)
        for k, c in enumerate(TOP_BOTTOM):  # FFIC k: top conv at block 5-k, lateral at block 4-k
            c_out = ch(c) if c > 1 else 1
            total += areas[4 - k] * c_top * c_out * 9
            total += areas[3 - k] * ch(VGG16_CONVS[3 - k][-1]) * c_out * 9
            c_top = c_out
    frr = [ch(c) for c in FRRNET[:-1]] + [1]
    area = size[0] * size[1]
    total += conv_chain_macs(area, [len(stream_sizes) + 3] + frr)
    total += rrnet_steps * conv_chain_macs(area, [4] + frr)
    return total


@pytest.mark.parametrize("variant", VGG_VARIANTS)
def test_model_macs_match_the_hand_count(variant: str) -> None:
    config = BTBNetConfig(variant=variant, width=0.125, scales=(1, 0.8, 0.6), rrnet_steps=2)
    torch.manual_seed(0)
    model = build_model(config)
    expected = hand_macs(variant, 0.125, (20, 30), [(20, 30), (16, 24), (12, 18)], rrnet_steps=2)
    assert count_macs(model, (20, 30)) == expected


def test_paper_macs_scale_with_streams_and_width_squared() -> None:
    def macs(width: float, scales: tuple[float, ...]) -> int:
        with torch.device("meta"):  # no weights allocated, no arithmetic
            model = build_model(BTBNetConfig(width=width, scales=scales, rrnet_steps=0))
        return count_macs(model, 40)

    one, two = macs(0.25, (1,)), macs(0.25, (1, 1))
    assert 1.95 < two / one <= 2.0  # the second stream doubles all but FNet
    assert 3.8 < macs(0.5, (1,)) / one < 4.0  # the RGB input and 1-channel outputs grow linearly


def test_summary_of_the_papers_model() -> None:
    summary = summarize(BTBNetConfig(), 320)
    tb = sum(2 * (c_in * c_out * 9 + c_out) for c_in, c_out in [(512, 256), (256, 128), (128, 64), (64, 1)])
    fnet = conv_chain_macs(1, [6, 64, 128, 64, 1]) + 64 + 128 + 64 + 1
    rrnet = conv_chain_macs(1, [4, 64, 128, 64, 1]) + 64 + 128 + 64 + 1
    sizes = [(320, 320), (256, 256), (192, 192)]
    assert summary == {
        "variant": "paper",
        "width": 1.0,
        "scales": [1.0, 0.8, 0.6],
        "rrnet_steps": 3,
        "size": 320,
        "params": 3 * (VGG16_FEATURES_PARAMS + tb) + fnet + rrnet,
        "gmacs": round(hand_macs("paper", 1.0, (320, 320), sizes, 3) / 1e9, 3),
    }
    assert summarize(BTBNetConfig(variant="fast"), 320)["gmacs"] < summary["gmacs"] / 10
