"""Inference: predict_map, the overlay picture and predict_paths' files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from btbnet import BTBNetConfig, build_model, predict
from btbnet.data import DataError, to_tensor
from btbnet.predict import (
    BLUR_STRENGTH,
    BLUR_TINT,
    MAX_PIXELS,
    OverBudget,
    check_budget,
    fit_within,
    model_input,
    overlay,
    predict_map,
    predict_paths,
)


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


def test_overlay_panels():
    image = random_image(5, 4)
    focus = np.array([[255, 0, 128, 255]] * 5, dtype=np.uint8)
    picture = overlay(image, focus)
    assert picture.shape == (5, 12, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[:, :4], image)
    np.testing.assert_array_equal(picture[:, 4:8], np.repeat(focus[:, :, None], 3, axis=2))
    shaded = picture[:, 8:].astype(np.float32)
    np.testing.assert_array_equal(shaded[:, [0, 3]], image[:, [0, 3]])  # in focus: untouched
    blurred = image[:, 1].astype(np.float32) * (1 - BLUR_STRENGTH) + BLUR_TINT * BLUR_STRENGTH
    np.testing.assert_allclose(shaded[:, 1], blurred, atol=0.5)  # blurred: darkened towards the tint
    with pytest.raises(ValueError, match="focus_map"):
        overlay(image, focus[:, :3])


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
            assert img.mode == "RGB" and img.size == (3 * w, h)
            np.testing.assert_array_equal(np.asarray(img), overlay(rgb, focus))


def test_progress_bar_only_for_several_images(model, tmp_path, capsys):
    images = [save_image(random_image(6, 6, seed=i), tmp_path / f"{i}.png") for i in range(2)]
    predict_paths(model, images[:1], tmp_path / "one")
    assert "btbnet predict" not in capsys.readouterr().err
    predict_paths(model, images, tmp_path / "two")
    assert "btbnet predict" in capsys.readouterr().err
    predict_paths(model, images, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


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
