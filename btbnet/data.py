"""Data sets of (image, mask) pairs for defocus blur detection: reading, pairing, PairDataset.

A data set is a folder with two sub-folders, `image/` and `gt/` by default, whose files are
matched by stem: ``image/0001.jpg`` ↔ ``gt/0001.png``. Masks are returned with the project
convention, 255 (or 1.0) = in focus; `polarity` says what white means in the files:

    "blurred"   white marks the out-of-focus region (Shi's / CUHK data set)
    "in_focus"  white marks the in-focus region (DUT's original release)

Reading rules, shared by every caller:
  - Any PIL mode becomes RGB uint8. 16-bit grey ("I;16*", and "I" taken as 16-bit) is scaled
    to 8 bits as round(v / 257), not clipped as PIL's own conversion does. Alpha is dropped,
    not composited: the colour values are what the camera recorded, and compositing over a
    background would invent edges. Floating-point ("F") images are refused.
  - Images are read as viewers show them: an EXIF orientation tag (a phone photo taken upright,
    stored sideways) is applied, to images and masks alike, and sizes from headers account
    for it (`image_size`).
  - Still images only: a file of several frames (an animated GIF, WebP or PNG, a multi-page
    TIFF) is refused with a `DataError` naming it, whether it is named on its own or found in
    a folder (GIFs are listed like any image, so that one is never skipped silently).
  - Files are fully decoded (`Image.load`), so truncated or corrupt files fail at read time
    with a `DataError` that names them.
"""

from __future__ import annotations

import io

import math
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .augment import NUM_AUGMENTATIONS
from .augment import augment as augment_pair
from .config import Choice, ConfigError, check_int
from .images import check_image, fit_within, resize

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # any case
ORIENTATION = 0x0112  # the EXIF tag; values 5…8 swap width and height
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MASK_THRESHOLD = 128  # luminance >= 128 is white

# What PIL raises for unreadable, truncated or corrupt files, by format plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class DataError(ValueError):
    """A bad data file or folder; the message starts with the offending path."""


def load_rgb(path: str | Path, content: bytes | None = None) -> np.ndarray:
    """The image at `path` as RGB, [H, W, 3] uint8 (see the module doc for mode handling).
    `content`: the file's bytes, read elsewhere (errors still name `path`)."""
    path = Path(path)
    with _open_decoded(path, content) as img:
        if img.mode in SIXTEEN_BIT_MODES:
            grey = _sixteen_to_eight_bit(np.asarray(img))  # [H, W]
            return np.repeat(grey[:, :, None], 3, axis=2)
        if img.mode == "F":
            raise DataError(f"{path}: floating-point images (PIL mode F) are not supported")
        return np.array(img.convert("RGB"), dtype=np.uint8)


class Polarity(Choice):
    """What white (255) means in a data set's mask files (the masks this library returns are
    always 255 = in focus): Shi's set marks the blurred region; the synthesize stage and DUT's
    original release mark the sharp one. `Polarity("white")` is a ConfigError."""

    BLURRED = "blurred"
    IN_FOCUS = "in_focus"


def load_mask(path: str | Path, polarity: Polarity | str) -> np.ndarray:
    """The mask at `path`, [H, W] uint8 in {0, 255} with 255 = in focus.

    Colour masks are reduced to luminance (ITU-R 601, as PIL's "L"), then thresholded at 128;
    `polarity` says what white means in the file.
    """
    polarity = Polarity(polarity)  # a Polarity passes as it is; a bad string is a ConfigError
    rgb = load_rgb(path).astype(np.int32)  # [H, W, 3]
    luminance_x1000 = 299 * rgb[:, :, 0] + 587 * rgb[:, :, 1] + 114 * rgb[:, :, 2]  # exact integers
    white = luminance_x1000 >= MASK_THRESHOLD * 1000  # [H, W] bool
    in_focus = white if polarity is Polarity.IN_FOCUS else ~white
    return np.where(in_focus, 255, 0).astype(np.uint8)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (IMAGE_EXTENSIONS, any case), sorted by path below it.

    recursive: also in its sub-folders (symbolic links to folders are not followed, so a link
    loop cannot recurse forever). Hidden files and folders (".name", e.g. macOS "._0001.jpg"
    resource forks) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if recursive:
        candidates = []
        for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            candidates += [Path(dirpath) / name for name in filenames]
    else:
        candidates = list(folder.iterdir())
    images = sorted((p for p in candidates if _is_image_file(p)), key=lambda p: p.relative_to(folder).parts)
    if not images:
        accepted = ", ".join(IMAGE_EXTENSIONS)
        where = ", nor do its sub-folders" if recursive else ""
        raise DataError(f"{folder}: folder has no images{where} (accepted extensions: {accepted}, any case)")
    return images


def find_pairs(root: str | Path, image_dir: str = "image", mask_dir: str = "gt") -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem, sorted by image name.

    Every image needs a mask (any image extension) with the same stem; masks without an image
    are ignored. Two files with the same stem in one folder are an error.
    """
    root = Path(root)
    images = _by_stem(list_images(root / image_dir))
    masks = _by_stem(list_images(root / mask_dir))
    pairs = []
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"{image}: no mask with stem {stem!r} in {root / mask_dir}")
        pairs.append((image, masks[stem]))
    return pairs


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file as viewers show it (EXIF orientation applied), from its header
    alone (no decode); DataError naming the file if it is missing, empty or not an image PIL
    reads."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn: as viewers show it
            return (img.height, img.width) if turned else img.size
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def check_pair_headers(image_path: Path, mask_path: Path) -> None:
    """The cheap part of `load_pair`'s checks: both files readable images of the same size."""
    check_same_size(image_path, image_size(image_path), mask_path, image_size(mask_path))


def check_same_size(image_path: Path, size: tuple[int, int], mask_path: Path, mask_size: tuple[int, int]) -> None:
    """DataError naming both files unless the (W, H) sizes agree."""
    if size != mask_size:
        (w, h), (mw, mh) = size, mask_size
        raise DataError(f"{image_path}: image is {w}×{h} (W×H) but its mask {mask_path} is {mw}×{mh}")


def load_pair(image_path: str | Path, mask_path: str | Path, polarity: Polarity | str) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3] uint8, mask [H, W] uint8 {0, 255}, 255 = in focus) of one pair."""
    image, mask = load_rgb(image_path), load_mask(mask_path, polarity)
    check_same_size(image_path, image.shape[1::-1], mask_path, mask.shape[::-1])
    return image, mask


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] → float32 tensor [3, H, W] in [0, 1], the model's input format."""
    check_image(image)
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] in {0, 255} → float32 tensor [1, H, W] in {0, 1} (1 = in focus)."""
    return torch.from_numpy(np.ascontiguousarray(mask == 255)).float().unsqueeze(0)


@dataclass(frozen=True)
class InputConfig:
    """How training pairs become network inputs (section 4.1).

    max_size:    each pair is first shrunk so its longer side is at most max_size (antialiased
                 bilinear image, nearest mask): the scale blur is learnt at. Predict at the
                 same scale (`evaluate.max_size`, `btbnet predict --max-size`): defocus is a
                 property of scale, a σ = 2 px blur vanishes when a picture is shrunk 10×.
                 None keeps the native size.
    augment:     the 16 rotations / flips of section 4.1, applied at load time.
    crop_size:   a random crop_size × crop_size window of the (shrunk, augmented) pair, drawn
                 afresh each epoch from (seed, epoch, item); a 45° version too small for it is
                 replaced by its right-angle neighbour, a pair still too small is upscaled.
    image_size:  instead of cropping, the whole pair is resized to image_size × image_size
                 (this distorts its aspect and blur scale). Both None: the pair as it is,
                 which batches only one by one.
    """

    max_size: int | None = None
    augment: bool = True
    crop_size: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        check_int("max_size", self.max_size, 8, allow_none=True)
        check_int("crop_size", self.crop_size, 8, allow_none=True)
        check_int("image_size", self.image_size, 8, allow_none=True)
        if self.crop_size is not None and self.image_size is not None:
            raise ConfigError("crop_size", "set crop_size or image_size, not both")

    @property
    def fixed_size(self) -> bool:
        """Whether every item has the same size (so that items batch together)."""
        return self.crop_size is not None or self.image_size is not None

    def dataset(self, root: str | Path, polarity: Polarity | str, exclude: Collection[str] = (), seed: int = 0) -> "PairDataset":
        return PairDataset(root, polarity, self, exclude=exclude, seed=seed)


def read_stems(path: str | Path) -> list[str]:
    """File stems listed one per line in a text file (blank lines and # comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: stem list not found")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    stems = [line for line in lines if line]
    if not stems:
        raise DataError(f"{path}: lists no stems")
    return stems


def pairs_by_stem(pairs: list[tuple[Path, Path]], stems: Collection[str], root: str | Path, keep: bool) -> list[tuple[Path, Path]]:
    """The pairs whose image stem is in `stems` (keep=True: a test set's split file) or is not
    (keep=False: a training set without its held-out stems); a listed stem that names no pair
    is a DataError naming `root`."""
    listed = set(stems)
    unknown = sorted(listed - {image.stem for image, _ in pairs})
    if unknown:
        raise DataError(f"{root}: {'listed' if keep else 'excluded'} stem {unknown[0]!r} has no pair ({len(unknown)} missing)")
    return [(image, mask) for image, mask in pairs if (image.stem in listed) == keep]


def holdout_stems(stems: Collection[str], count: int, seed: int) -> list[str]:
    """`count` of `stems` drawn without replacement by numpy's default_rng(seed) from the
    sorted list, returned sorted: the rule behind data/splits/cuhk_val.txt (count 100, seed 2018)."""
    ordered = sorted(stems)
    if not 0 < count <= len(ordered):
        raise ValueError(f"count: must be in 1…{len(ordered)}, got {count}")
    picked = np.random.default_rng(seed).choice(len(ordered), count, replace=False)
    return sorted(ordered[i] for i in picked)


class PairDataset(torch.utils.data.Dataset):
    """(image, mask) tensors of a data set folder, optionally ×16 augmented (section 4.1).

    Item i is pair i, or with `augment` pair i // 16 under `btbnet.augment.augment(…, i % 16)`.
    Each pair is shrunk to `input.max_size`, augmented, then cropped (`crop_size`) or resized
    (`image_size`), as that `InputConfig` describes. Returns image [3, S, S] float32 in [0, 1] and mask
    [1, S, S] float32 in {0, 1} (1 = in focus). Pairs whose stem is in `exclude` are left out
    (a held-out split); every excluded stem must exist. All pairs are matched at construction
    (`find_pairs`); images are decoded lazily in `__getitem__`. `set_epoch` re-draws the crops.
    """

    def __init__(
        self,
        root: str | Path,
        polarity: Polarity | str,
        input: InputConfig = InputConfig(augment=False),
        exclude: Collection[str] = (),
        seed: int = 0,
        image_dir: str = "image",
        mask_dir: str = "gt",
    ):
        self.root = Path(root)
        self.polarity = Polarity(polarity)  # a bad one fails here, not at the first item
        self.input = input  # checked when it was built: InputConfig.__post_init__
        self.size, self.augment, self.max_size, self.crop_size = input.image_size, input.augment, input.max_size, input.crop_size
        self.seed = seed
        self.epoch = 0
        self.pairs: list[tuple[Path, Path]] = pairs_by_stem(find_pairs(self.root, image_dir, mask_dir), exclude, self.root, keep=False)
        if not self.pairs:
            raise DataError(f"{self.root}: every pair is excluded")
        self.stems: list[str] = [image.stem for image, _ in self.pairs]

    def check_files(self) -> None:
        """Every pair's two files readable and of one size, from their headers (no decode):
        run once before training, so that bad data fails in seconds, not in a worker."""
        for image, mask in self.pairs:
            check_pair_headers(image, mask)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs) * (NUM_AUGMENTATIONS if self.augment else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.arrays(index)
        return to_tensor(image), mask_to_tensor(mask)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as arrays: image [S, S, 3] uint8, mask [S, S] uint8 {0, 255}."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: {index} out of range for {len(self)} items")
        index %= len(self)  # negative indices count from the end
        pair, version = divmod(index, NUM_AUGMENTATIONS) if self.augment else (index, 0)
        image, mask = load_pair(*self.pairs[pair], self.polarity)
        if self.max_size is not None:
            size = fit_within(image.shape[:2], self.max_size)
            image = resize(image, size, Image.Resampling.BILINEAR)
            mask = resize(mask, size, Image.Resampling.NEAREST)
        if self.augment:
            if self.crop_size and version // 2 % 2 and min(image.shape[:2]) / math.sqrt(2) < self.crop_size:
                version -= 2  # the 45° square would be smaller than the crop: the right angle below
            image, mask = augment_pair(image, mask, version)
        if self.crop_size is not None:
            image, mask = self._crop(image, mask, index)
        elif self.size is not None:
            image = resize(image, (self.size, self.size), Image.Resampling.BILINEAR)
            mask = resize(mask, (self.size, self.size), Image.Resampling.NEAREST)
        return image, mask

    def _crop(self, image: np.ndarray, mask: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop_size
        h, w = mask.shape
        if min(h, w) < c:  # upscale so the shorter side is the crop's
            scale = c / min(h, w)
            h, w = max(c, round(h * scale)), max(c, round(w * scale))
            image = resize(image, (h, w), Image.Resampling.BILINEAR)
            mask = resize(mask, (h, w), Image.Resampling.NEAREST)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        return np.ascontiguousarray(image[y : y + c, x : x + c]), np.ascontiguousarray(mask[y : y + c, x : x + c])


def _open_decoded(path: Path, content: bytes | None = None) -> Image.Image:
    """Open and fully decode `path` (or its `content`), turned as its EXIF orientation says;
    DataError naming the file when that fails or when it holds several frames."""
    if content is None and not path.is_file():
        raise DataError(f"{path}: file not found")
    img = None
    try:
        img = Image.open(path if content is None else io.BytesIO(content))
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            img.close()
            img = None
        else:
            img.load()  # force the full decode: truncated files fail here, not later
            turned = ImageOps.exif_transpose(img)  # a new image only when the tag turns it
            if turned is not img:
                img.close()
                img = turned
    except _DECODE_ERRORS as exc:
        if img is not None:
            img.close()
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if img is None:
        raise DataError(f"{path}: {frames} frames (an animation or a multi-page file); save the one to use as a still image")
    return img


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    """16-bit grey levels [H, W] → uint8 by round(v / 257) (65535 → 255); "I" clipped to 16 bits."""
    v = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(v / 257).astype(np.uint8)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise DataError(f"{path}: duplicate stem {path.stem!r}, also used by {by_stem[path.stem]}")
        by_stem[path.stem] = path
    return by_stem


