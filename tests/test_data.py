"""Reading images and masks, pairing folders, and PairDataset."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from btbnet.augment import augment
from btbnet.data import (
    IMAGE_EXTENSIONS,
    Polarity,
    DataError,
    InputConfig,
    PairDataset,
    find_pairs,
    image_size,
    list_images,
    load_mask,
    load_pair,
    load_rgb,
    to_tensor,
)


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(path)
    return path


def starts_with_path(path: Path) -> str:
    return "^" + re.escape(str(path))


def make_dataset(root: Path, sizes: list[tuple[int, int]], mask_ext: str = ".png") -> list[np.ndarray]:
    """root/image/NN.jpg|png + root/gt/NN<mask_ext>; masks white = blurred (Shi's polarity).

    Returns the expected in-focus masks (255 = in focus)."""
    expected = []
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng(i)
        save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), root / "image" / f"{i:02d}.png")
        blurred = np.zeros((h, w), dtype=np.uint8)
        blurred[:, : w // 3] = 255
        save(blurred, root / "gt" / f"{i:02d}{mask_ext}")
        expected.append(255 - blurred)
    return expected


# --- load_rgb: every PIL mode becomes RGB uint8 ---------------------------------------------


def test_rgb_png_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = load_rgb(save(rgb, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_l_and_la_replicate_grey_and_drop_alpha(tmp_path):
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_rgb(save(grey, tmp_path / "l.png")), expected)
    la = Image.merge("LA", (Image.fromarray(grey), Image.fromarray(np.full((2, 2), 7, np.uint8))))
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "la.png"), expected)


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128]]], dtype=np.uint8)
    np.testing.assert_array_equal(load_rgb(save(rgba, tmp_path / "a.png")), rgba[:, :, :3])


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 40, 50, 60])
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png"), [[[10, 20, 30], [40, 50, 60]]])


def test_bilevel_mode_1(tmp_path):
    bits = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out = load_rgb(save(bits, tmp_path / "b.png", mode="1"))
    np.testing.assert_array_equal(out[:, :, 0], bits)
    np.testing.assert_array_equal(out[:, :, 2], bits)


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    for x, value in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)]):
        cmyk.putpixel((x, 0), value)
    cmyk.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(load_rgb(tmp_path / "c.tif"), [[[0, 255, 255], [0, 0, 0], [255, 255, 255]]])


@pytest.mark.parametrize("raw_mode, suffix", [("I;16", ".png"), ("I;16B", ".tif")])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, raw_mode, suffix):
    values = np.array([[0, 257, 65535, 1000, 32896]], dtype=np.uint16)
    dtype = ">u2" if raw_mode.endswith("B") else "<u2"
    Image.frombytes(raw_mode, (5, 1), values.astype(dtype).tobytes()).save(tmp_path / f"g{suffix}")
    with Image.open(tmp_path / f"g{suffix}") as written:
        assert written.mode == raw_mode
    out = load_rgb(tmp_path / f"g{suffix}")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 4, 128])  # round(v / 257)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_32_bit_integer_is_treated_as_16_bit_and_clipped(tmp_path):
    Image.fromarray(np.array([[-5, 257, 65535, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as written:
        assert written.mode == "I"
    np.testing.assert_array_equal(load_rgb(tmp_path / "i.tif")[0, :, 1], [0, 1, 255, 255])


def test_float_image_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((2, 2), dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=starts_with_path(tmp_path / "f.tif") + ".*mode F"):
        load_rgb(tmp_path / "f.tif")


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(DataError, match=starts_with_path(tmp_path / "nope.png") + ": file not found"):
        load_rgb(tmp_path / "nope.png")


def test_garbage_bytes_raise_naming_the_file(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match=starts_with_path(path) + ": cannot read image"):
        load_rgb(path)


def test_truncated_png_raises_naming_the_file(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(noise, tmp_path / "full.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=starts_with_path(path) + ": cannot read image"):
        load_rgb(path)


# --- load_mask ---------------------------------------------------------------------------------


def test_mask_polarities(tmp_path):
    white_blurred = np.array([[255, 0], [0, 255]], dtype=np.uint8)
    path = save(white_blurred, tmp_path / "m.png")
    blurred = load_mask(path, "blurred")
    assert blurred.dtype == np.uint8 and blurred.shape == (2, 2)
    np.testing.assert_array_equal(blurred, [[0, 255], [255, 0]])
    np.testing.assert_array_equal(load_mask(path, "in_focus"), white_blurred)
    np.testing.assert_array_equal(load_mask(path, Polarity.BLURRED), blurred)  # the typed form reads the same


def test_mask_thresholds_luminance_at_128(tmp_path):
    grey = np.array([[127, 128, 40, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(load_mask(save(grey, tmp_path / "g.png"), "in_focus"), [[0, 255, 0, 255]])
    # RGB: luminance 0.299 R + 0.587 G + 0.114 B; pure green 255 → 149.7 (white), pure red → 76 (black).
    rgb = np.array([[[0, 255, 0], [255, 0, 0], [128, 128, 128], [127, 128, 128]]], dtype=np.uint8)
    np.testing.assert_array_equal(load_mask(save(rgb, tmp_path / "c.png"), "in_focus"), [[255, 0, 255, 0]])


def test_mask_modes_1_and_16_bit(tmp_path):
    bits = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(load_mask(save(bits, tmp_path / "b.png", mode="1"), "blurred"), [[255, 0]])
    values = np.array([[0, 40000]], dtype=np.uint16)  # 40000 / 257 ≈ 156 → white
    Image.frombytes("I;16", (2, 1), values.astype("<u2").tobytes()).save(tmp_path / "w.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "w.png", "in_focus"), [[0, 255]])


def test_bad_polarity_names_the_key(tmp_path):
    path = save(np.zeros((2, 2), np.uint8), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"^polarity: must be one of \['blurred', 'in_focus'\], got 'white'$"):
        load_mask(path, "white")


# --- folders and pairs -----------------------------------------------------------------------


def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.JPG", "a.png", "c.TiFF", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.TiFF"]
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def test_list_images_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=starts_with_path(tmp_path / "missing") + ": folder not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=starts_with_path(tmp_path) + ": folder has no images") as err:
        list_images(tmp_path)
    assert ".jpg" in str(err.value) and ".png" in str(err.value) and ".webp" in str(err.value)


def test_find_pairs_matches_stems_across_extensions(tmp_path):
    make_dataset(tmp_path, [(6, 8), (6, 8)], mask_ext=".bmp")
    save(np.zeros((2, 2), np.uint8), tmp_path / "gt" / "orphan_mask.png")  # ignored
    pairs = find_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [("00.png", "00.bmp"), ("01.png", "01.bmp")]
    assert all(i.parent == tmp_path / "image" and m.parent == tmp_path / "gt" for i, m in pairs)


def test_find_pairs_custom_folder_names(tmp_path):
    save(np.zeros((3, 3, 3), np.uint8), tmp_path / "source" / "x.jpg")
    save(np.zeros((3, 3), np.uint8), tmp_path / "truth" / "x.png")
    assert find_pairs(tmp_path, image_dir="source", mask_dir="truth") == [
        (tmp_path / "source" / "x.jpg", tmp_path / "truth" / "x.png")
    ]


def test_image_without_mask_names_the_image(tmp_path):
    make_dataset(tmp_path, [(6, 8)])
    lonely = save(np.zeros((6, 8, 3), np.uint8), tmp_path / "image" / "lonely.jpg")
    with pytest.raises(DataError, match=starts_with_path(lonely) + ": no mask with stem 'lonely'"):
        find_pairs(tmp_path)


def test_duplicate_stems_are_an_error(tmp_path):
    make_dataset(tmp_path, [(6, 8)])
    save(np.zeros((6, 8, 3), np.uint8), tmp_path / "image" / "00.jpg")
    with pytest.raises(DataError, match="duplicate stem '00'"):
        find_pairs(tmp_path)


def test_load_pair_size_mismatch_names_both_files_and_sizes(tmp_path):
    image = save(np.zeros((6, 8, 3), np.uint8), tmp_path / "a.png")
    mask = save(np.zeros((6, 9), np.uint8), tmp_path / "a_gt.png")
    with pytest.raises(DataError, match=starts_with_path(image)) as err:
        load_pair(image, mask, "blurred")
    assert str(mask) in str(err.value) and "8×6" in str(err.value) and "9×6" in str(err.value)


# --- to_tensor and PairDataset -----------------------------------------------------------------


def test_to_tensor_layout_and_range():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[1, 2] = (255, 0, 51)
    t = to_tensor(image)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[:, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert t.sum().item() == pytest.approx(1.2)
    with pytest.raises(ValueError, match="image"):
        to_tensor(image.astype(np.float32))


def test_pair_dataset_resized_items(tmp_path):
    expected = make_dataset(tmp_path, [(20, 30), (24, 18), (16, 16)])
    ds = PairDataset(tmp_path, "blurred", InputConfig(image_size=12, augment=False))
    assert len(ds) == 3 and ds.stems == ["00", "01", "02"] and len(ds.pairs) == 3
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 12, 12) and image.dtype == torch.float32
        assert mask.shape == (1, 12, 12) and mask.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1
        assert set(mask.unique().tolist()) == {0.0, 1.0}
    # Shi's polarity: white = blurred on the left third, so that third is 0 after loading.
    mask = ds[2][1][0]
    assert (mask[:, :4] == 0).all() and (mask[:, 6:] == 1).all()
    assert expected[2][0, 0] == 0


def test_pair_dataset_native_size_matches_files(tmp_path):
    expected = make_dataset(tmp_path, [(10, 14)])
    image, mask = PairDataset(tmp_path, "blurred", InputConfig(augment=False))[0]
    assert image.shape == (3, 10, 14) and mask.shape == (1, 10, 14)
    np.testing.assert_array_equal(mask[0].numpy(), expected[0] / 255)
    np.testing.assert_array_equal(image.numpy(), to_tensor(load_rgb(tmp_path / "image" / "00.png")).numpy())


def test_pair_dataset_polarity_in_focus_inverts(tmp_path):
    make_dataset(tmp_path, [(8, 9)])
    _, as_blurred = PairDataset(tmp_path, "blurred", InputConfig(augment=False))[0]
    _, as_in_focus = PairDataset(tmp_path, "in_focus", InputConfig(augment=False))[0]
    torch.testing.assert_close(as_in_focus, 1 - as_blurred)


def test_pair_dataset_augmented_length_and_items(tmp_path):
    make_dataset(tmp_path, [(20, 26), (18, 18)])
    plain = PairDataset(tmp_path, "blurred", InputConfig(augment=False))
    augmented = PairDataset(tmp_path, "blurred", InputConfig(augment=True))
    assert len(augmented) == 2 * 16
    for a, b in zip(augmented[0], plain[0]):
        torch.testing.assert_close(a, b)
    # Item 16 + 5 is pair 1 under augmentation 5 (90°, flipped).
    image, mask = load_pair(*plain.pairs[1], "blurred")
    want_image, want_mask = augment(image, mask, 5)
    got_image, got_mask = augmented[16 + 5]
    torch.testing.assert_close(got_image, to_tensor(want_image))
    np.testing.assert_array_equal(got_mask[0].numpy(), want_mask / 255)
    # 45° versions are smaller squares at native size, resized ones all S×S.
    assert augmented[2][0].shape == (3, 14, 14)
    resized = PairDataset(tmp_path, "blurred", InputConfig(image_size=10, augment=True))
    assert {tuple(resized[i][0].shape) for i in range(len(resized))} == {(3, 10, 10)}


def test_pair_dataset_index_bounds(tmp_path):
    make_dataset(tmp_path, [(8, 8)])
    ds = PairDataset(tmp_path, "blurred", InputConfig(augment=False))
    torch.testing.assert_close(ds[-1][0], ds[0][0])
    with pytest.raises(IndexError):
        ds[1]


def test_pair_dataset_validates_at_construction(tmp_path):
    make_dataset(tmp_path, [(8, 8)])
    with pytest.raises(ValueError, match="^polarity: must be one of"):
        PairDataset(tmp_path, "white", InputConfig(image_size=8, augment=False))
    assert PairDataset(tmp_path, "in_focus", InputConfig(image_size=8, augment=False)).polarity is Polarity.IN_FOCUS
    with pytest.raises(ValueError, match="size"):
        PairDataset(tmp_path, "blurred", InputConfig(image_size=0, augment=False))
    save(np.zeros((8, 8, 3), np.uint8), tmp_path / "image" / "no_mask.png")
    with pytest.raises(DataError, match="no_mask.png: no mask"):
        PairDataset(tmp_path, "blurred", InputConfig(image_size=8, augment=False))


def test_pair_dataset_decodes_lazily(tmp_path):
    make_dataset(tmp_path, [(8, 8), (8, 8)])
    (tmp_path / "image" / "01.png").write_bytes(b"corrupt")
    ds = PairDataset(tmp_path, "blurred", InputConfig(image_size=8, augment=False))  # pairs are matched, nothing decoded yet
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match="01.png: cannot read image"):
        ds[1]


def test_pair_dataset_works_with_dataloader(tmp_path):
    make_dataset(tmp_path, [(12, 12), (14, 10)])
    loader = torch.utils.data.DataLoader(PairDataset(tmp_path, "blurred", InputConfig(image_size=8, augment=True)), batch_size=4)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and masks.shape == (4, 1, 8, 8)


# --- splits, shrinking, crops ---------------------------------------------------------------

SPLITS = Path(__file__).resolve().parents[1] / "data" / "splits"


def test_the_committed_validation_split_follows_its_rule():
    from btbnet.data import holdout_stems, read_stems

    train, val = read_stems(SPLITS / "cuhk_train.txt"), read_stems(SPLITS / "cuhk_val.txt")
    assert len(train) == 604 and len(set(train)) == 604 and len(val) == 100
    assert holdout_stems(train, 100, seed=2018) == val
    assert holdout_stems(train, 100, seed=2019) != val


def test_read_stems_skips_comments_and_names_a_missing_file(tmp_path):
    from btbnet.data import read_stems

    (tmp_path / "s.txt").write_text("# held out\na\n\nb  # second\n")
    assert read_stems(tmp_path / "s.txt") == ["a", "b"]
    with pytest.raises(DataError, match="nowhere.txt: stem list not found"):
        read_stems(tmp_path / "nowhere.txt")


def striped_pair(root: Path, stem: str, h: int, w: int) -> None:
    """An image whose pixel (y, x) encodes its coordinates, and a mask blurred left of w // 2."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    yy, xx = np.indices((h, w))
    image = np.stack([yy % 256, xx % 256, (yy + xx) % 256], axis=2).astype(np.uint8)
    Image.fromarray(image).save(root / "image" / f"{stem}.png")
    Image.fromarray(np.where(xx < w // 2, 255, 0).astype(np.uint8)).save(root / "gt" / f"{stem}.png")  # 255 = blurred


def test_exclude_leaves_out_the_listed_stems_and_names_unknown_ones(tmp_path):
    for stem in ("a", "b", "c"):
        striped_pair(tmp_path, stem, 8, 8)
    assert PairDataset(tmp_path, "blurred", InputConfig(augment=False), exclude=["b"]).stems == ["a", "c"]
    with pytest.raises(DataError, match="excluded stem 'z' has no pair"):
        PairDataset(tmp_path, "blurred", InputConfig(augment=False), exclude=["z"])


def test_crops_are_windows_of_the_shrunk_pair_redrawn_each_epoch(tmp_path):
    striped_pair(tmp_path, "a", 40, 60)
    data = PairDataset(tmp_path, "blurred", InputConfig(augment=False, max_size=30, crop_size=12), seed=3)
    image, mask = data.arrays(0)
    assert image.shape == (12, 12, 3) and mask.shape == (12, 12)
    shrunk, shrunk_mask = PairDataset(tmp_path, "blurred", InputConfig(max_size=30, augment=False)).arrays(0)
    assert shrunk.shape == (20, 30, 3)  # the longer side is max_size
    windows = [(y, x) for y in range(20 - 11) for x in range(30 - 11)
               if np.array_equal(shrunk[y:y + 12, x:x + 12], image) and np.array_equal(shrunk_mask[y:y + 12, x:x + 12], mask)]
    assert len(windows) == 1  # the crop is one window of the shrunk pair, image and mask aligned
    again = PairDataset(tmp_path, "blurred", InputConfig(max_size=30, crop_size=12, augment=False), seed=3).arrays(0)
    assert np.array_equal(again[0], image)  # (seed, epoch, item) decide the window
    data.set_epoch(1)
    assert not np.array_equal(data.arrays(0)[0], image)


def test_a_45_degree_version_too_small_for_the_crop_falls_back_to_the_right_angle(tmp_path):

    striped_pair(tmp_path, "a", 20, 30)
    data = PairDataset(tmp_path, "blurred", InputConfig(augment=True, crop_size=18))
    # version 2 is 45°: its inscribed square (floor(20 / √2) = 14) < 18, so version 0 is used
    image, _ = data.arrays(2)
    base, base_mask = PairDataset(tmp_path, "blurred", InputConfig(augment=False)).arrays(0)
    assert image.shape == (18, 18, 3)
    assert any(np.array_equal(base[y:y + 18, x:x + 18], image) for y in range(3) for x in range(13))
    assert augment(base, base_mask, 2)[0].shape[0] == 14
def test_a_pair_smaller_than_the_crop_is_upscaled_first(tmp_path):
    striped_pair(tmp_path, "a", 10, 16)
    image, mask = PairDataset(tmp_path, "blurred", InputConfig(crop_size=20, augment=False)).arrays(0)
    assert image.shape == (20, 20, 3) and set(np.unique(mask)) <= {0, 255}


# --- photos as viewers show them ------------------------------------------------------------------

# EXIF orientation → where the stored grid's top-left pixel shows (row, col of the shown image of
# a stored H×W = 4×6 picture), and the shown size; written out from the EXIF specification.
ORIENTATIONS = {1: ((0, 0), (4, 6)), 2: ((0, 5), (4, 6)), 3: ((3, 5), (4, 6)), 4: ((3, 0), (4, 6)),
                5: ((0, 0), (6, 4)), 6: ((0, 3), (6, 4)), 7: ((5, 3), (6, 4)), 8: ((5, 0), (6, 4))}  # fmt: skip


@pytest.mark.parametrize("orientation", ORIENTATIONS, ids=lambda o: f"orientation-{o}")
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_to_images_masks_and_header_sizes(tmp_path, orientation, suffix):
    """A phone photo stored sideways with Orientation = 6 is read upright, as every viewer shows it."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = 255  # the stored top-left pixel, white
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}))
    corner, shape = ORIENTATIONS[orientation]
    image = load_rgb(path)
    assert image.shape[:2] == shape and image_size(path) == shape[::-1]  # (W, H) from the header agrees
    assert tuple(np.argwhere(image[..., 0] > 128)[0]) == corner
    mask = load_mask(path, "in_focus")
    assert mask.shape == shape and tuple(np.argwhere(mask == 255)[0]) == corner


def test_an_animation_is_refused_naming_it_alone_or_in_a_folder(tmp_path):
    """One rule for a file named on its own and for one found in a folder: still images only
    (a GIF of one frame is a still image)."""
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.gif")
    assert load_rgb(tmp_path / "still.gif").shape == (6, 8, 3)
    with pytest.raises(DataError, match=starts_with_path(tmp_path / "moving.gif") + ": 3 frames \\(an animation or a multi-page file\\)"):
        load_rgb(tmp_path / "moving.gif")
    assert [p.name for p in list_images(tmp_path)] == ["moving.gif", "still.gif"]  # listed, not skipped in silence
