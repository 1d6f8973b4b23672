"""Argument checks run at the API boundary, before anything is traced.

Each raises a ``ValueError`` that names the argument, the value it got and what is allowed.
"""

import math
from collections.abc import Collection

import jax
import numpy as np


def is_concrete(*values) -> bool:
    """True when no value is a tracer, so it can be inspected on the host."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values))


def finite(name: str, value) -> float:
    """`value` as a float; a ValueError naming `name` unless it is a finite number."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    """`value` as a float; a ValueError naming `name` unless it is finite and > 0."""
    value = finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def in_range(name: str, value, low: float, high: float) -> float:
    """`value` as a float; a ValueError naming `name` unless low <= value <= high."""
    value = finite(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return value


def less(name_low: str, low: float, name_high: str, high: float) -> None:
    """A ValueError naming both fields unless low < high."""
    if not low < high:
        raise ValueError(f"{name_low} must be < {name_high}, got {name_low}={low!r}, {name_high}={high!r}")


def positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int; a ValueError naming `name` unless it is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def one_of(name: str, value, allowed: Collection) -> None:
    """A ValueError naming `name` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def typed_key(name: str, key) -> None:
    """A ValueError naming `name` unless `key` is a typed key from jax.random.key."""
    if not (hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise ValueError(f"{name} must be a typed PRNG key from jax.random.key(seed), got {key!r}")


def grid(timesteps) -> None:
    """Validate a time grid on the host: 1-D, >= 2 entries, strictly decreasing when concrete."""
    if np.ndim(timesteps) != 1 or np.shape(timesteps)[0] < 2:
        raise ValueError(f"timesteps must be a 1-D array of >= 2 times, got shape {np.shape(timesteps)}")
    if is_concrete(timesteps):
        values = np.asarray(timesteps)
        if not np.all(np.diff(values) < 0):
            raise ValueError(f"timesteps must decrease strictly from noise to data, got {values}")
