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

    from btbnet.data import PairDataset
    from btbnet.synthesis import Source, write_samples

    Image.fromarray(noise_image(12, 20)).save(tmp_path / "src.png")
    for sub in ("image", "gt"):
        (tmp_path / "out" / sub).mkdir(parents=True)
    count, size = write_samples(Source(tmp_path / "src.png", "s"), tmp_path / "out", max_size=10)
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert count == 20 and len(files) == 40 and size == sum(f.stat().st_size for f in files)
    data = PairDataset(tmp_path / "out", polarity="in_focus", size=None)
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


# --- the "lens" mode: shaped subjects, disc blur of varying radius -----------------------------


def test_disc_kernel_is_a_normalised_pillbox():
    from btbnet.synthesis import disc_kernel

    kernel = disc_kernel(3.0)
    assert kernel.shape == (7, 7)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
    assert kernel[0, 0] == 0.0 and kernel[3, 0] > 0.0  # a disc: empty corners, reaches the rim
    assert kernel[3, 3] == pytest.approx(1.0 / (np.pi * 9.0), rel=0.05)  # flat top, area π r²
    with pytest.raises(ValueError, match="radius"):
        disc_kernel(0.0)


def test_disc_blur_stack_is_the_direct_convolution_with_mirrored_borders():
    from btbnet.synthesis import disc_blur_stack, disc_kernel

    image = noise_image(23, 31, seed=4).astype(np.float64)
    stack = disc_blur_stack(image, [1.5, 4.0])
    for blurred, radius in zip(stack, [1.5, 4.0]):
        kernel = disc_kernel(radius)
        half = kernel.shape[0] // 2
        padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="reflect")
        direct = sum(kernel[dy, dx] * padded[dy : dy + 23, dx : dx + 31] for dy in range(kernel.shape[0]) for dx in range(kernel.shape[0]))
        np.testing.assert_allclose(blurred, direct, atol=1e-9)


# A black frame with single bright pixels on a grid that both mirror flips map onto itself
# (an occluder's texture is the image mirrored): each blurred dot shows the PSF at its place.
DOT_H, DOT_W, DOTS = 97, 121, [(y, x) for y in (12, 36, 60, 84) for x in (12, 36, 60, 84, 108)]
WINDOW = 10  # px around a dot: more than the largest radius, 8


def dots_image() -> np.ndarray:
    image = np.zeros((DOT_H, DOT_W, 3), dtype=np.uint8)
    for y, x in DOTS:
        image[y, x] = 255
    return image


def windows(sample, in_focus: bool) -> list[tuple[int, int, np.ndarray]]:
    """(y, x, the window's red channel) of every dot whose whole window has the label."""
    found = []
    for y, x in DOTS:
        label = sample.mask[y - WINDOW : y + WINDOW + 1, x - WINDOW : x + WINDOW + 1]
        if (label == (255 if in_focus else 0)).all():
            found.append((y, x, sample.image[y - WINDOW : y + WINDOW + 1, x - WINDOW : x + WINDOW + 1, 0]))
    return found


@pytest.fixture(scope="module")
def lens_samples():
    from btbnet.synthesis import synthesize_lens

    return [s for seed in range(3) for s in synthesize_lens(dots_image(), seed)]


def test_lens_samples_are_twenty_named_pairs_with_binary_masks(lens_samples):
    from btbnet.synthesis import LENS, sample_names

    first = lens_samples[:20]
    assert [(s.direction, s.level) for s in first] == [(LENS, k) for k in range(1, 21)]
    assert sample_name("beach", "lens", 17) == "beach_lens_17"
    with pytest.raises(ValueError, match="level"):
        sample_name("beach", "lens", 21)
    assert sample_names("s", "lens")[1][:2] == ["s_lens_6", "s_lens_7"] and len(sum(sample_names("s", "lens"), [])) == 20
    for s in lens_samples:
        assert s.image.shape == (DOT_H, DOT_W, 3) and s.image.dtype == np.uint8
        assert set(np.unique(s.mask)) == {0, 255}


def test_lens_in_focus_regions_keep_their_pixels_and_are_shaped_not_half_planes(lens_samples):
    """Away from the edge, the in-focus region is the source's bytes; every region is enclosed
    by the other along some row or column (blurred-sharp-blurred or the reverse), which no
    half-plane is, and covers a subject's share of the frame."""
    source = dots_image()
    kept = 0
    for s in lens_samples:
        for y, x, window in windows(s, in_focus=True):
            np.testing.assert_array_equal(window, source[y - WINDOW : y + WINDOW + 1, x - WINDOW : x + WINDOW + 1, 0])
            kept += 1
        sharp = s.mask == 255
        runs = [int((np.diff(line.astype(int)) != 0).sum()) + 1 for line in [*sharp, *sharp.T]]
        assert max(runs) >= 3, f"{s.direction}_{s.level}: the in-focus region is a half-plane"
        assert 0.05 < sharp.mean() < 0.98
    assert kept > 20


def test_lens_background_is_disc_blurred_with_radii_that_vary(lens_samples):
    """Each blurred dot is a flat-topped disc (a pillbox, not a Gaussian bump) of radius
    within LENS_RADII; within one sample the radii differ from place to place, and between
    samples too."""
    from btbnet.synthesis import LENS_RADII

    radii_per_sample, flat = [], []
    for s in lens_samples:
        radii = []
        for _, _, window in windows(s, in_focus=False):
            footprint = window > 0
            radius = float(np.sqrt(footprint.sum() / np.pi))
            assert LENS_RADII[0] - 0.6 <= radius <= LENS_RADII[1] + 0.6, radius
            if radius >= 3:  # large enough for its top to show: flat, its peak near its median (a Gaussian's is 3× and more)
                values = window[footprint].astype(int)
                flat.append(values.max() <= 2 * np.median(values) + 1)
            radii.append(radius)
        radii_per_sample.append(radii)
    # where the radius changes within a dot's footprint (a ramp, a step) its pixels mix discs of several sizes
    assert len(flat) > 20 and np.mean(flat) > 0.8, np.mean(flat)
    spreads = [max(r) - min(r) for r in radii_per_sample if len(r) >= 3]
    assert max(spreads) > 1.5  # a ramp or two depth planes in one background
    assert np.ptp([np.mean(r) for r in radii_per_sample if r]) > 2.0  # and other depths in other samples


def test_lens_has_out_of_focus_occluders_over_a_sharp_scene(lens_samples):
    """One sample in five: the blurred region is an enclosed object in a sharp frame, its blur
    spreading over the scene behind it (pixels outside its mask pick up its light)."""
    occluded = [s for s in lens_samples if (s.mask[0] == 255).all() and (s.mask[-1] == 255).all() and (s.mask == 0).any()]
    assert 2 <= len(occluded) <= 25
    source = dots_image()
    for s in occluded:
        blurred = s.mask == 0
        ring = np.zeros_like(blurred)
        ring[1:-1, 1:-1] = blurred[:-2, 1:-1] | blurred[2:, 1:-1] | blurred[1:-1, :-2] | blurred[1:-1, 2:]
        outside_edge = ring & ~blurred
        assert (s.image[outside_edge] != source[outside_edge]).any() or not source[blurred].any()


def test_lens_is_deterministic_per_seed_and_source_name(tmp_path):
    from PIL import Image

    from btbnet.synthesis import Source, encode_samples, synthesize_lens

    image = noise_image(40, 50, seed=7)
    a, b, c = synthesize_lens(image, 3), synthesize_lens(image.copy(), 3), synthesize_lens(image, 4)
    assert all(x.image.tobytes() == y.image.tobytes() and x.mask.tobytes() == y.mask.tobytes() for x, y in zip(a, b))
    assert any(x.mask.tobytes() != z.mask.tobytes() for x, z in zip(a, c))
    Image.fromarray(image).save(tmp_path / "src.png")
    one = dict(encode_samples(Source(tmp_path / "src.png", "beach"), mode="lens", seed=0))
    again = dict(encode_samples(Source(tmp_path / "src.png", "beach"), mode="lens", seed=0))
    other_name = dict(encode_samples(Source(tmp_path / "src.png", "lake"), mode="lens", seed=0))
    assert one == again and sorted(one)[:2] == ["gt/beach_lens_1.png", "gt/beach_lens_10.png"] and len(one) == 40
    assert list(one.values()) != list(other_name.values())  # each source its own draws
    with pytest.raises(ValueError, match="mode: must be one of"):
        encode_samples(Source(tmp_path / "src.png", "beach"), mode="gauss")
