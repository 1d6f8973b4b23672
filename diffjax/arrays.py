"""Small array helpers that several layers share: noise, broadcasting, per-particle repetition,
and wrapping plain functions so that they can travel through `jit` as pytrees.

Everything here is imported by schedules, solvers, steering and guidance alike, so it imports
nothing of diffjax's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def noise_like(key, x):
    """N(0, I) noise shaped like x, drawn in float32 and cast: the same key gives the same noise
    in float32, float64 and bfloat16 runs."""
    return jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)


def broadcast_to_x(a, x):
    """Right-pad a scalar or per-sample (B,) coefficient with singleton axes to broadcast against x."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def per_particle(tree, num_particles: int):
    """Repeat every leaf of a per-condition pytree (leading axis B) `num_particles` times along that
    axis, condition-major: (B, ...) -> (B K, ...), rows b K ... b K + K - 1 belonging to condition b.
    None stays None."""
    if tree is None:
        return None
    return jax.tree.map(lambda leaf: jnp.repeat(jnp.asarray(leaf), num_particles, axis=0), tree)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """A plain function carried through `jit` as static configuration (hashed by identity).

    `as_pytree` wraps functions that are not pytrees in it, so an API can take either a value (a
    pytree whose array leaves are traced: new parameters never recompile) or any Python callable
    (which then compiles once per distinct function object)."""

    fn: Callable

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def as_pytree(fn):
    """`fn` itself if it is a registered pytree (a value such as a `Denoiser` or a reward dataclass),
    else `Static(fn)`."""
    if fn is None or isinstance(fn, Static):
        return fn
    leaves = jax.tree.leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # not a registered pytree: JAX would treat it as an array
        return Static(fn)
    return fn
