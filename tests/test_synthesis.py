"""Simulated defocus samples (section 4.1): 4 directions × 5 blur levels."""

import numpy as np
import pytest

from btbnet.synthesis import (
    DIRECTIONS,
    LEVELS,
    Sample,
    blur,
    gaussian_kernel,
    sample_name,
    synthesize,
)


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gradient_energy(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    return float((np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean())


def test_kernel_is_normalised_symmetric_7x7():
    k = gaussian_kernel()
    assert k.shape == (7, 7) and k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert k[3, 3] == k.max()
    # Gaussian profile: neighbouring taps along an axis differ by exp(-(2x+1) / (2σ²)).
    assert k[3, 4] / k[3, 3] == pytest.approx(np.exp(-1 / 8))
    assert k[3, 5] / k[3, 4] == pytest.approx(np.exp(-3 / 8))


def test_kernel_rejects_even_size_and_bad_sigma():
    with pytest.raises(ValueError, match="size"):
        gaussian_kernel(6)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(7, 0.0)


def test_blur_matches_direct_2d_convolution_with_reflect_padding():
    image = noise_image(9, 11)
    k = gaussian_kernel()
    padded = np.pad(image.astype(np.float64), ((3, 3), (3, 3), (0, 0)), mode="reflect")
    expected = np.zeros(image.shape)
    for dy in range(7):
        for dx in range(7):
            expected += k[dy, dx] * padded[dy : dy + 9, dx : dx + 11]
    np.testing.assert_array_equal(blur(image, 1), np.clip(np.rint(expected), 0, 255).astype(np.uint8))


def test_blur_keeps_constant_image_and_zero_times_is_copy():
    flat = np.full((5, 4, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(blur(flat, 3), flat)
    image = noise_image(6, 6)
    copy = blur(image, 0)
    np.testing.assert_array_equal(copy, image)
    assert copy is not image


def test_blur_rounds_once_at_the_end():
    # Two passes in float then one rounding differ from rounding after each pass.
    image = noise_image(12, 12, seed=3)
    twice_rounded = blur(blur(image, 1), 1)
    assert not np.array_equal(blur(image, 2), twice_rounded)
    assert np.abs(blur(image, 2).astype(int) - twice_rounded.astype(int)).max() <= 1


def test_twenty_samples_in_direction_major_order():
    samples = synthesize(noise_image(8, 10))
    assert len(samples) == 20
    assert all(isinstance(s, Sample) for s in samples)
    assert [(s.direction, s.level) for s in samples] == [(d, lv) for d in DIRECTIONS for lv in LEVELS]
    assert [s.name("img") for s in samples][:6] == [
        "img_up_1", "img_up_2", "img_up_3", "img_up_4", "img_up_5", "img_down_1",
    ]
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (8, 10, 3)
        assert s.mask.dtype == np.uint8 and s.mask.shape == (8, 10)
        assert set(np.unique(s.mask)) == {0, 255}


def test_sample_name_format_and_validation():
    assert sample_name("beach", "left", 4) == "beach_left_4"
    with pytest.raises(ValueError, match="direction"):
        sample_name("beach", "diagonal", 1)
    with pytest.raises(ValueError, match="level"):
        sample_name("beach", "up", 6)


@pytest.mark.parametrize("h, w", [(8, 10), (7, 9), (2, 2), (3, 5)])
def test_mask_geometry_blurs_the_floor_half(h, w):
    by_direction = {s.direction: s.mask for s in synthesize(noise_image(h, w)) if s.level == 1}
    blurred = {d: m == 0 for d, m in by_direction.items()}
    rows, cols = np.indices((h, w))
    np.testing.assert_array_equal(blurred["up"], rows < h // 2)
    np.testing.assert_array_equal(blurred["down"], rows >= h - h // 2)
    np.testing.assert_array_equal(blurred["left"], cols < w // 2)
    np.testing.assert_array_equal(blurred["right"], cols >= w - w // 2)
    if h % 2:  # the middle row stays in focus for both vertical directions
        assert (by_direction["up"][h // 2] == 255).all() and (by_direction["down"][h // 2] == 255).all()


def test_in_focus_half_is_input_bytes_and_blurred_half_is_blurred_whole_image():
    image = noise_image(11, 13, seed=1)
    for s in synthesize(image):
        in_focus = s.mask == 255
        np.testing.assert_array_equal(s.image[in_focus], image[in_focus])
        np.testing.assert_array_equal(s.image[~in_focus], blur(image, s.level)[~in_focus])
        assert not np.array_equal(s.image[~in_focus], image[~in_focus])


def test_blur_increases_with_level():
    image = noise_image(24, 24, seed=2)
    for direction in DIRECTIONS:
        samples = [s for s in synthesize(image) if s.direction == direction]
        energies = [gradient_energy(_blurred_region(s)) for s in samples]
        assert all(a > b for a, b in zip(energies, energies[1:])), (direction, energies)
        assert energies[0] < gradient_energy(image) / 4


def _blurred_region(s: Sample) -> np.ndarray:
    rows = np.flatnonzero((s.mask == 0).any(axis=1))
    cols = np.flatnonzero((s.mask == 0).any(axis=0))
    return s.image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_boundary_is_a_natural_blur_edge():
    # A vertical stripe crossing the boundary: the blurred side next to the boundary mixes
    # in the in-focus side's colour, as cutting from the blurred whole image implies.
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[5:] = 200  # in-focus half for "up" is rows 5..9
    up_5 = synthesize(image)[4]
    assert up_5.direction == "up" and up_5.level == 5
    assert up_5.image[4, 5, 0] > 50  # last blurred row picked up light from below


def test_deterministic_byte_identical():
    image = noise_image(9, 7, seed=5)
    first, second = synthesize(image), synthesize(image.copy())
    for a, b in zip(first, second):
        assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()


def test_input_is_not_modified():
    image = noise_image(6, 6)
    before = image.copy()
    synthesize(image)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((1, 5, 3), dtype=np.uint8),
        [[0, 0], [0, 0]],
    ],
)
def test_bad_input_raises_naming_image(bad):
    with pytest.raises(ValueError, match="image"):
        synthesize(bad)


def test_blur_rejects_negative_times():
    with pytest.raises(ValueError, match="times"):
        blur(noise_image(4, 4), -1)
