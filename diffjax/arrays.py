"""Small array helpers that several layers share: noise, broadcasting, per-particle repetition,
and wrapping plain functions so that they can travel through `jit` as pytrees; `Value`, the base
class that gives rewards, twists, verifiers and measurement operators equality of values.

Everything here is imported by schedules, solvers, steering and guidance alike, so it imports
nothing of diffjax's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


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


def _same_leaf(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return False
    try:
        a, b = np.asarray(a), np.asarray(b)
    except (TypeError, ValueError):  # leaves without a host value (e.g. typed PRNG keys) compare by identity
        return False
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


class Value:
    """Base class of the values (rewards, verifiers, twists, measurement operators): equality of values.

    Subclasses are `flax.struct.dataclass(eq=False)` pytrees. Two values are equal when they have
    the same pytree structure (type and static options, `jax.tree.structure`) and equal leaves
    (same shape, dtype and entries; identical objects for tracers and leaves without a host value).
    The hash is that of the structure alone, so it is consistent with equality and defined for
    values holding arrays too; values without array leaves are then equal and hash-equal exactly
    when their options are.
    """

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        leaves, tree = jax.tree.flatten(self)
        other_leaves, other_tree = jax.tree.flatten(other)
        return tree == other_tree and all(_same_leaf(a, b) for a, b in zip(leaves, other_leaves))

    def __hash__(self):
        return hash(jax.tree.structure(self))
