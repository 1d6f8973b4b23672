r"""Bits per dimension of continuous densities on quantised data.

Data with `num_bins` levels on [lo, hi] (level k at lo + k (hi - lo)/(num_bins - 1)) is dequantised
uniformly: x~ = lo + (k + U) Delta, U ~ U[0, 1)^D, Delta = (hi - lo)/num_bins, so x~ has a density on
[lo, hi]^D. For any density p, the discrete model P(k) = int over the bin of p >= exp(E_U log p(x~)) Delta^D
(Jensen), so

    bits/dim = -log2 p(x~) / D - log2 Delta = -log p(x~) / (D ln 2) + offset,   offset = log2(num_bins / (hi - lo)),

an upper bound of the discrete model's bits/dim in expectation over U. The offset is 7 for data in
[-1, 1] and 8 for [0, 1] at 256 bins: score_sde's `likelihood.py` adds the same 7 / 8 (its
`offset = 7. - inverse_scaler(-1.)`), though it applies no dequantisation to its test images
(score_sde issue #24: that is how it reports negative bits/dim; dequantise first).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks


def _range(data_range):
    if not (isinstance(data_range, (tuple, list)) and len(data_range) == 2):
        raise ValueError(f"data_range must be a pair (low, high), got {data_range!r}")
    low, high = (_checks.finite("data_range", v) for v in data_range)
    _checks.less("data_range low", low, "data_range high", high)
    return low, high


def bits_offset(num_bins: int = 256, data_range=(-1.0, 1.0)) -> float:
    """-log2 of the dequantisation bin width: log2(num_bins / (high - low)).

    Args:
      num_bins: the number of quantisation levels, >= 2.
      data_range: (low, high) of the data.

    Returns:
      The offset in bits (7.0 for 256 bins on [-1, 1]).

    Raises:
      ValueError: a bad num_bins or data_range.
    """
    num_bins = _checks.positive_int("num_bins", num_bins, 2)
    low, high = _range(data_range)
    return math.log2(num_bins / (high - low))


def dequantize(key, x, num_bins: int = 256, data_range=(-1.0, 1.0)):
    """Uniform dequantisation of data on the `num_bins`-level grid of data_range (module docstring).

    Args:
      key: a typed key.
      x: data whose entries lie on the grid lo + k (hi - lo)/(num_bins - 1) (rounded to it).
      num_bins: the number of levels, >= 2 (256 for 8-bit images, 17 for scikit-learn's digits).
      data_range: (low, high).

    Returns:
      x~ = lo + (k + U) (hi - lo)/num_bins, an array like x in [lo, hi).

    Raises:
      ValueError: a bad key, num_bins or data_range.
    """
    _checks.typed_key("key", key)
    num_bins = _checks.positive_int("num_bins", num_bins, 2)
    low, high = _range(data_range)
    x = jnp.asarray(x, jnp.result_type(x, float))
    k = jnp.clip(jnp.round((x - low) / (high - low) * (num_bins - 1)), 0, num_bins - 1)
    u = jax.random.uniform(key, x.shape, jnp.float32).astype(x.dtype)
    return low + (k + u) * ((high - low) / num_bins)


def bits_per_dim(log_p, event_shape_or_dim, *, num_bins: int | None = 256, data_range=(-1.0, 1.0)):
    """Bits per dimension of log-densities (nats), with the dequantisation offset.

    Args:
      log_p: log-densities in nats, any shape (e.g. (B,)); a negative NLL bound (-VLB) works too.
      event_shape_or_dim: D, or the event shape whose product is D.
      num_bins: the quantisation levels for the offset `bits_offset`; None adds no offset (log_p
        is already a discrete log-probability, e.g. the VLB with a discretised decoder).
      data_range: (low, high) of the data.

    Returns:
      -log_p / (D ln 2) + offset, the shape of log_p.

    Raises:
      ValueError: a bad dimension, num_bins or data_range.
    """
    if isinstance(event_shape_or_dim, (int, np.integer)):
        dim = _checks.positive_int("event_shape_or_dim", event_shape_or_dim)
    else:
        shape = tuple(event_shape_or_dim)
        if not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
            raise ValueError(f"event_shape_or_dim must be a dimension or a shape of positive ints, got {shape!r}")
        dim = math.prod(shape)
    offset = 0.0 if num_bins is None else bits_offset(num_bins, data_range)
    return -jnp.asarray(log_p) / (dim * math.log(2.0)) + offset
