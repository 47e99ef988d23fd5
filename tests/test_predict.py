"""Inference: predict_map, the overlay picture and predict_paths' files."""

import io
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from btbnet import BTBNetConfig, build_model, predict
from btbnet.data import DataError, to_tensor
from btbnet.model import Prediction
from btbnet.pretrained import load_pretrained
from btbnet.overlay import BACKGROUND, HEADERS, INK, Layout, layout, legend_entries, shade
from btbnet.predict import (
    MAX_PIXELS,
    VIEWS,
    Job,
    OverBudget,
    check_budget,
    fit_within,
    model_input,
    overlay,
    plan_batches,
    predict_jobs,
    predict_map,
    predict_maps,
    predict_paths,
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
    with pytest.raises(ValueError, match="max_pixels"):
        predict_map(model, image, max_pixels=0)


def test_the_default_budget_refuses_a_large_photo_at_native_size():
    assert MAX_PIXELS == 4_000_000
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
    with pytest.raises(ValueError, match="max_size"):
        predict_map(model, random_image(8, 8), max_size=0)


def enlarged(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (what a small image's tile shows)."""
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def tile(picture: np.ndarray, grid: Layout, column: int) -> np.ndarray:
    top, left = grid.origin(column)
    return picture[top : top + grid.tile[0], left : left + grid.tile[1]]


def test_overlay_tiles_enlarge_a_small_image_for_display():
    image = random_image(5, 4)
    focus = np.array([[255, 0, 128, 255]] * 5, dtype=np.uint8)
    picture = overlay(image, focus)
    grid = layout((5, 4))
    assert grid.tile == (320, 256)  # shorter side MIN_TILE, aspect kept: 64× nearest neighbour
    assert picture.shape == (*grid.size, 3) and picture.dtype == np.uint8
    assert picture.shape[0] > grid.header + grid.tile[0] + grid.legend - 1 and picture.shape[1] > 3 * 256
    np.testing.assert_array_equal(tile(picture, grid, 0), enlarged(image, 64))
    np.testing.assert_array_equal(tile(picture, grid, 1), enlarged(np.repeat(focus[:, :, None], 3, axis=2), 64))
    shaded = tile(picture, grid, 2)[::64, ::64].astype(np.float32)  # one pixel per image pixel
    np.testing.assert_array_equal(shaded[:, [0, 3]], image[:, [0, 3]])  # in focus: untouched
    assert np.abs(shaded[:, 1] - image[:, 1]).mean() > 30  # blurred: marked
    with pytest.raises(ValueError, match="focus_map"):
        overlay(image, focus[:, :3])


SCENES = {"underwater blue": (10, 60, 170), "sky": (120, 180, 235), "snow": (250, 250, 252), "night": (5, 5, 12), "grass": (60, 140, 40)}


@pytest.mark.parametrize("colour", SCENES.values(), ids=SCENES.keys())
def test_blurred_regions_stand_out_in_the_overlay_whatever_the_scene_colour(colour):
    """Left half in focus, right half blurred, on a scene of one colour: the blurred half differs
    from the in-focus half (the image's own colour) by a lot, in brightness or in its stripes."""
    image = np.empty((96, 96, 3), np.uint8)
    image[:] = colour
    image = np.clip(image.astype(int) + np.random.default_rng(0).integers(-6, 7, image.shape), 0, 255).astype(np.uint8)  # some texture
    focus = np.zeros((96, 96), np.uint8)
    focus[:, :48] = 255
    marked = shade(image, focus).astype(np.float32)
    sharp, blurred = marked[:, :48], marked[:, 48:]
    np.testing.assert_array_equal(sharp, image[:, :48])
    difference = np.abs(blurred - image[:, 48:].astype(np.float32)).mean(axis=2)  # [96, 48] per pixel
    assert difference.mean() > 35, difference.mean()
    assert (difference > 60).mean() >= 1 / 6 - 0.02  # the stripes: white or black lines (each 1/6 of the pixels), whichever the colour is not
    grey = blurred @ np.array([0.299, 0.587, 0.114], np.float32)
    assert grey.std() > 3 * (image[:, :48].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).std()


def test_overlay_has_column_headers_and_a_legend():
    image, focus = random_image(300, 400), np.zeros((300, 400), np.uint8)
    focus[:, :200] = 255
    picture = overlay(image, focus)
    grid = layout((300, 400))
    assert grid.tile == (300, 400)  # large enough: shown at its own size
    assert picture.shape == (grid.gap + grid.header + 300 + grid.legend, 4 * grid.gap + 3 * 400, 3)
    background = np.array(BACKGROUND, np.uint8)
    for column in range(3):  # text in the header band above every tile, nowhere else in it
        top, left = grid.origin(column)
        band = picture[:top, left : left + 400]
        assert (band != background).any(axis=2).sum() > 50, f"no header above tile {column}"
        assert band.min() <= INK[0] + 40  # dark text on the light background
    gaps = picture[: grid.origin(0)[0], grid.origin(1)[1] - grid.gap : grid.origin(1)[1]]
    assert (gaps == background).all()  # the headers stay within their columns
    legend = picture[grid.origin(0)[0] + 300 :]
    assert legend.shape[0] == grid.legend
    swatches = {colour for colour, _ in legend_entries()}
    drained = shade(np.full((1, 1, 3), (200, 120, 60), np.uint8), np.zeros((1, 1), np.uint8))[0, 0]  # an orange, blurred
    assert tuple(drained) in swatches and (255, 255, 255) in swatches and (0, 0, 0) in swatches
    for colour in swatches:  # each swatch drawn as a filled square
        assert (legend == np.array(colour, np.uint8)).all(axis=2).sum() >= (grid.font - 2) ** 2
    assert (legend != background).any(axis=2).sum() > 3 * grid.font**2 + 500  # and the explanations
    assert [text.split(":")[0] for _, text in legend_entries()] == ["in focus", "blurred", "blurred"]
    assert HEADERS == ("image", "focus map", "overlay")


def test_overlay_text_grows_with_the_image():
    small, large = layout((100, 100)), layout((2000, 3000))
    assert small.tile == (256, 256) and large.tile == (2000, 3000)
    assert small.font == 14 and large.font == 2000 // 18
    assert layout((2000, 30)).tile == (17067, 256)  # a thin strip: its shorter side at MIN_TILE


def test_predict_paths_writes_one_grey_png_per_image(model, tmp_path):
    a = save_image(random_image(12, 20, seed=1), tmp_path / "a.jpg")
    folder = tmp_path / "more"
    folder.mkdir()
    b = save_image(random_image(9, 7, seed=2)[:, :, 0], folder / "b.png")
    c = save_image(np.dstack([random_image(10, 10, seed=3), np.full((10, 10), 7, np.uint8)]), folder / "c.PNG")
    out = tmp_path / "out" / "nested"
    written = predict_paths(model, [a, folder], out, overlay=True, progress=False)
    assert written == [out / "a.png", out / "a_overlay.png", out / "b.png", out / "b_overlay.png",
                       out / "c.png", out / "c_overlay.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp files left
    for source, (h, w) in [(a, (12, 20)), (b, (9, 7)), (c, (10, 10))]:
        with Image.open(out / f"{source.stem}.png") as img:
            assert img.mode == "L" and img.size == (w, h)
            focus = np.asarray(img)
        rgb = np.asarray(Image.open(source).convert("RGB"))
        np.testing.assert_array_equal(focus, predict_map(model, rgb))
        with Image.open(out / f"{source.stem}_overlay.png") as img:
            assert img.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(img), overlay(rgb, focus))


class Console(io.StringIO):
    """A text stream that says whether it is a terminal, as `sys.stderr.isatty()` would."""

    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def test_on_a_terminal_a_progress_bar_for_several_images(model, tmp_path):
    images = [save_image(random_image(6, 8, seed=i), tmp_path / f"{i}.png") for i in range(2)]
    one, two, quiet = Console(True), Console(True), Console(True)
    predict_paths(model, images[:1], tmp_path / "one", stream=one)
    predict_paths(model, images, tmp_path / "two", stream=two)
    predict_paths(model, images, tmp_path / "quiet", progress=False, stream=quiet)
    assert one.getvalue() == "" and quiet.getvalue() == ""
    bar = two.getvalue()
    assert "btbnet predict" in bar and "\r" in bar and "2/2" in bar  # tqdm's frames
    assert " -> " not in bar


def test_elsewhere_one_line_per_file_and_no_bar(model, tmp_path, monkeypatch):
    images = [save_image(random_image(6, 8, seed=i), tmp_path / f"{i}.png") for i in range(3)]
    out = tmp_path / "out"
    log = Console(False)
    predict_paths(model, images, out, overlay=True, stream=log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "btbnet predict" not in log.getvalue()
    assert len(lines) == 3
    for line, source in zip(lines, images):
        assert re.fullmatch(
            rf"{re.escape(str(source))} -> {re.escape(str(out / source.stem))}\.png, "
            rf"{re.escape(str(out / source.stem))}_overlay\.png \(8×6, \d+\.\d\d s\)", line
        ), line
    # the default stream is stderr, whatever it is when predict_paths runs
    monkeypatch.setattr(sys, "stderr", Console(False))
    predict_paths(model, images[:1], tmp_path / "default")
    assert sys.stderr.getvalue().startswith(f"{images[0]} -> ")
    monkeypatch.setattr(sys, "stderr", Console(False))
    predict_paths(model, images[:1], tmp_path / "silent", progress=False)
    assert sys.stderr.getvalue() == ""


def test_batched_maps_equal_one_at_a_time(model, tmp_path):
    """Batch 4 writes the maps of batch 1: identical here; asserted to within one grey level
    (a batched convolution may sum in another order: float rounding can flip a .5)."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    shapes = [(24, 32), (24, 32), (30, 40), (24, 32), (33, 44), (24, 32), (18, 24), (24, 32), (30, 40)]
    for i, shape in enumerate(shapes):  # at max_size 32 all are seen at 24×32 but #6, 18×24
        save_image(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), folder / f"{i}.png")
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        single = predict_paths(model, [folder], tmp_path / "one", max_size=32, progress=False)
        assert seen == [(1, 3, 24, 32)] * 6 + [(1, 3, 18, 24)] + [(1, 3, 24, 32)] * 2  # input order
        seen.clear()
        batched = predict_paths(model, [folder], tmp_path / "four", max_size=32, progress=False, batch_size=4)
    finally:
        handle.remove()
    assert seen == [(4, 3, 24, 32), (4, 3, 24, 32), (1, 3, 18, 24)]  # #0–3, #4 5 7 8, #6
    assert [p.name for p in batched] == [p.name for p in single] == [f"{i}.png" for i in range(9)]  # input order
    for a, b in zip(single, batched):
        one, four = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        assert one.shape == four.shape
        assert np.abs(one.astype(int) - four.astype(int)).max() <= 1
        assert np.mean(one != four) < 0.01


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


def test_a_batch_never_exceeds_the_pixel_budget(model, tmp_path):
    images = [save_image(random_image(10, 10, seed=i), tmp_path / f"{i}.png") for i in range(5)]
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:  # 250 pixels hold two 10×10 images: batches of 2, 2, 1 although 4 were asked for
        predict_paths(model, images, tmp_path / "out", progress=False, batch_size=4, max_pixels=250)
    finally:
        handle.remove()
    assert seen == [2, 2, 1]
    assert check_budget((10, 10), None, 250, count=2) == (10, 10)
    with pytest.raises(OverBudget, match=r"^x: 3 × 10×10 px is 300 pixels .* use max_size=9 .* max_pixels=300 "):
        check_budget((10, 10), None, 250, what="x", count=3)  # 3 × 9×9 = 243 ≤ 250


def test_plan_batches_groups_by_the_size_the_model_sees():
    sizes = [(10, 20), (20, 40), None, (10, 20), (12, 20), (10, 20)]
    assert plan_batches(sizes, None, None, 2) == [[0, 3], [1], [2], [4], [5]]
    assert plan_batches(sizes, 20, None, 3) == [[0, 1, 3], [2], [4], [5]]  # 20×40 is 10×20 at max_size 20
    assert plan_batches(sizes, 20, 400, 3) == [[0, 1], [2], [3, 5], [4]]  # two 10×20 fit 400 pixels
    assert plan_batches(sizes, None, None, 1) == [[i] for i in range(6)]  # batch 1: input order
    with pytest.raises(ValueError, match="batch_size"):
        next(predict_jobs(None, [], batch_size=0))


def test_a_bad_image_is_an_error_for_that_job_only(model, tmp_path):
    good = [save_image(random_image(6, 6, seed=i), tmp_path / f"{i}.png") for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jobs = [Job(p, tmp_path / "out" / f"{p.stem}.png") for p in [good[0], bad, good[1], good[2]]]
    done = {d.job.source: d for d in predict_jobs(model, jobs, batch_size=4)}
    assert set(done) == {*good, bad}
    assert isinstance(done[bad].error, DataError) and str(bad) in str(done[bad].error) and done[bad].written == []
    assert all(done[p].error is None and done[p].written == [tmp_path / "out" / f"{p.stem}.png"] for p in good)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]


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


def test_duplicate_stems_are_refused_before_writing(model, tmp_path):
    (tmp_path / "x").mkdir()
    first = save_image(random_image(6, 6), tmp_path / "photo.png")
    second = save_image(random_image(6, 6), tmp_path / "x" / "photo.jpg")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="photo.png and .*photo.jpg"):
        predict_paths(model, [first, second], out, progress=False)
    assert not out.exists()
    # the same file twice is not a clash
    assert predict_paths(model, [first, first], out, progress=False) == [out / "photo.png"]


def test_output_may_not_overwrite_an_input(model, tmp_path):
    image = save_image(random_image(6, 6), tmp_path / "a.png")
    with pytest.raises(ValueError, match="overwrite"):
        predict_paths(model, [image], tmp_path, progress=False)


def test_predict_paths_checks_every_budget_before_reading_or_writing(model, tmp_path, monkeypatch):
    small = save_image(random_image(6, 6), tmp_path / "small.png")
    big = save_image(random_image(40, 60), tmp_path / "big.png")
    monkeypatch.setattr(predict, "load_rgb", lambda path: pytest.fail(f"decoded {path}"))
    out = tmp_path / "out"
    with pytest.raises(OverBudget, match=f"^{big}: 60×40 px .* max_size=38 "):
        predict_paths(model, [small, big], out, max_pixels=1000, progress=False)
    assert not out.exists()


def test_missing_and_corrupt_inputs_name_the_file(model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict_paths(model, [tmp_path / "nope.png"], out, progress=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        predict_paths(model, [broken], out, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


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
