"""Pictures of samples: image grids, trajectory strips, and 2-D scatter plots over a score field."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def image_grid(images: np.ndarray, n_cols: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images in [0, 1] into one ``uint8`` picture (``C`` = 1 or 3)."""
    images = np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0.0, 1.0)
    n, h, w, c = images.shape
    n_cols = n_cols or int(math.ceil(math.sqrt(n)))
    n_rows = int(math.ceil(n / n_cols))
    grid = np.ones((n_rows * (h + padding) + padding, n_cols * (w + padding) + padding, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, n_cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    grid = (grid * 255.0 + 0.5).astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


def save_image_grid(images: np.ndarray, path: str, n_cols: int | None = None, scale: int = 1) -> None:
    """Write :func:`image_grid` of ``images`` to a PNG file, optionally upscaled ``scale`` times."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    picture = Image.fromarray(image_grid(images, n_cols))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)


def save_inpainting_panels(
    originals: np.ndarray, masked: np.ndarray, completions: np.ndarray, path: str, scale: int = 1
) -> None:
    """Three image grids side by side — original | masked input | completion — the same example in the same
    cell of each, separated by a wide white gap."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    panels = [image_grid(images) for images in (originals, masked, completions)]
    gap = np.full(
        (panels[0].shape[0], 4 * (1 + originals.shape[1] // 8), *panels[0].shape[2:]), 255, np.uint8
    )
    picture = Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)


def save_trajectory_strip(trajectory: np.ndarray, path: str, n_examples: int = 8, scale: int = 1) -> None:
    """Rows = examples, columns = saved iterates of a ``(T, N, H, W, C)`` image trajectory."""
    frames = np.asarray(trajectory)[:, :n_examples]  # (T, n, H, W, C)
    t, n = frames.shape[:2]
    tiles = np.transpose(frames, (1, 0, 2, 3, 4)).reshape(n * t, *frames.shape[2:])
    save_image_grid(tiles, path, n_cols=t, scale=scale)


def save_scatter(
    samples: np.ndarray,
    path: str,
    *,
    score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    true_score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    limits: tuple[float, float] = (-8.0, 8.0),
    title: str = "",
) -> None:
    """Scatter 2-D samples over the learned score field (and the true one, dashed, when given)."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    samples = np.asarray(samples)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="tab:blue", label="samples")
    grid = np.linspace(*limits, 21)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], axis=-1).astype(np.float32)
    for fn, color, label in ((score_fn, "tab:red", "learned score"), (true_score_fn, "black", "true score")):
        if fn is None:
            continue
        field = np.asarray(fn(points))
        norm = np.linalg.norm(field, axis=-1, keepdims=True)
        direction = field / np.maximum(norm, 1e-12)
        ax.quiver(
            points[:, 0],
            points[:, 1],
            direction[:, 0],
            direction[:, 1],
            color=color,
            alpha=0.6,
            width=0.003,
            label=label,
        )
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
