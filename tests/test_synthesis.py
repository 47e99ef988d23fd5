"""Simulated defocus samples (section 4.1): 4 directions × 5 blur levels."""

import numpy as np
import pytest

from btbnet.synthesis import (
    DIRECTIONS,
    LEVELS,
    Sample,
    sample_name,
    synthesize,
)


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gradient_energy(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    return float((np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean())


def reference_blur(image: np.ndarray, times: int) -> np.ndarray:
    """Section 4.1 written out independently: a direct 2-D 7×7, σ = 2 Gaussian window with
    reflect padding (edge pixel not repeated), applied `times` times in float64, rounded once."""
    x = np.arange(7) - 3.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 2.0**2))
    k = g / g.sum()
    assert k.shape == (7, 7) and k.sum() == pytest.approx(1.0)
    out = image.astype(np.float64)
    h, w = image.shape[:2]
    for _ in range(times):
        padded = np.pad(out, ((3, 3), (3, 3), (0, 0)), mode="reflect")
        out = sum(k[dy, dx] * padded[dy : dy + h, dx : dx + w] for dy in range(7) for dx in range(7))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_blurred_half_matches_the_direct_2d_gaussian_at_every_level():
    image = noise_image(9, 11)
    for s in synthesize(image):
        blurred = s.mask == 0
        np.testing.assert_array_equal(s.image[blurred], reference_blur(image, s.level)[blurred])


def test_levels_round_once_at_the_end():
    # Two passes in float then one rounding differ from rounding after each pass.
    image = noise_image(12, 12, seed=3)
    level2 = next(s for s in synthesize(image) if s.direction == "up" and s.level == 2)
    twice_rounded = reference_blur(reference_blur(image, 1), 1)
    blurred = level2.mask == 0
    assert not np.array_equal(level2.image[blurred], twice_rounded[blurred])
    assert np.abs(level2.image[blurred].astype(int) - twice_rounded[blurred].astype(int)).max() <= 1


def test_constant_image_stays_constant():
    flat = np.full((6, 4, 3), 77, dtype=np.uint8)
    for s in synthesize(flat):
        np.testing.assert_array_equal(s.image, flat)


def test_twenty_samples_in_direction_major_order():
    samples = synthesize(noise_image(8, 10))
    assert len(samples) == 20
    assert all(isinstance(s, Sample) for s in samples)
    assert [(s.direction, s.level) for s in samples] == [(d, lv) for d in DIRECTIONS for lv in LEVELS]
    assert [sample_name("img", s.direction, s.level) for s in samples][:6] == [
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
        np.testing.assert_array_equal(s.image[~in_focus], reference_blur(image, s.level)[~in_focus])
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


def test_sources_are_found_recursively_and_named_by_their_path(tmp_path):
    from PIL import Image

    from btbnet.data import DataError
    from btbnet.synthesis import find_sources

    for rel in ("bsds/train/2092.jpg", "bsds/val/3096.png", "bsds/.hidden/x.png", "ucid/a.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise_image(4, 4)).save(tmp_path / rel)
    (tmp_path / "bsds" / "loop").symlink_to(tmp_path / "bsds", target_is_directory=True)  # not followed
    found = find_sources(tmp_path, ["bsds", "ucid"])
    assert [(s.name, s.path.relative_to(tmp_path).as_posix()) for s in found] == [
        ("bsds-train-2092", "bsds/train/2092.jpg"),
        ("bsds-val-3096", "bsds/val/3096.png"),
        ("ucid-a", "ucid/a.tif"),
    ]
    assert [s.name for s in find_sources(tmp_path, ["bsds"])] == ["train-2092", "val-3096"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder has no images, nor do its sub-folders"):
        find_sources(tmp_path, ["empty"])


def test_write_samples_writes_twenty_pairs_that_read_back(tmp_path):
    from PIL import Image

    from btbnet.data import InputConfig, PairDataset
    from btbnet.synthesis import Source, write_samples

    Image.fromarray(noise_image(12, 20)).save(tmp_path / "src.png")
    for sub in ("image", "gt"):
        (tmp_path / "out" / sub).mkdir(parents=True)
    count, size = write_samples(Source(tmp_path / "src.png", "s"), tmp_path / "out", max_size=10)
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert count == 20 and len(files) == 40 and size == sum(f.stat().st_size for f in files)
    data = PairDataset(tmp_path / "out", "in_focus", InputConfig(augment=False))
    assert sorted(data.stems)[:2] == ["s_down_1", "s_down_2"]
    image, mask = data.arrays(data.stems.index("s_up_3"))
    assert image.shape == (6, 10, 3)  # shrunk to max_size 10 on the longer side
    assert (mask[:3] == 0).all() and (mask[3:] == 255).all()  # the upper half is blurred


def test_encoded_samples_are_the_written_files_and_need_only_the_sources_bytes(tmp_path):
    """What a Ray node that cannot see the source file does: decode the bytes it was sent and
    return the files; the driver writes exactly these bytes (pipeline/synthesize.py)."""
    from PIL import Image

    from btbnet.data import DataError
    from btbnet.synthesis import Source, encode_samples, write_samples

    Image.fromarray(noise_image(12, 20)).save(tmp_path / "src.png")
    content = (tmp_path / "src.png").read_bytes()
    for sub in ("image", "gt"):
        (tmp_path / "out" / sub).mkdir(parents=True)
    write_samples(Source(tmp_path / "src.png", "s"), tmp_path / "out", max_size=10)
    elsewhere = Source(tmp_path / "not-on-this-node.png", "s")  # no such file here
    files = dict(encode_samples(elsewhere, max_size=10, content=content))
    assert files == {str(f.relative_to(tmp_path / "out")): f.read_bytes() for f in (tmp_path / "out").rglob("*.png")}
    with pytest.raises(DataError, match=r"not-on-this-node\.png: cannot read image"):
        encode_samples(elsewhere, content=b"not an image")
