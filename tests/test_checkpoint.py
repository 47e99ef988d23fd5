"""Checkpoints: weights + config round trip, DDP unwrapping, atomic writes, clear errors."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from btbnet import BTBNetConfig, build_model, load_checkpoint, save_checkpoint
from btbnet.checkpoint import read_config, unwrap

CONFIG = BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.8), rrnet_steps=2)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


class FakeDDP(nn.Module):
    """What matters of DistributedDataParallel here: the model sits in `.module`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def assert_same_predictions(a: nn.Module, b: nn.Module) -> None:
    image = torch.rand(2, 3, 15, 21)
    with torch.no_grad():
        pa, pb = a(image), b(image)
    assert torch.equal(pa.final, pb.final)
    for sa, sb in zip(pa.streams, pb.streams, strict=True):
        assert torch.equal(sa, sb)


def test_round_trip_keeps_config_weights_and_outputs(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "runs" / "best.pt", epoch=3, f_measure=0.5)
    assert path == tmp_path / "runs" / "best.pt" and path.is_file()  # parent folders created

    loaded = load_checkpoint(path)
    assert loaded.config == CONFIG
    assert not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert_same_predictions(model, loaded)


def test_payload_is_plain_data_with_the_extras(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "ckpt.pt", epoch=3, f_measure=0.5)
    payload = torch.load(path, weights_only=True)  # no pickled classes: safe to load
    assert payload["config"] == CONFIG.to_dict()
    assert payload["extra"] == {"epoch": 3, "f_measure": 0.5}


def test_ddp_wrapper_is_unwrapped(model: nn.Module, tmp_path: Path) -> None:
    wrapped = FakeDDP(model)
    assert unwrap(wrapped) is model
    assert unwrap(model) is model

    path = save_checkpoint(wrapped, tmp_path / "ddp.pt")
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert not any(k.startswith("module.") for k in keys)
    assert_same_predictions(model, load_checkpoint(path))


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"garbage, not a zip archive", b""])
def test_corrupt_checkpoint_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a btbnet checkpoint (not a torch.save archive)"


def test_truncated_checkpoint_is_named(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a btbnet checkpoint (truncated or corrupt archive)"


def test_a_zip_not_from_torch_gives_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a btbnet checkpoint (") and "\n" not in message
    assert len(message) < len(str(path)) + 160


def test_state_dict_without_config_is_rejected(model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)  # a bare state dict, not a btbnet checkpoint
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_rejected(model: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 0.125  # claims twice the channels the weights have
    torch.save(payload, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_save_leaves_only_the_checkpoint(model: nn.Module, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path / "a.pt")
    save_checkpoint(model, tmp_path / "a.pt")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_failed_save_keeps_the_previous_checkpoint(
    model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(model, tmp_path / "a.pt", epoch=1)
    before = path.read_bytes()

    def crash_midway(obj: object, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # the temporary file is gone


def test_identical_saves_give_identical_bytes(model: nn.Module, tmp_path: Path) -> None:
    """DVC hashes models by content: the same weights must not look like a new model."""
    a = save_checkpoint(model, tmp_path / "a.pt", epoch=1).read_bytes()
    b = save_checkpoint(model, tmp_path / "sub" / "b.pt", epoch=1).read_bytes()
    assert a == b


def test_read_config_returns_the_architecture(model: nn.Module, tmp_path: Path) -> None:
    from btbnet.checkpoint import read_config

    path = save_checkpoint(model, tmp_path / "a.pt")
    assert read_config(path) == unwrap(model).config


def test_rejected_pickle_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"config": object(), "state_dict": {}}, path)  # needs a full unpickler to load
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    # not torch's paragraph, which advises the unsafe weights_only=False
    assert str(info.value) == f"{path}: not a btbnet checkpoint (refused: it holds Python objects, not plain weights)"


def test_a_config_edited_after_saving_is_refused_even_when_the_weights_fit(model: nn.Module, tmp_path: Path) -> None:
    """`fast` → `paper` and another RRNet depth keep every weight's shape: without the digest
    the edited checkpoint would load and give other maps."""
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"] |= {"variant": "paper", "rrnet_steps": 1}
    torch.save(payload, path)
    for read in (load_checkpoint, read_config):
        with pytest.raises(ValueError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path}: its config or weights were changed after it was saved (digest ") and "\n" not in message
        assert '"variant": "paper"' in message  # what it says now, for the one who edited it


def test_weights_that_do_not_fit_keep_the_detail_in_one_line(model: nn.Module, tmp_path: Path) -> None:
    """A format-1 checkpoint (no digest) whose config claims other shapes: torch's several-line
    message becomes one line that still says which tensors and shapes."""
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    payload = torch.load(path, weights_only=True)
    del payload["digest"]
    payload["format_version"] = 1
    payload["config"]["width"] = 0.125
    torch.save(payload, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: weights do not match the stored config (") and "\n" not in message
    assert re.search(r"size mismatch for streams\.0\.backbone\.blocks\.0\.convs\.0\.weight: copying a param with shape torch\.Size\(\[4, 3, 3, 3\]\)", message), message
