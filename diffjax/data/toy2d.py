r"""Toy 2-D data sets: pure samplers ``sample(key, n) -> (n, 2)`` float32.

Every set is drawn in its usual "raw" coordinates, then centred on its exact mean and divided by
one number, sqrt((Var x_1 + Var x_2) / 2) of the raw law, so that E[x] = 0 and E|x|^2 = 2 (the
mean per-coordinate variance is 1) without distorting the shape. The exact moments used are
written beside each sampler, with the per-coordinate variances after scaling. Draws are made in
float32 whatever ``jax_enable_x64`` says, so a key gives the same bits in both modes. Each sampler
is jitted with ``n`` static (a shape). Sets follow the FFJORD / scikit-learn toy benchmarks
(Grathwohl et al. 2019, arXiv:1810.01367).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.data.dataset import Dataset, event_shape_of
from diffjax.data.gaussian_mixture import GaussianMixture
from diffjax.data.iterators import SamplerBatches

_F32 = jnp.float32
_jit = functools.partial(jax.jit, static_argnames="n")  # n is a shape


def _standardise(x, mean, var):
    """(x - mean) / sqrt(mean(var)) for the raw law's exact mean and per-coordinate variances."""
    return (x - jnp.asarray(mean, _F32)) / _F32(math.sqrt(sum(var) / 2))


# moons: two interleaved half circles (scikit-learn's make_moons), Gaussian noise of std 0.1.
# Raw mean (1/2, 1/4); raw variances (3/4 + 0.1^2, 9/16 - 1/pi + 0.1^2); after scaling about (1.499, 0.501).
_MOONS_NOISE = 0.1
_MOONS_MEAN = (0.5, 0.25)
_MOONS_VAR = (0.75 + _MOONS_NOISE**2, 0.5625 - 1 / math.pi + _MOONS_NOISE**2)


@_jit
def moons(key, n: int):
    """Two moons: (cos u, sin u) or (1 - cos u, 1/2 - sin u), u ~ U[0, pi], each with probability 1/2."""
    k_side, k_angle, k_noise = jax.random.split(key, 3)
    u = jax.random.uniform(k_angle, (n,), _F32, 0.0, math.pi)
    upper = jnp.stack([jnp.cos(u), jnp.sin(u)], axis=-1)
    x = jnp.where(jax.random.uniform(k_side, (n, 1), _F32) < 0.5, upper, jnp.array([1.0, 0.5], _F32) - upper)
    x = x + _MOONS_NOISE * jax.random.normal(k_noise, (n, 2), _F32)
    return _standardise(x, _MOONS_MEAN, _MOONS_VAR)


# swiss_roll: (t cos t, t sin t), t ~ U[3 pi / 2, 9 pi / 2] (scikit-learn's make_swiss_roll seen from
# above), Gaussian noise of std 0.5. Raw mean (2, 2 / (3 pi)); E[x_1^2] = 39 pi^2 / 8 - 1/4,
# E[x_2^2] = 39 pi^2 / 8 + 1/4; after scaling the variances are about (0.952, 1.048).
_SWISS_NOISE = 0.5
_SWISS_MEAN = (2.0, 2 / (3 * math.pi))
_SWISS_VAR = (
    39 * math.pi**2 / 8 - 0.25 - 4.0 + _SWISS_NOISE**2,
    39 * math.pi**2 / 8 + 0.25 - (2 / (3 * math.pi)) ** 2 + _SWISS_NOISE**2,
)


@_jit
def swiss_roll(key, n: int):
    """A spiral: (t cos t, t sin t) with t uniform over 1.5 turns, radius growing from 3 pi / 2 to 9 pi / 2."""
    k_t, k_noise = jax.random.split(key)
    t = jax.random.uniform(k_t, (n,), _F32, 1.5 * math.pi, 4.5 * math.pi)
    x = t[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    x = x + _SWISS_NOISE * jax.random.normal(k_noise, (n, 2), _F32)
    return _standardise(x, _SWISS_MEAN, _SWISS_VAR)


@_jit
def checkerboard(key, n: int):
    """Uniform on the 8 "black" cells of a 4 x 4 board on [-2, 2)^2 (cells where floor(x_1) + floor(x_2)
    is even). Each raw coordinate is U[-2, 2) (mean 0, variance 4/3), so after scaling the board is
    [-sqrt 3, sqrt 3)^2 with cells of side sqrt(3)/2 and unit variance per coordinate."""
    k_col, k_row, k_half = jax.random.split(key, 3)
    x1 = jax.random.uniform(k_col, (n,), _F32, -2.0, 2.0)
    lower = jax.random.randint(k_half, (n,), 0, 2, jnp.int32).astype(_F32)
    x2 = jax.random.uniform(k_row, (n,), _F32) - 2.0 * lower + jnp.mod(jnp.floor(x1), 2.0)
    return _standardise(jnp.stack([x1, x2], axis=-1), (0.0, 0.0), (4 / 3, 4 / 3))


# eight_gaussians: equal-weight N(c_k, 0.1^2 I), c_k = (cos, sin)(2 pi k / 8) on the unit circle.
# Raw mean 0, per-coordinate variance 1/2 + 0.1^2; after scaling radius 1.400 and std 0.140, variances (1, 1).
_EIGHT_SCALE = 1 / math.sqrt(0.5 + 0.1**2)
EIGHT_GAUSSIANS_RADIUS = _EIGHT_SCALE
EIGHT_GAUSSIANS_STD = 0.1 * _EIGHT_SCALE


@_jit
def eight_gaussians(key, n: int):
    """Eight equal Gaussians on a circle (radius ``EIGHT_GAUSSIANS_RADIUS``, std ``EIGHT_GAUSSIANS_STD``).

    The same law as ``eight_gaussians_mixture()``, whose density and diffused score are exact."""
    k_mode, k_noise = jax.random.split(key)
    angle = (2 * math.pi / 8) * jax.random.randint(k_mode, (n,), 0, 8, jnp.int32).astype(_F32)
    centres = EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return centres + EIGHT_GAUSSIANS_STD * jax.random.normal(k_noise, (n, 2), _F32)


def eight_gaussians_mixture() -> GaussianMixture:
    """The exact `GaussianMixture` that ``eight_gaussians`` samples from (mode k at angle 2 pi k / 8)."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return GaussianMixture(np.full(8, 1.0 / 8), means, np.full_like(means, EIGHT_GAUSSIANS_STD))


# rings: four concentric circles of radii 1/4, 2/4, 3/4, 1 (equally likely), isotropic noise of std 0.03.
# Raw mean 0, E|x|^2 = 15/32 + 2 * 0.03^2; after scaling the radii are about 0.365 k, k = 1..4.
_RINGS_NOISE = 0.03
_RINGS_VAR = (15 / 64 + _RINGS_NOISE**2,) * 2
RINGS_RADII = tuple(k / 4 / math.sqrt(_RINGS_VAR[0]) for k in range(1, 5))


@_jit
def rings(key, n: int):
    """Four concentric rings with radii ``RINGS_RADII``, a ring chosen uniformly, angle uniform."""
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    radius = (jax.random.randint(k_ring, (n,), 1, 5, jnp.int32).astype(_F32) / 4)[:, None]
    angle = jax.random.uniform(k_angle, (n,), _F32, 0.0, 2 * math.pi)
    x = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    x = x + _RINGS_NOISE * jax.random.normal(k_noise, (n, 2), _F32)
    return _standardise(x, (0.0, 0.0), _RINGS_VAR)


TOY_2D = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "rings": rings,
}


def dataset(set: str, *, conditional: bool = False, batch_size: int, seed: int = 0, mesh=None, field: str = "data"):
    """One of `TOY_2D` as a `Dataset` (the `"toy2d"` entry of `diffjax.data.REGISTRY`).

    Args:
      set: the name of the set in `TOY_2D` ("moons", "swiss_roll", ...).
      conditional: must be False: the toy sets have no labels.
      batch_size: samples per training batch.
      seed: the data seed; batch k is `sampler(fold_in(key(seed), k), batch_size)`.
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      An unconditional `Dataset` with fresh samples (`fresh`) and no evaluation set.
    """
    _checks.one_of(f"{field}.set", set, tuple(TOY_2D))
    if conditional:
        raise ValueError(f"{field}.conditional must be False for toy 2-D sets (they have no labels)")
    sampler = TOY_2D[set]
    batches = SamplerBatches(lambda key, n: (sampler(key, n), None), batch_size, seed, mesh)
    return Dataset(batches, event_shape_of(sampler), fresh=sampler)
