"""The committed embedded data (data/embedded/) and its generator (data/make_embedded.py).

Neither check needs scikit-image: the data tests read PNGs with Pillow, and the generator
keeps every scikit-image use inside `main()`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data"
EMBEDDED = DATA / "embedded"
GENERATOR = DATA / "make_embedded.py"
SPLITS = ("train", "test")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_embedded", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def read(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def pairs(split: str) -> list[tuple[Path, Path]]:
    images = sorted((EMBEDDED / "defocus" / split / "image").glob("*.png"))
    return [(p, EMBEDDED / "defocus" / split / "gt" / p.name) for p in images]


def gradient(image: np.ndarray) -> np.ndarray:
    """[H, W] luminance gradient magnitude of uint8 RGB `image`, luminance in [0, 1]."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    gy, gx = np.gradient(luma)
    return np.hypot(gx, gy)


def shrink(mask: np.ndarray, steps: int) -> np.ndarray:
    """3×3 binary erosion, `steps` times."""
    for _ in range(steps):
        p = np.pad(mask, 1)
        h, w = mask.shape
        mask = np.logical_and.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return mask


# --------------------------------------------------------------------------- committed data


def test_counts_and_matching_stems():
    assert 24 <= len(stems(EMBEDDED / "sources")) <= 32
    counts = {}
    for split in SPLITS:
        images = stems(EMBEDDED / "defocus" / split / "image")
        assert images == stems(EMBEDDED / "defocus" / split / "gt"), f"{split}: image and gt stems differ"
        counts[split] = len(images)
    assert counts == {"train": 40, "test": 16}
    assert not stems(EMBEDDED / "defocus" / "train" / "image") & stems(EMBEDDED / "defocus" / "test" / "image")


def test_sources_are_small_textured_rgb():
    for path in sorted((EMBEDDED / "sources").glob("*.png")):
        mode, image = read(path)
        assert mode == "RGB" and image.dtype == np.uint8, path.name
        h, w, _ = image.shape
        assert 96 <= h <= 128 and 96 <= w <= 128, f"{path.name}: {w}×{h}"
        # clear and detailed: a blurred or flat crop has far less gradient energy
        assert gradient(image).mean() >= 0.03, path.name


@pytest.mark.parametrize("split", SPLITS)
def test_pairs_rgb_image_binary_mask_same_size(split):
    for image_path, gt_path in pairs(split):
        mode, image = read(image_path)
        assert mode == "RGB" and image.dtype == np.uint8, image_path.name
        assert image.shape == (96, 96, 3), image_path.name
        mode, gt = read(gt_path)
        assert mode == "L" and gt.shape == image.shape[:2], gt_path.name
        assert set(np.unique(gt).tolist()) == {0, 255}, f"{gt_path.name}: not binary with both classes"
        assert 0.1 <= (gt == 255).mean() <= 0.9, f"{gt_path.name}: blurred share {(gt == 255).mean():.2f}"


def test_mask_255_marks_the_blurrier_region():
    """Shi's polarity: 255 = blurred. Away from the boundary, the 255 region has less detail."""
    ratios = []
    for split in SPLITS:
        for image_path, gt_path in pairs(split):
            image, blurred = read(image_path)[1], read(gt_path)[1] == 255
            grad = gradient(image)
            sharp_mean = grad[shrink(~blurred, 4)].mean()
            blurred_mean = grad[shrink(blurred, 4)].mean()
            ratios.append(sharp_mean / blurred_mean)
    ratios = np.array(ratios)
    assert (ratios > 1.0).all(), f"a mask's sharp side is not sharper: min ratio {ratios.min():.2f}"
    assert (ratios > 1.5).mean() >= 0.9, f"ratios {np.round(np.sort(ratios)[:5], 2)}"


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in EMBEDDED.rglob("*") if p.is_file())
    assert total < 4_000_000, f"data/embedded holds {total} bytes"


# --------------------------------------------------------------------------- generator


def test_generator_imports_without_scikit_image():
    code = f"import runpy, sys; runpy.run_path({str(GENERATOR)!r}); assert 'skimage' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def tiny_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    near = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    far = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:24, :24]
    shape = (yy - 12) ** 2 + (xx - 12) ** 2 <= 6**2  # a disc of radius 6
    return near, far, shape


def test_composite_object_in_focus():
    gen = load_generator()
    near, far, shape = tiny_scene()
    image, blurred = gen.composite_defocus(near, far, shape, 2.0, "far")
    again, _ = gen.composite_defocus(near, far, shape, 2.0, "far")
    np.testing.assert_array_equal(image, again)
    assert image.dtype == np.uint8 and image.shape == near.shape
    np.testing.assert_array_equal(blurred, ~shape)
    inner = shrink(shape, 2)  # past the 1-px feathering: the object itself
    np.testing.assert_array_equal(image[inner], near[inner])
    outer = shrink(~shape, 2)  # the background, defocused
    expected = gen.to_uint8(gen.defocus(far.astype(np.float64), 2.0))
    np.testing.assert_array_equal(image[outer], expected[outer])
    assert gradient(image)[outer].mean() < gradient(far)[outer].mean() / 2


def test_composite_object_out_of_focus():
    gen = load_generator()
    near, far, shape = tiny_scene()
    image, blurred = gen.composite_defocus(near, far, shape, 2.0, "near")
    np.testing.assert_array_equal(blurred, shape)
    untouched = shrink(~shape, 4)  # beyond the blur's reach (radius 2 + rim)
    np.testing.assert_array_equal(image[untouched], far[untouched])
    assert gradient(image)[shrink(shape, 3)].mean() < gradient(near)[shrink(shape, 3)].mean() / 2
    with pytest.raises(ValueError, match="blurred_layer"):
        gen.composite_defocus(near, far, shape, 2.0, "both")
    with pytest.raises(ValueError, match="near, far, shape"):
        gen.composite_defocus(near, far[:10], shape, 2.0, "far")


def test_generate_is_byte_identical_on_fake_photos(tmp_path, monkeypatch):
    """The whole generator, on noise 'photos' instead of scikit-image's: same seed, same bytes."""
    gen = load_generator()
    monkeypatch.setattr(gen, "N_SOURCES", 2)
    monkeypatch.setattr(gen, "N_TRAIN", 3)
    monkeypatch.setattr(gen, "N_TEST", 2)
    rng = np.random.default_rng(1)
    photos = {
        p.file: np.repeat(np.repeat(rng.integers(0, 256, (150, 220, 3), dtype=np.uint8), 2, 0), 2, 1)
        for p in gen.PHOTOS
    }
    manifests = [gen.generate(tmp_path / name, photos, seed=7) for name in ("a", "b")]
    assert manifests[0] == manifests[1]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 2 * (3 + 2) + 1  # sources, image + gt per pair, manifest.json
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    gt = np.asarray(Image.open(next((tmp_path / "a" / "defocus" / "test" / "gt").glob("*.png"))))
    assert set(np.unique(gt).tolist()) == {0, 255}
