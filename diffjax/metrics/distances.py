r"""Two-sample distances between samples x (m, ...) and y (n, ...), flattened to vectors.

All are jitted ``jax.numpy`` functions (shapes and the options ``bandwidth`` and ``num_projections``
are static; arguments are checked when tracing), use O(m n) memory for the pairwise matrices, and
compute in the inputs' precision: pass float64 arrays (``jax_enable_x64``) for small distances.

- `mmd2`: unbiased squared maximum mean discrepancy with an RBF kernel (Gretton et al. 2012,
  "A kernel two-sample test", JMLR 13).
- `sliced_w2_squared`: squared sliced 2-Wasserstein distance over random directions
  (Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters of measures").
- `energy_distance`: Székely & Rizzo's energy distance (2013, "Energy statistics", JSPI 143).
"""

import functools

import jax
import jax.numpy as jnp

from diffjax import _checks


def _as_samples(x, y):
    """Both as (N, D) arrays of a common floating dtype, after checking their shapes agree."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must be (N, ...) samples of one event shape, got shapes {x.shape} and {y.shape}")
    dtype = jnp.result_type(x, y, jnp.float32)
    return x.reshape(len(x), -1).astype(dtype), y.reshape(len(y), -1).astype(dtype)


def _squared_distances(a, b):
    """|a_i - b_j|^2 as (len(a), len(b)), by |a|^2 + |b|^2 - 2 a.b, clipped at 0 against rounding."""
    sq = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T
    return jnp.maximum(sq, 0.0)


def unbiased_mmd2(kxx, kyy, kxy):
    r"""The unbiased estimate of MMD^2 from kernel matrices k(x_i, x_j), k(y_i, y_j), k(x_i, y_j):

    sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1)) - 2 mean k(x_i, y_j).

    Its mean over draws is exactly MMD^2, so it is negative about half the time when the laws agree.
    Works on numpy and JAX arrays alike.
    """
    m, n = kxx.shape[0], kyy.shape[0]
    within_x = (kxx.sum() - kxx.trace()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.trace()) / (n * (n - 1))
    return within_x + within_y - 2 * kxy.mean()


@jax.jit
def median_bandwidth(x, y):
    """The median heuristic: the median distance |z_i - z_j|, i < j, over the pooled samples z = (x, y)."""
    z = jnp.concatenate(_as_samples(x, y))
    upper = jnp.triu_indices(len(z), k=1)
    return jnp.median(jnp.sqrt(_squared_distances(z, z)[upper]))


@functools.partial(jax.jit, static_argnames="bandwidth")
def mmd2(x, y, *, bandwidth=None):
    r"""Unbiased MMD^2 with the Gaussian (RBF) kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    h is ``bandwidth`` (> 0) or, when None, the median heuristic `median_bandwidth` (Gretton et al.
    2012). MMD^2 is zero iff the laws agree; the estimate is `unbiased_mmd2`. Needs m, n >= 2.
    """
    x, y = _as_samples(x, y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"x and y need at least 2 samples each, got {len(x)} and {len(y)}")
    h = median_bandwidth(x, y) if bandwidth is None else _checks.positive("bandwidth", bandwidth)
    kernel = lambda a, b: jnp.exp(-_squared_distances(a, b) / (2 * h**2))
    return unbiased_mmd2(kernel(x, x), kernel(y, y), kernel(x, y))


@functools.partial(jax.jit, static_argnames="num_projections")
def sliced_w2_squared(key, x, y, *, num_projections: int = 128):
    r"""Squared sliced 2-Wasserstein distance, SW_2^2 = E_theta W_2^2(theta.x, theta.y), theta uniform
    on the unit sphere, estimated with ``num_projections`` directions drawn from ``key``.

    In one dimension W_2 is exact from sorted samples: W_2^2 = mean_i (x_(i) - y_(i))^2 for equal
    sizes, which are required. In 1-D every direction is +-1, so the result is the empirical W_2^2;
    for a shift by mu in d dimensions SW_2^2 = |mu|^2 / d.
    """
    _checks.typed_key("key", key)
    _checks.positive_int("num_projections", num_projections)
    x, y = _as_samples(x, y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
    theta = jax.random.normal(key, (num_projections, x.shape[1]), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    projected = lambda a: jnp.sort(a @ theta.T, axis=0)
    return jnp.mean((projected(x) - projected(y)) ** 2)


@jax.jit
def energy_distance(x, y):
    r"""Energy distance E^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the empirical laws of x and y.

    E^2 >= 0, with equality iff the laws agree (Székely & Rizzo 2013); this is the V-statistic
    (all pairs, i = j included), so it is 0 for identical samples (up to rounding) and its mean
    exceeds E^2 by E|X - X'| / m + E|Y - Y'| / n.
    ``scipy.stats.energy_distance`` returns its square root (in 1-D).
    """
    x, y = _as_samples(x, y)
    mean_distance = lambda a, b: jnp.mean(jnp.sqrt(_squared_distances(a, b)))
    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)
