r"""Feynman–Kac steering (Singhal, Horvitz, Teehan et al. 2025, "A General Framework for
Inference-time Scaling and Steering of Diffusion Models"): sequential Monte Carlo over K particles
per condition whose output targets

    p_target(x0 | c) = p(x0 | c) exp(lambda r(x0, c)) / Z(c).

Each sampling step moves every particle with the solver (the proposal). At the steps of the
resampling schedule (as in FK's code) the intermediate reward is evaluated, the weight is
multiplied by a potential G_i = exp(log_g) of the rewards so far, and the population is
resampled (`resampling.maybe_resample`: with an ESS threshold it may not be, and then the weights
are carried forward); other steps cost no reward evaluation. At the end the weight
gets the correction lambda r(x0) - sum_i log G_i along the particle's ancestry, so the potentials
only steer: for every choice the final weighted population targets p_target exactly when the
solver samples the model's reverse kernel exactly (the tests use the Gaussian-mixture oracle).

Potentials on the intermediate reward r_i (`POTENTIALS`; FK's names):

- "diff": log G_i = lambda (r_i - r_{i-1}), r_{-1} = 0; the product telescopes to lambda r_last.
- "max": lambda max(r_0..r_i);  "sum": lambda (r_0 + ... + r_i);  "rt": lambda r_i
  (indices over the scheduled steps). "sum" weighs early rewards once per later step, so its
  weights degenerate quickly when many steps are scheduled; prefer a sparse schedule.
- a callable (potential_state, r_i, lmbda) -> log G_i.

The intermediate reward is r evaluated on the data prediction x0-hat(x_{t_i}) that step i's
solver call used (`reward_on="x0"`, Tweedie's estimate; no extra network evaluation), or on the
new state x_{t_{i+1}} (`reward_on="xt"`), or the many-sample estimate (`reward_on="many"`, FK's
r_phi for discrete models) log (1/M) sum_j exp r(x0_j) with x0_j ~ N(x0-hat, v_t I) and
v_t = s^2 sigma_t^2 / (alpha_t^2 s^2 + sigma_t^2) the posterior variance of x0 given x_t for data
N(m, s^2 I) (s = `x0_std`): M reward calls per scheduled step, no extra network evaluation.
Non-finite rewards give log G = -inf: the particle is
never chosen again, and it never turns into NaN samples.

Resampling needs the whole solver state of a particle: every state leaf whose trailing shape is
x's (the sample, multistep histories) is gathered along the particle axis.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.solvers.base import Solver, noise_like
from diffjax.steering import resampling
from diffjax.steering.particles import Particles, check_run, collect


class PotentialState(NamedTuple):
    """Per-particle reward statistics carried along the ancestry, each (N,)."""

    previous: jax.Array  # r_{i-1} (0 before the first step, as FK's reward_min_value)
    maximum: jax.Array  # max of the rewards so far (0 before the first step)
    total: jax.Array  # sum of the rewards so far
    log_product: jax.Array  # sum of log G so far: what the final correction removes


def _diff(state, r, lmbda):
    return lmbda * (r - state.previous)


def _max(state, r, lmbda):
    return lmbda * jnp.maximum(state.maximum, r)


def _sum(state, r, lmbda):
    return lmbda * (state.total + r)


def _rt(state, r, lmbda):
    del state
    return lmbda * r


POTENTIALS = {"diff": _diff, "max": _max, "sum": _sum, "rt": _rt}
REWARD_ON = ("x0", "xt", "many")


def _gather_state(state, ancestors, x_shape):
    """Every leaf whose trailing shape is x's (N, *event) taken at `ancestors` (N,) along that axis."""

    def take(leaf):
        if jnp.ndim(leaf) >= len(x_shape) and jnp.shape(leaf)[jnp.ndim(leaf) - len(x_shape) :] == x_shape:
            return jnp.take(leaf, ancestors, axis=jnp.ndim(leaf) - len(x_shape))
        return leaf

    return jax.tree.map(take, state)


def _safe_reward(r):
    return jnp.where(jnp.isfinite(r), r, -jnp.inf)


@functools.cache
def chunked(reward: Callable, chunk_size: int) -> Callable:
    """`reward` evaluated on `chunk_size` particles at a time (`jax.lax.map` over chunks), to bound
    the memory of large reward models; N must be a multiple of chunk_size. Same values as `reward`.
    Cached, so the same (reward, chunk_size) gives the same function and `fk_steer` compiles once."""
    chunk_size = _checks.positive_int("chunk_size", chunk_size)

    def evaluate(x, cond):
        n = x.shape[0]
        if n % chunk_size:
            raise ValueError(f"the number of particles B*K={n} must be a multiple of chunk_size={chunk_size}")
        split = lambda a: a.reshape((n // chunk_size, chunk_size) + a.shape[1:])  # noqa: E731
        parts = jax.lax.map(lambda args: reward(*args), (split(x), jax.tree.map(split, cond)))
        return parts.reshape(n)

    return evaluate


def many_sample_reward(reward: Callable, key, x0, cond, std, num_samples: int):
    """log (1/M) sum_j exp r(x0 + std z_j, cond), z_j ~ N(0, I), one reward call per j
    (`jax.lax.map`); non-finite rewards count as -inf."""
    draw = lambda key: _safe_reward(reward(x0 + std * noise_like(key, x0), cond))  # noqa: E731
    rewards = jax.lax.map(draw, jax.random.split(key, num_samples))
    return jax.nn.logsumexp(rewards, axis=0) - jnp.log(num_samples)


@functools.partial(
    jax.jit,
    static_argnames=("solver", "reward", "num_particles", "potential", "reward_on", "num_x0_samples",
                     "resample_steps", "threshold", "resampler", "drop_weights"),
)  # fmt: skip
def _fk(solver, denoiser, reward, timesteps, key, x_T, cond, lmbda, x0_std, num_particles, potential, reward_on,
        num_x0_samples, resample_steps, threshold, resampler, drop_weights):  # fmt: skip
    n = x_T.shape[0]
    b, k = n // num_particles, num_particles
    x_shape = x_T.shape
    log_g_fn = POTENTIALS[potential] if isinstance(potential, str) else potential
    resample_fn = resampling.RESAMPLERS[resampler]
    mask = jnp.asarray(resample_steps)
    steps = timesteps.shape[0] - 1
    keys = jax.random.split(key, (steps, 3))
    zeros = jnp.zeros(n, x_T.dtype)
    carry = (solver.init(x_T, timesteps), jnp.zeros(n, x_T.dtype), PotentialState(zeros, zeros, zeros, zeros),
             jnp.zeros(b, x_T.dtype), jnp.zeros(b, jnp.int32))  # fmt: skip

    def potential_step(pot, x, key, t):
        """(log G (N,), new potential state) from the intermediate reward on x."""
        if reward_on == "many":
            alpha, sigma = denoiser.schedule.alpha(t), denoiser.schedule.sigma(t)
            std = x0_std * sigma / jnp.sqrt(alpha**2 * x0_std**2 + sigma**2)
            r = many_sample_reward(reward, key, x, cond, std, num_x0_samples).astype(x_T.dtype)
        else:
            r = _safe_reward(reward(x, cond).astype(x_T.dtype))
        log_g = log_g_fn(pot, r, lmbda)
        log_g = jnp.where(jnp.isfinite(r) & ~jnp.isnan(log_g), log_g, -jnp.inf)
        finite_r = jnp.where(jnp.isfinite(r), r, pot.previous)
        new = PotentialState(
            finite_r,
            jnp.maximum(pot.maximum, finite_r),
            pot.total + finite_r,
            pot.log_product + jnp.where(jnp.isfinite(log_g), log_g, 0.0),
        )
        return log_g, new

    def advance(carry, i, step_fn):
        state, log_w, pot, log_z, degenerate = carry
        state, info = step_fn(state, keys[i, 0], timesteps[i], timesteps[i + 1], denoiser)
        x_reward = state.x if reward_on == "xt" else info.x0
        skip = lambda pot, *_: (jnp.zeros(n, x_T.dtype), pot)  # noqa: E731
        log_g, pot = jax.lax.cond(mask[i], potential_step, skip, pot, x_reward, keys[i, 2], timesteps[i])
        log_w = log_w + log_g
        out = resampling.resample_flat(keys[i, 1], log_w, k, mask[i], threshold, resample_fn)
        state = _gather_state(state, out.ancestors, x_shape)
        pot = jax.tree.map(lambda a: a[out.ancestors], pot)
        new_log_w = jnp.zeros_like(log_w) if drop_weights else out.log_weights
        trace = (out.ess, out.resampled, out.local_ancestors, info.nfe)
        return (state, new_log_w, pot, log_z + out.log_z_increment, degenerate + out.degenerate), trace

    traces = []
    for i, step_fn in enumerate(solver.head):
        carry, trace = advance(carry, i, step_fn)
        traces.append(jax.tree.map(lambda a: a[None], trace))
    middle = jnp.arange(len(solver.head), steps - len(solver.tail))
    carry, trace = jax.lax.scan(lambda c, i: advance(c, i, solver.step), carry, middle)
    traces.append(trace)
    for j, step_fn in enumerate(solver.tail):
        carry, trace = advance(carry, steps - len(solver.tail) + j, step_fn)
        traces.append(jax.tree.map(lambda a: a[None], trace))
    ess, resampled, ancestors, nfe = jax.tree.map(lambda *parts: jnp.concatenate(parts), *traces)

    state, log_w, pot, log_z, degenerate = carry
    final_r = _safe_reward(reward(state.x, cond).astype(x_T.dtype))
    log_w = log_w + jnp.where(jnp.isfinite(final_r), lmbda * final_r - pot.log_product, -jnp.inf)
    return collect(state.x, log_w, final_r, log_z, degenerate, (ess, resampled, ancestors), k, jnp.sum(nfe))


def fk_steer(
    solver: Solver,
    denoiser,
    timesteps,
    key,
    x_T,
    reward: Callable,
    *,
    lmbda: float,
    potential: str | Callable = "diff",
    reward_on: str = "x0",
    num_x0_samples: int = 4,
    x0_std: float = 0.5,
    schedule: resampling.Schedule | None = None,
    resampler: str = "systematic",
    cond=None,
    reward_chunk: int | None = None,
    drop_weights: bool = False,
) -> Particles:
    """Steer `solver` towards p(x0 | c) exp(lmbda r(x0, c)) with K particles per condition.

    x_T: (B, K, *event) starting particles (K = x_T.shape[1]). `reward(x, cond) -> (N,)` takes
    x (N, *event) with N = B K and cond repeated per particle (or None). `schedule`: when to
    resample (`resampling.resampling_schedule`; default every step but the last). `resampler`:
    a name in `resampling.RESAMPLERS`. `reward_chunk`: evaluate the reward on this many particles
    at a time (`chunked`). `num_x0_samples`, `x0_std`: the many-sample reward (`reward_on="many"`).
    `drop_weights=True` reproduces the official FK code's
    bug (weights discarded when a scheduled step does not resample) and exists for the tests.

    Warns when a resampled population ends with identical particles: the solver is deterministic,
    so copies never diverge (FK needs a stochastic solver, e.g. DDIM with eta > 0).
    """
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a diffjax Solver, got {solver!r}")
    schedule = check_run(timesteps, key, x_T, schedule, resampler)
    if not callable(reward):
        raise ValueError(f"reward must be callable as reward(x, cond) -> (N,), got {reward!r}")
    if not (callable(potential) or potential in POTENTIALS):
        raise ValueError(f"potential must be one of {tuple(POTENTIALS)} or a callable, got {potential!r}")
    _checks.one_of("reward_on", reward_on, REWARD_ON)
    num_x0_samples = _checks.positive_int("num_x0_samples", num_x0_samples)
    x0_std = _checks.positive("x0_std", x0_std)
    lmbda = _checks.finite("lmbda", lmbda)
    if reward_chunk is not None:
        reward = chunked(reward, reward_chunk)
    b, k = jnp.shape(x_T)[:2]
    if reward_chunk is not None and (b * k) % reward_chunk:
        raise ValueError(f"reward_chunk must divide the number of particles B*K={b * k}, got {reward_chunk}")
    x_T = jnp.asarray(x_T)
    if cond is not None:
        cond = jax.tree.map(lambda c: jnp.repeat(jnp.asarray(c), k, axis=0), cond)
        denoiser = denoiser.replace(cond=cond)
    particles = _fk(
        solver, denoiser, reward, jnp.asarray(timesteps), key, x_T.reshape((b * k,) + x_T.shape[2:]), cond,
        jnp.asarray(lmbda, x_T.dtype), jnp.asarray(x0_std, x_T.dtype), k, potential, reward_on, num_x0_samples,
        tuple(bool(s) for s in schedule.steps),
        schedule.threshold, resampler, drop_weights,
    )  # fmt: skip
    if _checks.is_concrete(particles.x) and k > 1 and bool(jnp.any(particles.resampled)):
        flat = particles.x.reshape(b, k, -1)
        same = jnp.all(flat[:, :, None] == flat[:, None, :], axis=-1) & ~jnp.eye(k, dtype=bool)
        if bool(jnp.any(same)):
            warnings.warn(
                "FK steering ended with identical particles after resampling: the solver looks deterministic, "
                "so resampled copies never diverge; use a stochastic solver (e.g. ddim(eta=1.0)).",
                stacklevel=2,
            )
    return particles


def importance_sample(solver: Solver, denoiser, timesteps, key, x_T, reward: Callable, *, lmbda: float,
                      cond=None) -> Particles:  # fmt: skip
    """The baseline at equal NFE: K independent samples per condition, never resampled, weighted by
    exp(lmbda r(x0)) (self-normalised importance sampling of the same target). `best_of` of the
    result is best-of-N (random search over the starting noise and the solver's noise)."""
    steps = jnp.shape(timesteps)[0] - 1
    never = resampling.Schedule(np.zeros(steps, bool), None)
    return fk_steer(solver, denoiser, timesteps, key, x_T, reward, lmbda=lmbda, schedule=never, cond=cond)
