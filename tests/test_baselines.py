"""Classical / trivial DBD baselines; LBP codes and sharpness values computed by hand."""

import numpy as np
import pytest

from btbnet.baselines import (
    BASELINES,
    all_blurred,
    all_in_focus,
    lbp_codes,
    lbp_multiscale,
    lbp_sharpness,
    to_grey,
    window_fraction,
)


def centre_code(rows) -> int:
    """The LBP^riu2_{8,1} code of the centre of a 3 × 3 grey neighbourhood."""
    return int(lbp_codes(np.array(rows, dtype=np.uint8))[1, 1])


@pytest.mark.parametrize(
    "rows, code",
    [
        # Flat: no neighbour exceeds the centre → 0 bits.
        ([[100, 100, 100], [100, 100, 100], [100, 100, 100]], 0),
        # Darker neighbours never set a bit (the test is g_p - g_c > T).
        ([[0, 0, 0], [0, 100, 0], [0, 0, 0]], 0),
        # All +100: diagonals 200 - 100·(1 - √2/2)² = 191.4 → 191, all 8 bits → 8.
        ([[200, 200, 200], [200, 100, 200], [200, 200, 200]], 8),
        # All +4: 4 is not > 0.016 · 255 = 4.08 → 0.
        ([[104, 104, 104], [104, 100, 104], [104, 104, 104]], 0),
        # All +5: the axis bits are set, but the diagonals 105 - 5·0.0858 = 104.57 floor to 104
        # (diff 4) → pattern 10101010, 8 transitions → non-uniform 9.
        ([[105, 105, 105], [105, 100, 105], [105, 105, 105]], 9),
        # All +6: diagonals 106 - 6·0.0858 = 105.49 → 105 (diff 5) → 8.
        ([[106, 106, 106], [106, 100, 106], [106, 106, 106]], 8),
        # Bright right column: g_0 = 200, g_1 = g_7 = 100 + 200·√2/2 - 100·√2/2 = 170.7 → bits
        # 7, 0, 1 contiguous → uniform, 3 ones.
        ([[100, 100, 200], [100, 100, 200], [100, 100, 200]], 3),
        # Bright left and right only: g_0, g_4 set, each diagonal 100 + 100·(1 - √2/2)·√2/2 =
        # 120.7 set, g_2, g_6 not → 11011101... 4 transitions → 9.
        ([[100, 100, 100], [200, 100, 200], [100, 100, 100]], 9),
        # Only the upper-right corner bright: g_1 = 100 + 100·(√2/2)² = 150 → one bit → 1.
        ([[100, 100, 200], [100, 100, 100], [100, 100, 100]], 1),
    ],
)
def test_lbp_code_of_hand_made_neighbourhoods(rows, code):
    assert centre_code(rows) == code


def test_lbp_codes_shape_dtype_and_range():
    rng = np.random.default_rng(0)
    codes = lbp_codes(rng.integers(0, 256, (13, 17), dtype=np.uint8))
    assert codes.shape == (13, 17) and codes.dtype == np.uint8
    assert codes.min() >= 0 and codes.max() <= 9


def test_to_grey_uses_rgb2gray_weights():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    # round(0.2989·255) = 76, round(0.5870·255) = 150, round(0.1140·255) = 29.
    np.testing.assert_array_equal(to_grey(image), [[76, 150, 29, 255]])
    grey = np.array([[3, 200]], dtype=np.uint8)
    assert to_grey(grey) is grey


def test_window_fraction_replicates_the_border():
    # Padded row: 1 1 | 1 0 0 0 | 0 0 (edge replicated), 3 identical rows.
    np.testing.assert_allclose(window_fraction(np.array([[1, 0, 0, 0]]), 3), [[6 / 9, 3 / 9, 0, 0]])
    np.testing.assert_allclose(window_fraction(np.array([[1, 0], [0, 0]]), 1), [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="odd"):
        window_fraction(np.zeros((3, 3)), 4)


@pytest.mark.parametrize("dip, code", [(99, 8), (100, 9), (101, 0)])
def test_sharpness_of_a_single_dip_by_hand(dip, code):
    # 5 × 5 grey 105 with a darker centre: only the centre can get a code (8, 9 or, for a
    # dip of 4 grey levels, 0); every other pixel has only darker or equal neighbours → 0.
    grey = np.full((5, 5), 105, dtype=np.uint8)
    grey[2, 2] = dip
    assert lbp_codes(grey)[2, 2] == code and np.count_nonzero(lbp_codes(grey)) == (code != 0)
    sharp = lbp_sharpness(grey, size=3, normalise=False)
    expected = np.zeros((5, 5))
    if code >= 6:
        expected[1:4, 1:4] = 1 / 9  # the 3 × 3 windows that contain the centre
    np.testing.assert_allclose(sharp, expected, rtol=1e-6)
    if code >= 6:  # min-max normalised: 1/9 → 1, 0 → 0
        np.testing.assert_allclose(lbp_sharpness(grey, size=3), expected * 9, rtol=1e-6)


def test_noise_is_sharper_than_flat():
    rng = np.random.default_rng(1)
    image = np.full((30, 60, 3), 128, dtype=np.uint8)
    image[:, :30] = rng.integers(0, 256, (30, 30, 3))  # left: noise, right: flat
    sharp = lbp_sharpness(image, size=11)
    assert sharp[:, :20].min() > sharp[:, 40:].max()
    assert sharp[:, 40:].max() == 0.0 and sharp.max() == pytest.approx(1.0)


def box_blur(grey: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r + 1)² window (edge-padded), rounded to uint8; the test's own blur."""
    padded = np.pad(grey.astype(np.float64), radius, mode="edge")
    h, w = grey.shape
    k = 2 * radius + 1
    total = sum(padded[dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k))
    return np.rint(total / k**2).astype(np.uint8)


def test_half_blurred_image_is_sharper_on_its_sharp_half():
    rng = np.random.default_rng(2)
    # A textured scene: per-pixel random grey levels (a scene of flat 2 × 2 blocks would not do:
    # 3 of a pixel's 8 neighbours would equal it, capping its uniform codes at 5).
    scene = rng.integers(0, 256, (80, 120)).astype(np.uint8)
    image = scene.copy()
    image[:, 60:] = box_blur(scene, 2)[:, 60:]  # right half defocused (5 × 5 box)
    for method in (lbp_sharpness, lbp_multiscale):
        sharp = method(np.repeat(image[:, :, None], 3, axis=2))
        left, right = sharp[:, :50].mean(), sharp[:, 70:].mean()  # away from the seam
        assert left > right + 0.3, (method.__name__, left, right)


def test_every_baseline_gives_a_float_map_in_unit_range():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert {"all_in_focus", "all_blurred", "lbp"} <= set(BASELINES)
    for name, method in BASELINES.items():
        out = method(image)
        assert out.shape == (37, 53) and out.dtype == np.float32, name
        assert out.min() >= 0.0 and out.max() <= 1.0, name
    assert (all_in_focus(image) == 1).all() and (all_blurred(image) == 0).all()


def test_flat_image_gives_an_unnormalised_zero_map():
    flat = np.full((8, 9, 3), 77, dtype=np.uint8)
    assert (lbp_sharpness(flat) == 0).all() and (lbp_multiscale(flat) == 0).all()


@pytest.mark.parametrize("image", [np.zeros((4, 4, 3)), np.zeros((4, 4, 4), dtype=np.uint8), np.zeros((0, 3), dtype=np.uint8)])
def test_bad_images_raise(image):
    with pytest.raises(ValueError, match="image"):
        lbp_sharpness(image)
