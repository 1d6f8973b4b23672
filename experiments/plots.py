"""Figures the experiments write: sample grids (or 2-D scatter plots), loss curves and steering
scaling curves, as PNG."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_samples(path, x, title, columns=None):
    """2-D points (N, 2) as a scatter plot, or images (N, H, W, C) in [-1, 1] as a grid filled row by
    row with `columns` per row (default ceil(sqrt(N)))."""
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(x[:, 0], x[:, 1], s=2)
        ax.set_aspect("equal")
    else:
        side = columns or int(np.ceil(np.sqrt(len(x))))
        h, w, c = x.shape[1:]
        rows = -(-len(x) // side)
        grid = np.ones((rows * (h + 1), side * (w + 1), c), np.float32)
        for i, image in enumerate(np.clip((x + 1) / 2, 0, 1)):
            r, q = divmod(i, side)
            grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = image
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None)
        ax.axis("off")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_loss_curve(path, rows):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="loss")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_scaling(path, rows, *, x, xlabel, baseline, exact=None):
    """Reward and hit rate against `x` (a row key: "K", "nfe"), one line per method starting from the
    `baseline` method's row, with the exact target's values dashed when known."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    base = next(r for r in rows if r["method"] == baseline)
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != baseline):
        mine = [base] + [r for r in rows if r["method"] == method]
        for ax, key in zip(axes, ("reward", "hit")):
            ax.plot([r[x] for r in mine], [r[key] for r in mine], marker="o", label=method)
    for ax, key in zip(axes, ("reward", "hit")):
        if exact is not None:
            ax.axhline(exact[key], color="k", linestyle="--", label="exact target")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=xlabel, ylabel=key)
    axes[0].legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
