"""Precision, memory layout and compilation (btbnet.speed) on CPU: what a GPU run relies on.

Tolerances (stated in the docs/speed.md): bf16 probabilities within 0.06 of fp32's
at most and 0.01 on average for these tiny models; channels_last within 1e-5 of NCHW.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btbnet import BTBNetConfig, ConfigError, build_model
from btbnet.checkpoint import save_checkpoint
from btbnet.predict import predict_maps
from btbnet.speed import SpeedConfig
from btbnet.train import OptimConfig, train_step
from tests.test_model import CONFIGS, tiny

BF16 = SpeedConfig(precision="bf16")


def batch(seed: int = 0, h: int = 24, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, h, w, generator=g), (torch.rand(2, 1, h, w, generator=g) > 0.5).float()


@pytest.mark.parametrize(("variant", "scales", "rrnet_steps", "norm"), CONFIGS)
def test_a_bf16_step_has_finite_fp32_losses_and_a_gradient_for_every_parameter(variant, scales, rrnet_steps, norm):
    model = tiny(variant, scales, rrnet_steps, norm=norm)
    images, masks = batch()
    grads = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients, not the update, are checked
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).final.dtype == torch.bfloat16  # the forward pass really runs in bf16
    terms = train_step(model, images, masks, optimizer, OptimConfig(), speed=BF16)
    assert all(np.isfinite(v) for v in terms.values()), terms
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, f"{name}: the weights stay fp32"
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient"
        grads[name] = p.grad
    assert sum(bool(g.any()) for g in grads.values()) >= len(grads) * 0.95


def test_bf16_losses_are_close_to_fp32s():
    model = tiny(scales=(1.0, 0.8, 0.6), rrnet_steps=3)
    images, masks = batch(1)
    fp32 = train_step(model, images, masks, torch.optim.SGD(model.parameters(), lr=0.0), OptimConfig())
    bf16 = train_step(model, images, masks, torch.optim.SGD(model.parameters(), lr=0.0), OptimConfig(), speed=BF16)
    for key in fp32:
        assert bf16[key] == pytest.approx(fp32[key], rel=0.02), key


def test_bf16_predictions_are_within_the_stated_tolerance_of_fp32():
    torch.manual_seed(3)
    model = build_model(BTBNetConfig(width=0.0625, scales=(1.0, 0.8), rrnet_steps=1))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    fp32 = predict_maps(model, [image])[0].astype(int)
    bf16 = predict_maps(model, [image], speed=BF16)[0].astype(int)
    assert fp32.shape == bf16.shape == (40, 56)
    assert np.abs(fp32 - bf16).max() <= 0.06 * 255 and np.abs(fp32 - bf16).mean() <= 0.01 * 255


def test_channels_last_gives_the_nchw_output():
    model = tiny(scales=(1.0, 0.8, 0.6), rrnet_steps=2).eval()
    images, _ = batch(2)
    with torch.no_grad():
        nchw = model(images).final
        layout = SpeedConfig(channels_last=True)
        nhwc = layout.prepare(model)(layout.layout(images)).final
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=1e-5)


def test_a_channels_last_model_saves_the_same_checkpoint_bytes(tmp_path):
    a = save_checkpoint(tiny(), tmp_path / "nchw.pt")
    model = SpeedConfig(channels_last=True).prepare(tiny())
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    b = save_checkpoint(model, tmp_path / "nhwc.pt")
    assert a.read_bytes() == b.read_bytes()


def test_an_fp16_step_scales_the_loss_and_stays_finite():
    model = tiny()
    images, masks = batch(4)
    speed = SpeedConfig(precision="fp16")
    scaler = speed.scaler("cpu")
    assert scaler.is_enabled() and not BF16.scaler("cpu").is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    terms = train_step(model, images, masks, torch.optim.SGD(model.parameters(), lr=1e-3), OptimConfig(), speed=speed, scaler=scaler)
    assert all(np.isfinite(v) for v in terms.values())
    assert scaler.get_scale() > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the step was taken


def test_a_bad_precision_names_the_key():
    with pytest.raises(ConfigError, match=r"^precision: must be one of \['bf16', 'fp16', 'fp32'\], got 'fp64'"):
        SpeedConfig(precision="fp64")


@pytest.mark.slow
def test_a_compiled_model_predicts_as_the_eager_one():
    model = tiny(scales=(1.0,), rrnet_steps=0).eval()
    images, _ = batch(5, 16, 16)
    with torch.no_grad():
        eager = model(images).final
        compiled = SpeedConfig(compile=True).prepare(model)(images).final
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_predict_cli_takes_precision_and_layout(tmp_path):
    from PIL import Image

    from btbnet.cli import main

    checkpoint = save_checkpoint(tiny(seed=7), tmp_path / "m.pt")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(image)
    maps = {}
    for name, flags in {"fp32": [], "bf16": ["--precision", "bf16"], "nhwc": ["--channels-last"]}.items():
        assert main(["predict", str(image), "--model", str(checkpoint), "--out", str(tmp_path / name), *flags]) == 0
        maps[name] = np.asarray(Image.open(tmp_path / name / "photo.png")).astype(int)
    assert np.abs(maps["nhwc"] - maps["fp32"]).max() <= 1
    assert np.abs(maps["bf16"] - maps["fp32"]).max() <= 0.06 * 255
    assert main(["predict", str(image), "--precision", "fp64"]) == 2  # argparse's own refusal


def test_the_speed_bench_reports_every_setting_against_the_flop_floor(tmp_path):
    """bench/bench_speed.py, which bench/gpu_check.sh runs on a GPU, on a tiny CPU case."""
    import importlib.util
    import json

    from tests.pipeline_helpers import REPO

    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "bench" / "bench_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--width", "0.0625", "--size", "32", "--variants", "fast", "--batch-sizes", "1", "2",
                "--settings", "fp32", "bf16+cl", "--repeats", "1", "--warmup", "0", "--json", str(tmp_path / "rows.json")])  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["setting"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16+cl", 1), ("bf16+cl", 2)]
    for r in rows:
        assert r["ms_per_image"] > 0 and r["x_floor"] == pytest.approx(r["ms_per_image"] / r["floor_ms"])
        assert r["floor_ms"] == pytest.approx(2 * r["gmacs"] * 1e9 / 989e12 * 1e3)
