r"""Rewards for steering and search: plain JAX functions `reward(x, cond) -> (N,)` of samples
x (N, *event) and their condition (or None).

- analytic, with exactly tilted targets for the tests: `linear` (r = a.x) and `quadratic`
  (r = -1/2 (x - c)^T diag(q) (x - c));
- `class_log_prob`: log p(y | x) = log_softmax(scale * logits(x))[y] of a classifier, with y the
  condition (per sample labels) or a fixed target class;
- `colour_fraction`: an attribute of the procedural shapes images, the soft fraction of pixels
  painted in a palette colour.

Each builder returns a new function; build it once and reuse it, so `jit` compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.data import shapes


def _flat(x):
    return x.reshape(x.shape[0], -1)


def linear(direction) -> Callable:
    """r(x) = <a, x> (a of the event's shape, or flat)."""
    direction = np.asarray(direction, dtype=np.float64)
    if direction.size == 0 or not np.all(np.isfinite(direction)):
        raise ValueError(f"direction must be a non-empty finite array, got {direction!r}")

    def reward(x, cond=None):
        del cond
        return _flat(x) @ jnp.asarray(direction.reshape(-1), x.dtype)

    return reward


def quadratic(center, precision) -> Callable:
    """r(x) = -1/2 sum_d q_d (x_d - c_d)^2 (c and q of the event's shape, or scalars; q >= 0)."""
    center, precision = np.asarray(center, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if not np.all(np.isfinite(center)):
        raise ValueError(f"center must be finite, got {center!r}")
    if not (np.all(np.isfinite(precision)) and np.all(precision >= 0)):
        raise ValueError(f"precision must be finite and >= 0, got {precision!r}")

    def reward(x, cond=None):
        del cond
        c, q = jnp.asarray(center, x.dtype), jnp.asarray(precision, x.dtype)
        return -0.5 * jnp.sum(_flat(q * (x - c) ** 2), axis=-1)

    return reward


def class_log_prob(logits_fn: Callable, *, target: int | None = None, scale: float = 1.0) -> Callable:
    """r(x, y) = log_softmax(scale * logits_fn(x))[y]: y is the condition (int labels (N,)) or,
    with `target`, that class for every sample. `logits_fn(x) -> (N, classes)`."""
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable as logits_fn(x) -> (N, classes), got {logits_fn!r}")
    if target is not None:
        _checks.positive_int("target", target, minimum=0)
    scale = _checks.positive("scale", scale)

    def reward(x, cond=None):
        labels = cond if target is None else jnp.full(x.shape[:1], target)
        if labels is None:
            raise ValueError("class_log_prob needs labels: pass cond=labels or build it with target=")
        log_p = jax.nn.log_softmax(scale * logits_fn(x).astype(x.dtype), axis=-1)
        return jnp.take_along_axis(log_p, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]

    return reward


def colour_fraction(colour: str, *, width: float = 0.25) -> Callable:
    """r(x) = mean over pixels of exp(-|x_pixel - palette[colour]|^2 / (2 width^2)), for (N, H, W, 3)
    images in [-1, 1]: the soft fraction of the image painted in `colour` (1 for a flat image
    of that colour, about 0 for the background)."""
    _checks.one_of("colour", colour, shapes.PALETTE_NAMES)
    width = _checks.positive("width", width)
    rgb = np.asarray(shapes.PALETTE[shapes.PALETTE_NAMES.index(colour)])

    def reward(x, cond=None):
        del cond
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"colour_fraction needs (N, H, W, 3) images, got shape {x.shape}")
        dist2 = jnp.sum((x - jnp.asarray(rgb, x.dtype)) ** 2, axis=-1)
        return jnp.mean(jnp.exp(-dist2 / (2 * width**2)), axis=(1, 2))

    return reward
