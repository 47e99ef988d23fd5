"""Export (btbnet.export, `btbnet export`): ONNX and TorchScript files for any batch and H × W."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import btbnet.model as model_module
from btbnet import BTBNetConfig, build_model, export, save_checkpoint
from btbnet.cli import main
from btbnet.data import to_tensor
from btbnet.export import CHECK_SIZES, EXAMPLE_SIZE, FORMATS, export_model, traced_scaled_size
from btbnet.model import FocusMap, resize, scaled_size
from btbnet.predict import predict_map, prob_to_uint8

REPO = Path(__file__).resolve().parents[1]
# Two streams (one resized), FNet and an RRNet step, pooling: every shape-dependent path.
TINY = BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.6), rrnet_steps=1)
# (N, H, W), none of them the traced EXAMPLE_SIZE: odd sides, portrait, landscape, batches.
SIZES = ((1, 80, 48), (2, 96, 128), (3, 33, 17))
TOLERANCE = 1e-4  # float32: the ONNX graph's kernels round differently from PyTorch's
DIFF_LINE = r"max abs difference vs PyTorch (\S+) \(inputs 1×3×80×48, 2×3×96×128\)$"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def varied(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its 1-channel logit convs at full scale, not HEAD_INIT_STD: its maps then
    span ~0.15…0.98 instead of 0.5 ± 0.01, so that a wrong resize in a graph shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1:
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return varied(build_model(TINY))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, model, tmp_path_factory) -> tuple[str, Path, export.ExportReport]:
    fmt = request.param
    out = tmp_path_factory.mktemp(fmt) / f"tiny.{fmt}"
    return fmt, out, export_model(model, out, fmt)


def load_exported(path: Path, fmt: str):
    """The file loaded with its runtime (not through btbnet.export), as a function of a tensor."""
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))
        return lambda x: loaded(x)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def test_the_exported_file_matches_pytorch_at_sizes_it_was_not_traced_at(model, exported):
    fmt, path, _ = exported
    run = load_exported(path, fmt)
    for n, h, w in SIZES:
        assert (h, w) != EXAMPLE_SIZE
        x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            expected = torch.sigmoid(model(x).final)
        got = run(x)
        assert got.shape == (n, 1, h, w) and got.dtype == torch.float32
        assert (got - expected).abs().max().item() < TOLERANCE, (fmt, n, h, w)
        assert 0 <= got.min() and got.max() <= 1


def test_the_input_is_what_predict_feeds_the_network(model, exported):
    """A uint8 photo as `to_tensor` makes it → the file → the 0…255 map of `predict_map`."""
    fmt, path, _ = exported
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    prob = load_exported(path, fmt)(to_tensor(image).unsqueeze(0))
    focus = prob_to_uint8(prob[0, 0].clone())
    expected = predict_map(model, image)
    assert np.abs(focus.astype(int) - expected).max() <= 1  # a probability next to a rounding edge
    assert (focus == expected).mean() > 0.99


def test_export_model_reports_the_checked_sizes_and_leaves_only_the_file(exported):
    fmt, path, report = exported
    assert (report.format, report.path, report.sizes) == (fmt, path, CHECK_SIZES)
    assert 0 <= report.max_abs_diff < TOLERANCE
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert report.line().startswith(f"{fmt} {path}: max abs difference vs PyTorch ")


@pytest.mark.parametrize("exported", ["onnx"], indirect=True)
def test_the_onnx_graph_has_symbolic_batch_height_and_width(exported):
    _, path, _ = exported
    import onnx

    graph = onnx.load(str(path)).graph
    for value, channels in ((graph.input[0], 3), (graph.output[0], 1)):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["N", channels, "H", "W"], value.name


def test_traced_stream_sizes_round_as_the_model_does():
    for scale in (1.0, 0.8, 0.75, 0.6, 0.55, 0.5, 0.3, 0.01):
        for side in range(1, 400):
            traced = traced_scaled_size((torch.tensor(side), torch.tensor(side + 1)), scale)
            assert tuple(int(t) for t in traced) == scaled_size((side, side + 1), scale), (scale, side)
    assert traced_scaled_size((7, 9), 0.5) == scaled_size((7, 9), 0.5)  # ints: the model's own


def test_a_stream_whose_scale_keeps_the_traced_size_still_resizes_at_other_sizes(tmp_path):
    """round(64 · 0.995) = 64: at the traced size that stream is not resized; at 128 px it is (127)."""
    torch.manual_seed(0)
    model = varied(build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.995), rrnet_steps=0)))
    assert scaled_size(EXAMPLE_SIZE, 0.995) == EXAMPLE_SIZE and scaled_size((96, 128), 0.995) == (96, 127)
    path = tmp_path / "m.pt"
    export_model(model, path, "torchscript", check_sizes=[(1, 64, 64)])  # checked at the traced size only
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (load_exported(path, "torchscript")(x) - FocusMap(model)(x)).abs().max() < TOLERANCE


def test_a_file_that_differs_from_pytorch_is_not_written(model, tmp_path, monkeypatch):
    real_runner = export.runner
    monkeypatch.setattr(export, "runner", lambda path, fmt: lambda x: real_runner(path, fmt)(x) + 1e-3)
    with pytest.raises(ValueError, match=r"differs from PyTorch by 1\.0e-03, over 1e-04; not written"):
        export_model(model, tmp_path / "m.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []
    assert (model_module.scaled_size, model_module.resize) == (scaled_size, resize)  # the model's own again


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_writes_the_default_file_and_prints_the_difference(model, checkpoint, fmt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--format", fmt, "--model", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    name = {"onnx": "btbnet.onnx", "torchscript": "btbnet.pt"}[fmt]
    assert out.count("\n") == 1 and out.startswith(f"{fmt} {name}: ")
    diff = float(re.search(DIFF_LINE, out.strip()).group(1))
    assert 0 <= diff < TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == [name]
    x = torch.rand(1, 3, 40, 24)
    with torch.inference_mode():
        expected = FocusMap(model)(x)  # the checkpoint's weights
    assert (load_exported(tmp_path / name, fmt)(x) - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("content", [None, b"not a checkpoint"], ids=["missing", "garbage"])
def test_cli_bad_checkpoint_exits_2_naming_it_and_writes_nothing(content, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    if content is not None:
        ckpt.write_bytes(content)
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", "--format", "onnx", "--model", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"btbnet: error: {ckpt}: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_without_onnxruntime_says_how_to_install_it(checkpoint, tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None):
        return None if name == "onnxruntime" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", "--model", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "btbnet: error: --format onnx needs onnxruntime, not installed; "
        "install with: pip install 'onnx>=1.16' 'onnxruntime>=1.18'\n"
    )
    assert list(tmp_path.iterdir()) == []
    # TorchScript needs neither package
    assert main(["export", "--format", "torchscript", "--model", str(checkpoint), "--out", str(tmp_path / "m.pt")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_cli_needs_a_format(capsys):
    assert main(["export"]) == 2
    assert "--format" in capsys.readouterr().err


def test_importing_btbnet_loads_no_onnx_package():
    code = "import sys, btbnet, btbnet.cli, btbnet.export; print(sorted(m for m in sys.modules if m.startswith('onnx')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
