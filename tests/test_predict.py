"""Inference: predict_map, the overlay picture and predict_paths' files."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from btbnet import BTBNetConfig, build_model, predict
from btbnet.data import to_tensor
from btbnet.model import Prediction
from btbnet.pretrained import load_pretrained
from btbnet.predict import (
    MAX_PIXELS,
    VIEWS,
    OverBudget,
    check_budget,
    fit_within,
    model_input,
    predict_map,
    predict_maps,
    with_views,
)
from btbnet.speed import SpeedConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.5), rrnet_steps=1))


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save_image(array: np.ndarray, path):
    """[H, W] → grey "L", [H, W, 3] → RGB, [H, W, 4] → RGBA."""
    Image.fromarray(array).save(path)
    return path


def test_predict_map_is_the_scaled_sigmoid_of_the_final_map(model):
    image = random_image(13, 21)
    focus = predict_map(model, image)
    assert focus.dtype == np.uint8 and focus.shape == (13, 21)
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
        expected = torch.sigmoid(model(x).final)[0, 0].mul(255).round().numpy()
    np.testing.assert_array_equal(focus, expected.astype(np.uint8))
    assert focus.min() != focus.max()  # a real map, not a constant


def test_predict_map_restores_the_training_mode(model):
    model.train()
    predict_map(model, random_image(8, 8))
    assert model.training
    model.eval()
    predict_map(model, random_image(8, 8))
    assert not model.training


def test_max_size_downscales_the_input_and_upscales_the_map(model):
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        image = random_image(30, 60)
        small = predict_map(model, image, max_size=20)
        native = predict_map(model, image, max_size=60)  # fits: native size
    finally:
        handle.remove()
    assert seen == [(1, 3, 10, 20), (1, 3, 30, 60)]
    assert small.shape == native.shape == (30, 60) and small.dtype == np.uint8
    np.testing.assert_array_equal(native, predict_map(model, image))
    assert not np.array_equal(small, native)


def test_an_image_over_the_budget_is_refused_before_the_model_runs(model):
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        image = random_image(40, 60)
        with pytest.raises(OverBudget) as info:  # a ValueError
            predict_map(model, image, max_pixels=1000)
        assert seen == []
        assert str(info.value) == (
            "image: 60×40 px is 2,400 pixels for the model, over the budget of 1,000; "
            "use max_size=38 to downscale, or max_pixels=2400 to raise the budget"
        )
        # the budget counts the pixels after max_size; both ways the message gives work
        assert predict_map(model, image, max_size=38, max_pixels=1000).shape == (40, 60)
        assert predict_map(model, image, max_pixels=2400).shape == (40, 60)
        assert predict_map(model, image, max_pixels=None).shape == (40, 60)
    finally:
        handle.remove()
    assert seen == [(1, 3, 25, 38), (1, 3, 40, 60), (1, 3, 40, 60)]
    with pytest.raises(ValueError, match=r"^max_pixels: must be an integer >= 1 or null, got 0$"):
        predict_map(model, image, max_pixels=0)


def test_the_default_budget_refuses_a_large_photo_at_native_size():
    assert check_budget((2000, 2000), None, MAX_PIXELS) == (2000, 2000)  # the documented 4-megapixel budget
    with pytest.raises(OverBudget):
        check_budget((2000, 2001), None, MAX_PIXELS)
    with pytest.raises(OverBudget, match="8000×6000 px is 48,000,000 pixels.* max_size=2309 .* max_pixels=48000000 "):
        check_budget((6000, 8000), None, MAX_PIXELS)
    assert check_budget((6000, 8000), 2309, MAX_PIXELS) == (1732, 2309)
    with pytest.raises(OverBudget, match=r"\(4000×3000 at max_size 4000\) is 12,000,000 pixels"):
        check_budget((6000, 8000), 4000, MAX_PIXELS)


def test_downscaling_makes_no_full_resolution_rgb_float_copy(monkeypatch):
    image = random_image(30, 60)
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, **kw: calls.append(tuple(x.shape)) or interpolate(x, **kw))
    small = model_input(image, (10, 20), "cpu")
    assert calls == [(1, 1, 30, 60)] * 3  # one channel at a time
    joint = interpolate(to_tensor(image)[None], size=(10, 20), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(small, joint)  # the same numbers as one 3-channel downscale
    assert torch.equal(model_input(image, (30, 60), "cpu"), to_tensor(image)[None])


def test_fit_within():
    assert fit_within((30, 60), None) == (30, 60)
    assert fit_within((30, 60), 60) == (30, 60)
    assert fit_within((30, 60), 20) == (10, 20)
    assert fit_within((601, 3), 100) == (100, 1)  # never 0 px


def test_predict_map_rejects_bad_input(model):
    with pytest.raises(ValueError, match="image"):
        predict_map(model, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="image"):
        predict_map(model, np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^max_size: must be an integer >= 1 or null, got 0$"):
        predict_map(model, random_image(8, 8), max_size=0)
    with pytest.raises(ValueError, match=r"^max_size: must be an integer >= 1 or null, got True$"):
        predict_map(model, random_image(8, 8), max_size=True)


def test_predict_maps_matches_predict_map_and_counts_the_batch_in_the_budget(model):
    images = [random_image(20, 30, seed=i) for i in range(3)] + [random_image(21, 30, seed=9)]
    maps = predict_maps(model, images, max_size=15)  # 20×30 and 21×30 both seen at 10×15
    assert [m.shape for m in maps] == [(20, 30)] * 3 + [(21, 30)]
    with torch.inference_mode():  # the same probabilities, before rounding to 8 bits
        batch = torch.cat([model_input(image, (10, 15), "cpu") for image in images])
        together = model(batch).final.sigmoid()
        alone = torch.cat([model(model_input(image, (10, 15), "cpu")).final.sigmoid() for image in images])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    for image, focus in zip(images, maps):
        assert np.abs(focus.astype(int) - predict_map(model, image, max_size=15).astype(int)).max() <= 1
    assert predict_maps(model, []) == []
    with pytest.raises(OverBudget, match=r"^batch of 4 images: 4 × 30×20 px \(15×10 at max_size 15\) is 600 pixels"):
        predict_maps(model, images, max_size=15, max_pixels=599)
    assert len(predict_maps(model, images, max_size=15, max_pixels=600)) == 4
    with pytest.raises(ValueError, match="different sizes"):
        predict_maps(model, [random_image(10, 10), random_image(10, 12)])


def test_use_all_cores_unless_the_threads_are_set_elsewhere(monkeypatch):
    monkeypatch.setattr(predict, "available_cpus", lambda: 3)
    for var in predict.THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(predict, "_TORCH_THREADS_AT_IMPORT", torch.get_num_threads() + 1)
    assert predict.use_all_cores() == torch.get_num_threads() != 3  # changed since import: left alone
    monkeypatch.setattr(predict, "_TORCH_THREADS_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert predict.use_all_cores() == torch.get_num_threads() != 3  # the user's setting: left alone
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert predict.use_all_cores() == 3 == torch.get_num_threads()  # conftest restores the count


def test_available_cpus_are_the_ones_this_process_may_use():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert predict.available_cpus() == expected >= 1


# --- test-time views --------------------------------------------------------------------------


class PixelModel(torch.nn.Module):
    """A map that depends on each pixel alone (its red value): every view, turned back, gives
    the same map, so averaging views must change nothing."""

    def forward(self, x):
        return Prediction(final=(x[:, :1] - 0.5) * 8, streams=[])


class RampModel(torch.nn.Module):
    """A map that depends on the position alone: logit = column / width, rising to the right."""

    def forward(self, x):
        w = x.shape[-1]
        ramp = torch.arange(w, dtype=torch.float32).div(w).expand(*x.shape[:1], 1, x.shape[-2], w)
        return Prediction(final=ramp * 6, streams=[])


@pytest.mark.parametrize("views", sorted(VIEWS))
def test_views_of_a_pixelwise_model_give_its_own_map(views):
    image = random_image(13, 22, seed=3)  # not square: quarter turns swap height and width
    np.testing.assert_array_equal(predict_map(with_views(PixelModel(), views), image), predict_map(PixelModel(), image))


def test_the_flip_view_averages_the_map_with_its_mirror():
    image = random_image(9, 16)
    ramp = predict_map(RampModel(), image).astype(int)
    assert ramp[0, -1] - ramp[0, 0] > 100  # the model alone: dark left, bright right
    flipped = predict_map(with_views(RampModel(), "flip"), image).astype(int)
    np.testing.assert_array_equal(flipped, flipped[:, ::-1])  # symmetric left-right
    expected = (torch.sigmoid(torch.arange(16) / 16 * 6) + torch.sigmoid(torch.arange(15, -1, -1) / 16 * 6)) / 2
    np.testing.assert_array_equal(flipped[0], expected.mul(255).round().int().numpy())


@pytest.mark.parametrize("views", ["flip", "dihedral"])
def test_views_of_the_network_are_the_mean_of_its_maps_of_turned_images(views):
    # The released model on a picture sharp at its top left only: maps with real structure.
    model = load_pretrained()
    image = random_image(60, 84, seed=5)
    image[20:] = image[20:].mean(axis=(0, 1), dtype=np.float64).astype(np.uint8)
    image[:, 30:] = image[:, 30:].mean(axis=(0, 1), dtype=np.float64).astype(np.uint8)
    maps = []  # each view computed on its own: the image turned with numpy, its map turned back
    for turns, flip in VIEWS[views]:
        view = np.rot90(image[:, ::-1] if flip else image, turns)
        back = np.rot90(predict_map(model, np.ascontiguousarray(view)).astype(np.float64), -turns)
        maps.append(back[:, ::-1] if flip else back)
    expected = np.mean(maps, axis=0)
    got = predict_map(with_views(model, views), image)
    assert got.shape == (60, 84)
    assert np.abs(got - expected).max() <= 1.0  # each map was rounded to 0…255 before the mean
    assert np.abs(maps[0] - maps[-1]).max() > 30  # the views disagree: their mean is a real test


def test_views_keep_batches_budgets_and_speed_settings(model):
    images = [random_image(20, 28, seed=s) for s in range(3)]
    tta = with_views(model, "dihedral")
    one_by_one = [predict_map(tta, image) for image in images]
    for got, expected in zip(predict_maps(tta, images), one_by_one):
        np.testing.assert_array_equal(got, expected)
    cl = predict_maps(SpeedConfig(channels_last=True).prepare(tta), images, speed=SpeedConfig(channels_last=True))
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(cl, one_by_one)) <= 1
    with pytest.raises(OverBudget):
        predict_map(tta, images[0], max_pixels=100)


def test_views_train_nothing_and_restore_the_mode(model):
    tta = with_views(model, "flip")
    model.train()
    predict_map(tta, random_image(12, 12))
    assert model.training and all(m.training for m in model.modules())
    assert [p for p in tta.parameters()] == [p for p in model.parameters()]


def test_unknown_views_are_refused_by_name(model):
    assert with_views(model, "none") is model
    with pytest.raises(ValueError, match=r"views: must be one of \['dihedral', 'flip', 'none'\], got 'rot'"):
        with_views(model, "rot")


def test_the_tta_bench_scores_each_setting_as_evaluate_does(tmp_path):
    """bench/bench_tta.py, whose validation figures are in the README, on the embedded test pairs."""
    import importlib.util
    import json

    from btbnet.evaluation import evaluate
    from tests.pipeline_helpers import REPO

    spec = importlib.util.spec_from_file_location("bench_tta", REPO / "bench" / "bench_tta.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = REPO / "data" / "embedded" / "defocus" / "test"
    bench.main(["--data", str(data), "--views", "none", "flip", "--max-size", "64", "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["tta"], r["views"], r["images"]) for r in rows] == [("none", 1, 16), ("flip", 2, 16)]
    model = load_pretrained()
    for r in rows:
        tta = with_views(model, r["tta"])
        direct = evaluate({"m": lambda image: predict_map(tta, image, max_size=64)}, data, "blurred", progress=False).results["m"]
        assert r["f_measure"] == pytest.approx(direct["paper"]["f_measure"]) and r["mae"] == pytest.approx(direct["paper"]["mae"])
        assert r["ddff_f_measure"] == pytest.approx(direct["ddff"]["f_measure"]) and r["s_per_image"] > 0
    assert rows[0]["f_measure"] != rows[1]["f_measure"]


@pytest.mark.parametrize("max_size", [None, 48])
def test_the_readme_picture_script_tiles_photo_truth_and_map_of_the_split_s_first_stems(tmp_path, capsys, max_size):
    """docs/make_example.py, which draws the README's picture, on the embedded test pairs, the
    model seeing them at its own scale or at --max-size."""
    import importlib.util

    from btbnet.evaluation import evaluate
    from btbnet.images import resize
    from btbnet.pretrained import DEFAULT, load_model
    from tests.pipeline_helpers import REPO

    spec = importlib.util.spec_from_file_location("make_example", REPO / "docs" / "make_example.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = REPO / "data" / "embedded" / "defocus" / "test"
    (tmp_path / "split.txt").write_text("defocus_0043\n# a comment\ndefocus_0041\ndefocus_0050\n")
    out = tmp_path / "example.png"
    scale = ["--max-size", str(max_size)] if max_size else []
    script.main(["--data", str(data), "--stems", str(tmp_path / "split.txt"), "--count", "2", "--width", "32", "--out", str(out)] + scale)
    picture = np.asarray(Image.open(out))
    assert picture.shape == (2 * 33 + 1, 3 * 33 + 1, 3)  # 2 rows × 3 tiles of 32×32 (96×96 shrunk), 1 px gaps
    model, own_scale = load_model(DEFAULT)
    seen_at = max_size or own_scale
    for row, stem in enumerate(["defocus_0041", "defocus_0043"]):  # in the folder's order
        image = np.asarray(Image.open(data / "image" / f"{stem}.png").convert("RGB"))
        blurred = np.asarray(Image.open(data / "gt" / f"{stem}.png").convert("L"))
        y = 1 + row * 33
        for col, tile in enumerate([image, 255 - blurred, predict_map(model, image, max_size=seen_at)]):
            want = resize(tile, (32, 32), Image.Resampling.BILINEAR)
            got = picture[y : y + 32, 1 + col * 33 : 33 + col * 33]
            assert np.array_equal(got, np.repeat(want[..., None], 3, axis=2) if want.ndim == 2 else want), (stem, col)
    paper = evaluate({"m": lambda im: predict_map(model, im, max_size=seen_at)}, data, "blurred", progress=False,
                     stems=["defocus_0041", "defocus_0043"]).results["m"]["paper"]  # fmt: skip
    assert capsys.readouterr().out == f"{out}: defocus_0043, defocus_0041: F {paper['f_measure']:.3f}, MAE {paper['mae']:.3f}\n"
