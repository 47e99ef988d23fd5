"""Training-set augmentation: 8 orientations × horizontal flip = 16 versions (section 4.1).

The paper enlarges Shi's 604 training images to 9664 = 604 × 16 "by horizontal flipping at each
orientation and rotating to 8 different orientations", as HED does. `augment(image, mask, i)`
is version i of a pair, a pure function of its inputs:

    angle = 45° × (i // 2), counter-clockwise;   flipped = (i % 2 == 1), flip after rotating.

So i = 0 is the pair itself and i = 1 its mirror image. Right angles (0°, 90°, 180°, 270°)
use `np.rot90` and are exact. The other four angles (45°, 135°, 225°, 315°) first rotate by the
nearest lower right angle with `np.rot90`, then by 45° with PIL (bilinear for the image,
nearest for the mask, so the mask stays binary), and finally crop the centred square of side
floor(min(H', W') / √2), the largest axis-aligned rectangle inscribed in a rectangle turned by
45°: no empty (black) corners appear, and those versions are smaller than the input.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .images import check_image, check_mask

NUM_AUGMENTATIONS = 16


def augment(image: np.ndarray, mask: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Version `index` (0…15) of the pair: image [H, W, 3] uint8, mask [H, W] uint8 {0, 255}.

    Returns new, writable, C-contiguous arrays (image [H', W', 3], mask [H', W']) that stay pixel-aligned;
    H' = H, W' = W for 0° and 180°, swapped for 90° and 270°, a square crop for 45° + k·90°.
    """
    check_image(image, min_side=2)
    check_mask(mask, image.shape[:2])
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < NUM_AUGMENTATIONS:
        raise ValueError(f"index: must be an integer in 0…{NUM_AUGMENTATIONS - 1}, got {index!r}")
    quarter_turns, half_step = divmod(int(index) // 2, 2)  # angle = 90° × quarter_turns + 45° × half_step
    image, mask = np.rot90(image, quarter_turns), np.rot90(mask, quarter_turns)
    if half_step:
        image, mask = rotate_45(image, mask)
    if index % 2 == 1:
        image, mask = np.fliplr(image), np.fliplr(mask)
    return np.array(image, order="C"), np.array(mask, order="C")  # fresh, writable copies


def rotate_45(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the pair by 45° counter-clockwise and crop the largest inscribed square.

    A rectangle with short side s turned by 45° holds, axis-aligned, at most a square of side
    s / √2: an axis-aligned w × h box spans (w + h) / √2 across the turned rectangle's short
    axis, so w + h <= s·√2, and the area w·h peaks at w = h. Cropping floor(s / √2) around the
    centre keeps every output pixel inside the rotated content.
    """
    side = math.floor(min(image.shape[:2]) / math.sqrt(2))
    turned_image = Image.fromarray(np.ascontiguousarray(image)).rotate(45, Image.Resampling.BILINEAR, expand=True)
    turned_mask = Image.fromarray(np.ascontiguousarray(mask)).rotate(45, Image.Resampling.NEAREST, expand=True)
    width, height = turned_image.size  # identical for both: same size, same transform
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return np.array(turned_image.crop(box)), np.array(turned_mask.crop(box))
