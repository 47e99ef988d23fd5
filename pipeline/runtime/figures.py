"""PNG pictures for MLflow and DVC: image grids and PR curves (no CDN needed to view them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] → uint8 [H, W, 3]."""
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def image_grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tile uint8 images row by row on a white canvas; cells take the largest image's size."""
    cells = [[as_rgb(im) for im in row] for row in rows]
    h = max(im.shape[0] for row in cells for im in row)
    w = max(im.shape[1] for row in cells for im in row)
    cols = max(len(row) for row in cells)
    canvas = np.full((len(cells) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            canvas[y : y + im.shape[0], x : x + im.shape[1]] = im
    return canvas


EXAMPLE_HEADERS = ("image", "truth", "prediction")
MIN_TILE = 256  # px: the shorter side of every tile, at least (small images enlarged for display)


def example_grid(rows: list[list[np.ndarray]], captions: list[str], path: Path, title: str) -> None:
    """The evaluation's examples as a PNG for eyes: a row per image, columns image | truth |
    prediction under their headers, each prediction captioned (evaluate: its per-image F and
    MAE), tiles of at least MIN_TILE px, and a legend for the grey levels.
    rows: [image RGB, truth, prediction], uint8, 255 = in focus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = max(r[0].shape[0] for r in rows)
    w = max(r[0].shape[1] for r in rows)
    scale = max(1.0, MIN_TILE / min(h, w))
    dpi, caption = 100, 0.45  # inches of text per row (header or caption)
    fig, axes = plt.subplots(len(rows), 3, squeeze=False, dpi=dpi,
                             figsize=(3 * w * scale / dpi + 0.6, len(rows) * (h * scale / dpi + 2 * caption) + 0.8))  # fmt: skip
    for r, ((image, truth, prediction), caption) in enumerate(zip(rows, captions)):
        for c, tile in enumerate((image, truth, prediction)):
            ax = axes[r][c]
            ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(EXAMPLE_HEADERS[c], fontsize=12)
        axes[r][2].set_xlabel(caption, fontsize=12)
    fig.suptitle(title, fontsize=13)
    fig.text(0.5, 0.01, "white: in focus · black: blurred · grey: the model's in-between (probability × 255)",
             ha="center", va="bottom", fontsize=11)  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def plot_pr_curves(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    """Precision against recall, one line per test set (section 4.2)."""
    lines = {name: (recall, precision) for name, (precision, recall) in curves.items()}
    title = "PR curves (thresholds 0…255)"
    plot_lines(lines, path, xlabel="recall", ylabel="precision", title=title, limits=((0, 1), (0, 1.02)))


def plot_lines(
    lines: dict[str, tuple[list[float], list[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    limits: tuple[tuple[float, float], tuple[float, float]] | None = None,
    colours: dict[str, str] | None = None,
    log_y: bool = False,
) -> None:
    """One line per entry (x values, y values), written as a PNG without timestamps; `colours`
    fixes a line's colour by its name (so that two runs' pictures agree), `log_y` a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=name, color=(colours or {}).get(name))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log_y:
        ax.set_yscale("log")
    if limits:
        ax.set(xlim=limits[0], ylim=limits[1])
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
