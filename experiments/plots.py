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


def integer_log2_axis(ax, values):
    """A base-2 log x axis with integer ticks (1, 2, 4, not 1.0, 2.0, 4.0): at the `values` it shows, or
    at the powers of 2 spanning them where there are more than four."""
    ticks = sorted({int(v) for v in values})
    if len(ticks) > 4:
        ticks = [2**i for i in range(int(np.floor(np.log2(ticks[0]))), int(np.ceil(np.log2(ticks[-1]))) + 1)]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def save_scaling(path, rows, *, x, xlabel, baseline, exact=None, ylabels=None):
    """Reward and hit rate against `x` (a row key: "K", "nfe"), one line per method starting from the
    `baseline` method's row, with the exact target's values dashed when known; the hit rate's axis
    spans [0, 1]. `ylabels` names the two axes ({"reward": ..., "hit": ...})."""
    ylabels = {"reward": "mean reward (higher is better)", "hit": "hit rate (higher is better)", **(ylabels or {})}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    base = next(r for r in rows if r["method"] == baseline)
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != baseline):
        mine = [base] + [r for r in rows if r["method"] == method]
        for ax, key in zip(axes, ("reward", "hit")):
            ax.plot([r[x] for r in mine], [r[key] for r in mine], marker="o", label=method)
    for ax, key in zip(axes, ("reward", "hit")):
        if exact is not None:
            ax.axhline(exact[key], color="k", linestyle="--", label="exact target")
        integer_log2_axis(ax, [r[x] for r in rows])
        ax.set(xlabel=xlabel, ylabel=ylabels[key])
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_error_vs_nfe(path, panels):
    """Error against NFE on log-log axes, one panel per (rows, title, ylabel, floor): a line per
    `rows[i]["solver"]` through its (nfe, error) points, and the floor (an error no sampler can beat,
    e.g. between two sets of data) dashed when given."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (rows, title, ylabel, floor) in zip(axes[0], panels):
        for solver in dict.fromkeys(r["solver"] for r in rows):
            mine = [r for r in rows if r["solver"] == solver]
            ax.plot([r["nfe"] for r in mine], [r["error"] for r in mine], marker="o", label=solver)
        if floor is not None:
            ax.axhline(floor, color="k", linestyle="--", label="data vs data")
        integer_log2_axis(ax, [r["nfe"] for r in rows])
        ax.set_yscale("log")
        ax.set(xlabel="NFE (network evaluations per sample)", ylabel=f"{ylabel} (lower is better)", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
