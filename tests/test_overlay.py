"""The picture `btbnet predict --overlay` writes (btbnet.overlay): tiles, headers, legend, and
blurred regions that stand out whatever the scene's colours."""

import numpy as np
import pytest

from btbnet.overlay import BACKGROUND, INK, Layout, layout, legend_entries, overlay, shade
from tests.test_predict import random_image


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


def test_overlay_text_grows_with_the_image():
    small, large = layout((100, 100)), layout((2000, 3000))
    assert small.tile == (256, 256) and large.tile == (2000, 3000)
    assert small.font == 14 and large.font == 2000 // 18
    assert layout((2000, 30)).tile == (17067, 256)  # a thin strip: its shorter side at MIN_TILE
