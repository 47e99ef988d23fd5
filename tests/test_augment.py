"""16-fold augmentation (section 4.1): 8 orientations × horizontal flip, pairs stay aligned."""

import math

import numpy as np
import pytest

from btbnet.augment import NUM_AUGMENTATIONS, augment

ALL = range(NUM_AUGMENTATIONS)


def noise_pair(h: int = 13, w: int = 17, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.where(rng.random((h, w)) > 0.5, 255, 0).astype(np.uint8)
    return image, mask


def blob_mask(h: int, w: int) -> np.ndarray:
    """An asymmetric shape: an off-centre disc joined to a bar, 255 inside."""
    rows, cols = np.indices((h, w))
    disc = (rows - 0.35 * h) ** 2 + (cols - 0.6 * w) ** 2 < (0.2 * min(h, w)) ** 2
    bar = (rows > 0.55 * h) & (rows < 0.7 * h) & (cols > 0.15 * w) & (cols < 0.75 * w)
    return np.where(disc | bar, 255, 0).astype(np.uint8)


def test_sixteen_distinct_versions():
    """Section 4.1: 8 orientations × flip give 16 different versions of an asymmetric image."""
    image, mask = noise_pair(21, 21)
    versions = {augment(image, mask, i)[0].tobytes() for i in range(16)}
    assert len(versions) == 16 == NUM_AUGMENTATIONS


def test_index_0_is_identity_and_index_1_is_a_pure_flip():
    image, mask = noise_pair()
    out_image, out_mask = augment(image, mask, 0)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    flip_image, flip_mask = augment(image, mask, 1)
    np.testing.assert_array_equal(flip_image, image[:, ::-1])
    np.testing.assert_array_equal(flip_mask, mask[:, ::-1])


@pytest.mark.parametrize("index, turns", [(4, 1), (5, 1), (8, 2), (9, 2), (12, 3), (13, 3)])
def test_right_angles_are_exact_counter_clockwise_rotations(index, turns):
    image, mask = noise_pair()
    out_image, out_mask = augment(image, mask, index)
    want_image, want_mask = np.rot90(image, turns), np.rot90(mask, turns)
    if index % 2:
        want_image, want_mask = want_image[:, ::-1], want_mask[:, ::-1]
    np.testing.assert_array_equal(out_image, want_image)
    np.testing.assert_array_equal(out_mask, want_mask)


@pytest.mark.parametrize("h, w", [(13, 17), (30, 20), (2, 2), (41, 41)])
def test_45_degree_versions_are_the_inscribed_square(h, w):
    image, mask = noise_pair(h, w)
    side = math.floor(min(h, w) / math.sqrt(2))
    for index in (2, 3, 6, 7, 10, 11, 14, 15):
        out_image, out_mask = augment(image, mask, index)
        assert out_image.shape == (side, side, 3) and out_mask.shape == (side, side)


@pytest.mark.parametrize("index", ALL)
def test_outputs_are_contiguous_uint8_with_binary_mask(index):
    image, mask = noise_pair(20, 26)
    out_image, out_mask = augment(image, mask, index)
    assert out_image.dtype == np.uint8 and out_image.ndim == 3 and out_image.shape[2] == 3
    assert out_mask.dtype == np.uint8 and out_mask.shape == out_image.shape[:2]
    assert set(np.unique(out_mask)) <= {0, 255}
    assert out_image.flags.c_contiguous and out_mask.flags.c_contiguous
    assert out_image.flags.writeable and out_mask.flags.writeable
    assert not np.shares_memory(out_image, image) and not np.shares_memory(out_mask, mask)


@pytest.mark.parametrize("index", ALL)
def test_image_and_mask_stay_aligned(index):
    mask = blob_mask(37, 29)
    image = np.repeat(mask[:, :, None], 3, axis=2)  # the image shows the mask
    out_image, out_mask = augment(image, mask, index)
    image_says_in_focus = out_image[:, :, 0] >= 128
    mask_says_in_focus = out_mask == 255
    # Bilinear vs nearest may disagree only on the shape's outline.
    assert (image_says_in_focus == mask_says_in_focus).mean() > 0.97
    interior = _away_from_edges(mask_says_in_focus)
    assert interior.mean() > 0.5
    np.testing.assert_array_equal(image_says_in_focus[interior], mask_says_in_focus[interior])


def _away_from_edges(binary: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3×3 neighbourhood has the same value."""
    h, w = binary.shape
    padded = np.pad(binary, 1, mode="edge")
    windows = [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    return np.all([win == binary for win in windows], axis=0)


@pytest.mark.parametrize("index", ALL)
def test_geometry_rotates_counter_clockwise_by_45_degree_steps(index):
    # A marker 12 px right of the centre of a 41×41 pair must end up at the rotated offset.
    image = np.zeros((41, 41, 3), dtype=np.uint8)
    mask = np.zeros((41, 41), dtype=np.uint8)
    image[18:23, 30:35] = 255
    mask[18:23, 30:35] = 255
    out_image, out_mask = augment(image, mask, index)
    angle = math.radians(45 * (index // 2))
    dx, dy = 12 * math.cos(angle), -12 * math.sin(angle)  # x right, y down, counter-clockwise
    if index % 2:
        dx = -dx
    h, w = out_mask.shape
    want = np.array([(h - 1) / 2 + dy, (w - 1) / 2 + dx])
    for marker in (out_image[:, :, 0] >= 128, out_mask == 255):
        centroid = np.argwhere(marker).mean(axis=0)
        np.testing.assert_allclose(centroid, want, atol=1.0)


@pytest.mark.parametrize("h, w", [(16, 16), (21, 34), (40, 23), (3, 7)])
def test_no_empty_corners_constant_image_stays_constant(h, w):
    image = np.full((h, w, 3), (200, 90, 31), dtype=np.uint8)
    mask = np.full((h, w), 255, dtype=np.uint8)
    for index in ALL:
        out_image, out_mask = augment(image, mask, index)
        assert (out_image == (200, 90, 31)).all(), index
        assert (out_mask == 255).all(), index


def test_deterministic_and_input_untouched():
    image, mask = noise_pair(23, 19, seed=4)
    before = image.copy(), mask.copy()
    for index in ALL:
        a, b = augment(image, mask, index), augment(image.copy(), mask.copy(), index)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(mask, before[1])


@pytest.mark.parametrize("index", [-1, 16, 2.0, True])
def test_bad_index_raises(index):
    image, mask = noise_pair()
    with pytest.raises(ValueError, match="index"):
        augment(image, mask, index)


def test_bad_pair_raises_naming_the_argument():
    image, mask = noise_pair()
    with pytest.raises(ValueError, match="image"):
        augment(image.astype(np.float32), mask, 0)
    with pytest.raises(ValueError, match="mask"):
        augment(image, mask[:-1], 0)
    with pytest.raises(ValueError, match="mask: values must be 0 or 255"):
        augment(image, mask // 255, 0)
