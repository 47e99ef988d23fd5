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
) -> None:
    """One line per entry (x values, y values), written as a PNG without timestamps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if limits:
        ax.set(xlim=limits[0], ylim=limits[1])
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
