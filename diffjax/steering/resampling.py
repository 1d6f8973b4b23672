r"""Resampling a particle population from its log-weights, and when to do it.

A resampler maps (key, log_weights (K,)) to ancestor indices (K,) with E[count_i] = K w_i, where
w = softmax(log_weights). Everything works in log space: the weights are normalised with
logsumexp, so log-weights of +-1e4 are fine; NaN counts as -inf (a particle that can never be
chosen); a population whose log-weights are all -inf (or NaN) is resampled uniformly, and
`normalise` says so; a +inf log-weight takes all the weight (shared equally by every +inf particle).
Log-weights of a narrower float type (bfloat16, float16) are taken to float32 first: every weight,
normaliser and ESS here is computed in float32 or wider. Populations of B conditions are `jax.vmap`ed.

Schemes (Douc, Cappé & Moulines 2005, "Comparison of resampling schemes for particle filtering"):
multinomial (K i.i.d. draws), stratified (one uniform in each of K equal strata of [0, 1)),
systematic (one uniform shifted through all strata: the lowest variance in practice, and exact
for uniform weights) and residual (floor(K w_i) copies of each particle, the remaining
K - sum floor(K w_i) drawn multinomially from the residual weights).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks


def wide(log_weights) -> jax.Array:
    """`log_weights` as an array of float32 or wider: bfloat16, float16 (and integer) inputs are cast to
    float32, float32 and float64 ones returned as they are (the same array, so their bits are untouched).

    Args:
      log_weights: an array-like of log-weights.

    Returns:
      The array, of dtype `promote_types(dtype, float32)`.
    """
    log_weights = jnp.asarray(log_weights)
    dtype = jnp.promote_types(log_weights.dtype, jnp.float32)
    return log_weights if log_weights.dtype == dtype else log_weights.astype(dtype)


class Normalised(NamedTuple):
    """What `normalise` returns: normalised log-weights (K,), the input's logsumexp, and whether every
    input weight was zero (then the output is uniform)."""

    log_weights: jax.Array  # (K,) log of weights summing to 1
    log_total: jax.Array  # logsumexp of the input log-weights (-inf when none is finite, +inf with a +inf one)
    degenerate: jax.Array  # bool: every input log-weight was -inf or NaN (the output is uniform)


def normalise(log_weights) -> Normalised:
    """Log-weights shifted to sum to one in the linear domain; NaN and -inf particles get weight 0,
    and an all-(-inf) population gets uniform weights (flagged as `degenerate`). A population with
    +inf log-weights gives all its weight to those particles, in equal shares (not degenerate).

    The weights are taken to float32 or wider first (`wide`: bfloat16 and float16 inputs). The
    maximum is subtracted first (exactly, in that dtype) and the log-sum-exp is taken of the shifted
    values, so log-weights far from 0 (-2e6 in float32, where the spacing of floats is 0.25) keep
    their precision: the weights sum to 1 to float32's rounding or better.

    Args:
      log_weights: (..., K) log-weights, normalised over the last axis.

    Returns:
      `Normalised` (log-weights, their logsumexp, whether the population was degenerate).
    """
    log_weights = wide(log_weights)
    clean = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    top = jnp.max(clean, axis=-1, keepdims=True)
    finite = jnp.isfinite(top)
    degenerate = top == -jnp.inf  # every weight 0: uniform
    shifted = clean - jnp.where(finite, top, 0.0)
    log_shifted_total = jax.nn.logsumexp(shifted, axis=-1, keepdims=True)
    uniform = jnp.full_like(clean, -jnp.log(clean.shape[-1]))
    infinite = clean == jnp.inf  # top == +inf: these particles share all the weight
    share = -jnp.log(jnp.maximum(jnp.sum(infinite, axis=-1, keepdims=True), 1)).astype(clean.dtype)
    on_top = jnp.where(infinite, share, -jnp.inf)
    normalised = jnp.where(finite, shifted - log_shifted_total, jnp.where(degenerate, uniform, on_top))
    log_total = jnp.where(finite, top + log_shifted_total, top)
    return Normalised(normalised, log_total[..., 0], degenerate[..., 0])


def ess(log_weights) -> jax.Array:
    """Effective sample size 1 / sum_i w_i^2 of the normalised weights (`normalise`, in float32 or wider):
    K for equal weights, 1 for one, m for m particles of +inf log-weight.

    Args:
      log_weights: (..., K) log-weights.

    Returns:
      (...,) the ESS, between 1 and K.
    """
    normalised = normalise(log_weights).log_weights
    return jnp.exp(-jax.nn.logsumexp(2 * normalised, axis=-1))


def _cumulative(log_weights):
    """Cumulative normalised weights with the last entry exactly 1."""
    c = jnp.cumsum(jnp.exp(normalise(log_weights).log_weights))
    return c / c[-1]


def _invert(cumulative, u):
    """Index i with cumulative[i-1] <= u < cumulative[i]: zero-weight particles are never chosen."""
    return jnp.searchsorted(cumulative, u, side="right").astype(jnp.int32)


def multinomial(key, log_weights) -> jax.Array:
    """K independent draws from Categorical(w)."""
    k = jnp.shape(log_weights)[-1]
    return jax.random.categorical(key, normalise(log_weights).log_weights, shape=(k,)).astype(jnp.int32)


def stratified(key, log_weights) -> jax.Array:
    """u_j = (j + U_j) / K with independent U_j ~ U[0, 1), inverted through the cumulative weights."""
    k = jnp.shape(log_weights)[-1]
    u = (jnp.arange(k) + jax.random.uniform(key, (k,))) / k
    return _invert(_cumulative(log_weights), u)


def systematic(key, log_weights) -> jax.Array:
    """u_j = (j + U) / K with one U ~ U[0, 1), inverted through the cumulative weights."""
    k = jnp.shape(log_weights)[-1]
    u = (jnp.arange(k) + jax.random.uniform(key, ())) / k
    return _invert(_cumulative(log_weights), u)


def residual(key, log_weights) -> jax.Array:
    """floor(K w_i) copies of particle i, then the remaining R = K - sum floor(K w_i) draws
    multinomially from the residual weights K w_i - floor(K w_i) (in index order)."""
    k = jnp.shape(log_weights)[-1]
    scaled = k * jnp.exp(normalise(log_weights).log_weights)
    copies = jnp.floor(scaled).astype(jnp.int32)
    deterministic = jnp.repeat(jnp.arange(k, dtype=jnp.int32), copies, total_repeat_length=k)
    leftover = scaled - copies
    log_leftover = jnp.where(leftover > 0, jnp.log(jnp.where(leftover > 0, leftover, 1.0)), -jnp.inf)
    drawn = jax.random.categorical(key, log_leftover, shape=(k,)).astype(jnp.int32)
    return jnp.where(jnp.arange(k) < copies.sum(), deterministic, drawn)


RESAMPLERS = {"multinomial": multinomial, "stratified": stratified, "systematic": systematic, "residual": residual}


class Schedule(NamedTuple):
    """When to resample: at the sampling steps where `steps` (a static (num_steps,) bool mask) is
    True, and there only if ESS < threshold * K (threshold None: always).

    Build it with `resampling_schedule`.
    """

    steps: np.ndarray
    threshold: float | None


def resampling_schedule(
    num_steps: int,
    *,
    start: int = 0,
    end: int | None = None,
    interval: int = 1,
    threshold: float | None = None,
    final: bool = False,
) -> Schedule:
    """Resample after sampling steps start, start + interval, ... <= end (default: the second-to-last
    step; sampling step 0 is the noisiest), plus the last step when `final`; with `threshold`,
    only where the ESS has fallen below threshold * K (ESS-adaptive). FK steering's
    `arange(t_start, t_end + 1, freq)` is `start=t_start, end=t_end, interval=freq`.

    Raises:
      ValueError: for a `start`/`end` that select no step (start > end, no `final`); only the default
        of a one-step grid (no step before the last) may select none."""
    num_steps = _checks.positive_int("num_steps", num_steps)
    chosen = start != 0 or end is not None
    end = num_steps - 2 if end is None else end
    _checks.positive_int("interval", interval)
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start and end < num_steps):
        raise ValueError(f"start and end must be step indices with 0 <= start and end < num_steps={num_steps}, "
                         f"got start={start!r}, end={end!r}")  # fmt: skip
    if threshold is not None:
        _checks.in_range("threshold", threshold, 0.0, 1.0)
    steps = np.zeros(num_steps, bool)
    steps[start : end + 1 : interval] = True
    steps[-1] |= final
    if chosen and not steps.any():
        raise ValueError(f"resampling_schedule selects no step: start={start}, end={end}, interval={interval}, "
                         f"final={final} for num_steps={num_steps}; need start <= end or final=True "
                         "(for no resampling at all use importance_sample)")  # fmt: skip
    return Schedule(steps, None if threshold is None else float(threshold))


def fk_paper_schedule(num_steps: int) -> Schedule:
    """The sparse schedule of the FK steering paper's figures (Singhal et al. 2025: resampling at
    steps 20, 40, 60, 80 of 100): every fifth of the grid, `start = interval = round(num_steps / 5)`,
    never at the last step. The default for the "max", "sum" and "rt" potentials, whose weights
    degenerate when every step is scheduled (their potentials count early rewards again at every
    later step)."""
    num_steps = _checks.positive_int("num_steps", num_steps)
    if num_steps < 3:
        return resampling_schedule(num_steps)
    fifth = max(1, round(num_steps / 5))
    return resampling_schedule(num_steps, start=fifth, interval=fifth)


class Resampled(NamedTuple):
    """What `maybe_resample` returns: the ancestors (K,), the log-weights carried on, the log Z-hat
    increment and whether it resampled."""

    ancestors: jax.Array  # (K,) int32: particle j continues ancestors[j] (arange when not resampled)
    log_weights: jax.Array  # (K,) the weights carried on: 0 after resampling, else the input's
    log_z_increment: jax.Array  # log mean w before resampling (0 when not resampled)
    resampled: jax.Array  # bool


def maybe_resample(key, log_weights, scheduled, threshold, resampler=systematic) -> Resampled:
    """Resample one population if `scheduled` (a traced bool) and, with a threshold, if ESS < threshold K.

    Branch-free: the ancestors are computed either way and selected. When it does not resample,
    the log-weights are carried forward unchanged, so the population keeps targeting the same law
    (FK steering's official code drops them instead; see the tests). When it does, it returns the
    log normalising-constant increment log (1/K sum_i w_i), whose sum over steps (plus the final
    one) is the SMC estimate log Z-hat.
    """
    log_weights = wide(log_weights)
    k = jnp.shape(log_weights)[-1]
    do = jnp.asarray(scheduled)
    if threshold is not None:
        do = do & (ess(log_weights) < threshold * k)
    ancestors = jnp.where(do, resampler(key, log_weights), jnp.arange(k, dtype=jnp.int32))
    increment = normalise(log_weights).log_total - jnp.log(k)
    return Resampled(
        ancestors,
        jnp.where(do, jnp.zeros_like(log_weights), log_weights),
        jnp.where(do, increment, 0.0),
        do,
    )


class Step(NamedTuple):
    """One reweighting step of B populations of K particles stored flat as N = B K."""

    ancestors: jax.Array  # (N,) flat indices: particle j continues particle ancestors[j]
    log_weights: jax.Array  # (N,) the log-weights carried on
    log_z_increment: jax.Array  # (B,)
    resampled: jax.Array  # (B,) bool
    ess: jax.Array  # (B,) ESS of the weights before resampling
    degenerate: jax.Array  # (B,) bool: every weight was -inf and the population was resampled uniformly
    local_ancestors: jax.Array  # (B, K) int32 ancestors within each population


def resample_flat(key, log_weights, num_particles: int, scheduled, threshold, resampler=systematic) -> Step:
    """`maybe_resample` for each of the B = N / K populations in the flat (N,) `log_weights`, with
    one key per population; the SMC samplers' shared reweight-and-resample step."""
    k = num_particles
    log_weights = wide(log_weights)
    b = log_weights.shape[0] // k
    per_population = log_weights.reshape(b, k)
    out = jax.vmap(lambda key, lw: maybe_resample(key, lw, scheduled, threshold, resampler))(
        jax.random.split(key, b), per_population
    )
    return Step(
        ancestors=(out.ancestors + (jnp.arange(b) * k)[:, None]).reshape(b * k),
        log_weights=out.log_weights.reshape(b * k),
        log_z_increment=out.log_z_increment,
        resampled=out.resampled,
        ess=ess(per_population),
        degenerate=normalise(per_population).degenerate & out.resampled,
        local_ancestors=out.ancestors,
    )
