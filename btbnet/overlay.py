"""The picture `btbnet predict --overlay` writes: image | focus map | shaded image, for eyes.

Three tiles side by side under column headers ("image", "focus map", "overlay"), with a legend
below them that says what the grey levels and the marks mean. Tiles are at least MIN_TILE px on
their shorter side: a smaller image is enlarged (nearest neighbour, so every image pixel stays a
visible block) for display only; the focus map written next to it keeps the image's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import check_image, resize

# Third tile: blurred pixels lose their colour and light and are striped white and black, by
# the blur's amount: visible on any scene, blue water and sky or white snow or a dark night.
BLUR_DARKEN = 0.45  # a fully blurred pixel keeps this share of its grey level
STRIPE_PERIOD = 12  # px, along the diagonal: a white line, then a black one, then the pixels
STRIPE_WIDTH = 2  # px of each line
STRIPE_OPACITY = 0.75  # of the lines over a fully blurred pixel
MIN_TILE = 256  # px, the shorter side of a tile at least
HEADERS = ("image", "focus map", "overlay")
BACKGROUND = (245, 245, 245)
INK = (20, 20, 20)


@dataclass(frozen=True)
class Layout:
    """Geometry of an overlay picture: three tiles of `tile` = (h, w) px in a row, `gap` px
    apart and from the edges, below a header band of `header` px and above a legend of
    `legend` px; `font` is the text size in px."""

    tile: tuple[int, int]
    gap: int
    font: int

    @property
    def header(self) -> int:
        return self.font + self.gap

    @property
    def legend(self) -> int:
        return len(legend_entries()) * (self.font + self.gap) + self.gap

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the whole picture."""
        h, w = self.tile
        return self.gap + self.header + h + self.legend, 4 * self.gap + 3 * w

    def origin(self, column: int) -> tuple[int, int]:
        """(top, left) of tile `column` (0 image, 1 focus map, 2 overlay)."""
        return self.gap + self.header, self.gap + column * (self.tile[1] + self.gap)


def layout(size: tuple[int, int]) -> Layout:
    """The layout for an image of `size` = (H, W): tiles enlarged so the shorter side is at
    least MIN_TILE (aspect ratio kept), text scaled with them."""
    h, w = size
    scale = MIN_TILE / min(h, w)
    tile = (max(MIN_TILE, round(h * scale)), max(MIN_TILE, round(w * scale))) if scale > 1 else (h, w)
    font = max(14, min(tile) // 18)
    return Layout(tile=tile, gap=max(8, font // 2), font=font)


def shade(image: np.ndarray, focus_map: np.ndarray) -> np.ndarray:
    """`image` with its blurred part marked, by b = 1 − map / 255 per pixel: its colour drained
    to grey and darkened (to BLUR_DARKEN × the grey at b = 1), and diagonal lines, white then
    black, drawn over it with opacity STRIPE_OPACITY × b; in-focus pixels (b = 0) keep theirs.
    The lines make a blurred region stand out on any colour, where a tint would vanish on its
    own hue."""
    b = 1.0 - focus_map[:, :, None].astype(np.float32) / 255  # [H, W, 1] how blurred
    pixels = image.astype(np.float32)
    grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # [H, W]
    base = pixels * (1 - b) + (BLUR_DARKEN * grey)[:, :, None] * b
    rows, cols = np.indices(focus_map.shape)
    phase = (rows + cols) % STRIPE_PERIOD
    line = np.where(phase < STRIPE_WIDTH, 255.0, np.where((phase >= STRIPE_PERIOD // 2) & (phase < STRIPE_PERIOD // 2 + STRIPE_WIDTH), 0.0, np.nan))
    alpha = np.where(np.isnan(line), 0.0, STRIPE_OPACITY)[:, :, None] * b  # [H, W, 1]
    shaded = base * (1 - alpha) + np.nan_to_num(line)[:, :, None] * alpha
    return np.clip(np.rint(shaded), 0, 255).astype(np.uint8)


def legend_entries() -> list[tuple[tuple[int, int, int], str]]:
    """(swatch colour, text) per legend line."""
    drained = tuple(int(c) for c in shade(np.full((1, 1, 3), (200, 120, 60), np.uint8), np.zeros((1, 1), np.uint8))[0, 0])
    return [
        ((255, 255, 255), "in focus: white in the focus map; original colours in the overlay"),
        ((0, 0, 0), "blurred: black in the focus map (grey: in between)"),
        (drained, "blurred: greyed, darkened and striped white and black in the overlay (stronger = more blurred)"),
    ]


def overlay(image: np.ndarray, focus_map: np.ndarray) -> np.ndarray:
    """Side-by-side picture for eyes: uint8 [H', W', 3] RGB, laid out by `layout`.

    Tiles, left to right, under the headers "image", "focus map", "overlay":
      1. the image itself;
      2. the focus map as grey (white = in focus, black = blurred);
      3. the image with its blurred part marked (`shade`): greyed, darkened and striped, the
         more the blurrier; in-focus pixels keep their colours.
    Below them, a legend with a swatch per meaning. Each tile is the image's pixels enlarged
    (nearest neighbour) to `layout(...).tile` when the image is smaller than MIN_TILE.

    image: uint8 [H, W, 3] RGB; focus_map: uint8 [H, W], 255 = in focus.
    """
    check_image(image)
    if focus_map.shape != image.shape[:2] or focus_map.dtype != np.uint8:
        raise ValueError(
            f"focus_map: expected uint8 {list(image.shape[:2])} like the image, "
            f"got {focus_map.dtype} {list(focus_map.shape)}"
        )
    grid = layout(image.shape[:2])
    tiles = [image, np.repeat(focus_map[:, :, None], 3, axis=2), shade(image, focus_map)]
    picture = np.empty((*grid.size, 3), dtype=np.uint8)
    picture[:] = BACKGROUND
    for column, tile in enumerate(tiles):
        top, left = grid.origin(column)
        picture[top : top + grid.tile[0], left : left + grid.tile[1]] = resize(tile, grid.tile, Image.Resampling.NEAREST)
    canvas = Image.fromarray(picture)
    draw_text(ImageDraw.Draw(canvas), grid)
    return np.asarray(canvas)


def draw_text(draw: ImageDraw.ImageDraw, grid: Layout) -> None:
    """The column headers (centred above the tiles) and the legend (below them)."""
    try:
        font = ImageFont.load_default(size=grid.font)  # a scalable font (needs FreeType)
    except ImportError:
        font = ImageFont.load_default()  # PIL's small bitmap font
    for column, header in enumerate(HEADERS):
        top, left = grid.origin(column)
        draw.text((left + grid.tile[1] / 2, top - grid.gap / 2), header, fill=INK, font=font, anchor="ms")
    y = grid.origin(0)[0] + grid.tile[0] + grid.gap
    for colour, text in legend_entries():
        x = grid.gap
        draw.rectangle((x, y, x + grid.font, y + grid.font), fill=colour, outline=INK)
        draw.text((x + grid.font + grid.gap, y + grid.font / 2), text, fill=INK, font=font, anchor="lm")
        y += grid.font + grid.gap
