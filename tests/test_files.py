"""`btbnet predict` on files (btbnet.files): every input checked before anything is written,
batches of one size, a line or a bar per file, atomic maps."""

import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from btbnet import BTBNetConfig, build_model
from btbnet.data import DataError
from btbnet import files
from btbnet.files import Job, plan_batches, plan_jobs, predict_jobs, predict_paths
from btbnet.overlay import overlay
from btbnet.predict import OverBudget, check_budget, predict_map
from tests.test_predict import random_image, save_image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0,), rrnet_steps=1))


class Console(io.StringIO):
    """A text stream that says whether it is a terminal, as `sys.stderr.isatty()` would."""

    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


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
    with pytest.raises(ValueError, match=r"^batch_size: must be an integer >= 1, got 0$"):
        next(predict_jobs(None, [], batch_size=0))


def test_bad_limits_fail_before_any_input_is_read_or_folder_made(tmp_path):
    for max_size, max_pixels, key in ((0, None, "max_size"), (None, 2.5, "max_pixels")):
        with pytest.raises(ValueError, match=f"^{key}: must be an integer >= 1 or null"):
            plan_jobs([tmp_path / "missing.jpg"], tmp_path / "maps", False, max_size, max_pixels)
    assert not (tmp_path / "maps").exists()


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
    monkeypatch.setattr(files, "load_rgb", lambda path: pytest.fail(f"decoded {path}"))
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
