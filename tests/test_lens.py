"""The "lens" synthesis mode (btbnet.lens): disc point-spread functions, shaped in-focus
subjects that keep their pixels, backgrounds whose blur varies, occluders, determinism."""

import numpy as np
import pytest

from btbnet.synthesis import sample_name
from tests.test_synthesis import noise_image


def test_disc_kernel_is_a_normalised_pillbox():
    from btbnet.lens import disc_kernel

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
    from btbnet.lens import disc_blur_stack, disc_kernel

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
    from btbnet.lens import LENS_RADII

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
