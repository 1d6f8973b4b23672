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
new state x_{t_{i+1}} (`reward_on="xt"`). Non-finite rewards give log G = -inf: the particle is
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
from diffjax.sampling import check_grid
from diffjax.solvers.base import Solver
from diffjax.steering import resampling


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
REWARD_ON = ("x0", "xt")


class Particles(NamedTuple):
    """FK steering's output for B conditions x K particles; see `weighted`, `resampled`, `best_of`."""

    x: jax.Array  # (B, K, *event) final particles
    log_weights: jax.Array  # (B, K) normalised log-weights (logsumexp over K is 0)
    rewards: jax.Array  # (B, K) r(x0, c) of the final particles
    log_z: jax.Array  # (B,) log Z-hat, the SMC estimate of log E_p[exp(lambda r(x0))]
    ess: jax.Array  # (steps, B) effective sample size after each step's reweighting
    resampled: jax.Array  # (steps, B) bool
    ancestors: jax.Array  # (steps, B, K) int32: particle j after step i descends from ancestors[i, :, j]
    degenerate: jax.Array  # (B,) int32: steps at which every log-weight was -inf (uniform fallback)
    nfe: jax.Array  # network evaluations per particle


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


@functools.partial(
    jax.jit,
    static_argnames=("solver", "reward", "num_particles", "potential", "reward_on", "resample_steps",
                     "threshold", "resampler", "drop_weights"),
)  # fmt: skip
def _fk(solver, denoiser, reward, timesteps, key, x_T, cond, lmbda, num_particles, potential, reward_on,
        resample_steps, threshold, resampler, drop_weights):  # fmt: skip
    n = x_T.shape[0]
    b, k = n // num_particles, num_particles
    x_shape = x_T.shape
    split = lambda a: a.reshape((b, k) + a.shape[1:])  # noqa: E731
    flat = lambda a: a.reshape((n,) + a.shape[2:])  # noqa: E731
    log_g_fn = POTENTIALS[potential] if isinstance(potential, str) else potential
    resample_fn = resampling.RESAMPLERS[resampler]
    mask = jnp.asarray(resample_steps)
    steps = timesteps.shape[0] - 1
    keys = jax.random.split(key, (steps, 2))
    zeros = jnp.zeros(n, x_T.dtype)
    carry = (solver.init(x_T, timesteps), jnp.zeros(n, x_T.dtype), PotentialState(zeros, zeros, zeros, zeros),
             jnp.zeros(b, x_T.dtype), jnp.zeros(b, jnp.int32))  # fmt: skip

    def potential_step(pot, x):
        """(log G (N,), new potential state) from the intermediate reward on x."""
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
        x_reward = info.x0 if reward_on == "x0" else state.x
        skip = lambda pot, x: (jnp.zeros(n, x_T.dtype), pot)  # noqa: E731
        log_g, pot = jax.lax.cond(mask[i], potential_step, skip, pot, x_reward)
        log_w = log_w + log_g
        out = jax.vmap(lambda key, lw: resampling.maybe_resample(key, lw, mask[i], threshold, resample_fn))(
            jax.random.split(keys[i, 1], b), split(log_w)
        )
        ancestors = (out.ancestors + (jnp.arange(b) * k)[:, None]).reshape(n)
        state = _gather_state(state, ancestors, x_shape)
        pot = jax.tree.map(lambda a: a[ancestors], pot)
        new_log_w = jnp.zeros_like(log_w) if drop_weights else flat(out.log_weights)
        degenerate = degenerate + (resampling.normalise(split(log_w)).degenerate & out.resampled)
        trace = (resampling.ess(split(log_w)), out.resampled, out.ancestors, info.nfe)
        return (state, new_log_w, pot, log_z + out.log_z_increment, degenerate), trace

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
    normalised = jax.vmap(resampling.normalise)(split(log_w))
    log_z = log_z + normalised.log_total - jnp.log(k)
    return Particles(
        x=split(state.x),
        log_weights=normalised.log_weights,
        rewards=split(final_r),
        log_z=log_z,
        ess=ess,
        resampled=resampled,
        ancestors=ancestors,
        degenerate=degenerate + normalised.degenerate,
        nfe=jnp.sum(nfe),
    )


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
    at a time (`chunked`). `drop_weights=True` reproduces the official FK code's
    bug (weights discarded when a scheduled step does not resample) and exists for the tests.

    Warns when a resampled population ends with identical particles: the solver is deterministic,
    so copies never diverge (FK needs a stochastic solver, e.g. DDIM with eta > 0).
    """
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a diffjax Solver, got {solver!r}")
    check_grid(timesteps)
    _checks.typed_key("key", key)
    if jnp.ndim(x_T) < 3:
        raise ValueError(f"x_T must have shape (B, K, *event), got shape {jnp.shape(x_T)}")
    if not callable(reward):
        raise ValueError(f"reward must be callable as reward(x, cond) -> (N,), got {reward!r}")
    if not (callable(potential) or potential in POTENTIALS):
        raise ValueError(f"potential must be one of {tuple(POTENTIALS)} or a callable, got {potential!r}")
    _checks.one_of("reward_on", reward_on, REWARD_ON)
    _checks.one_of("resampler", resampler, tuple(resampling.RESAMPLERS))
    lmbda = _checks.finite("lmbda", lmbda)
    if reward_chunk is not None:
        reward = chunked(reward, reward_chunk)
    steps = jnp.shape(timesteps)[0] - 1
    schedule = resampling.resampling_schedule(steps) if schedule is None else schedule
    if len(schedule.steps) != steps:
        raise ValueError(f"schedule must cover the grid's {steps} steps, got {len(schedule.steps)}")
    b, k = jnp.shape(x_T)[:2]
    if reward_chunk is not None and (b * k) % reward_chunk:
        raise ValueError(f"reward_chunk must divide the number of particles B*K={b * k}, got {reward_chunk}")
    x_T = jnp.asarray(x_T)
    if cond is not None:
        cond = jax.tree.map(lambda c: jnp.repeat(jnp.asarray(c), k, axis=0), cond)
        denoiser = denoiser.replace(cond=cond)
    particles = _fk(
        solver, denoiser, reward, jnp.asarray(timesteps), key, x_T.reshape((b * k,) + x_T.shape[2:]), cond,
        jnp.asarray(lmbda, x_T.dtype), k, potential, reward_on, tuple(bool(s) for s in schedule.steps),
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


def weighted(particles: Particles):
    """All particles with their normalised weights: (x (B, K, *event), weights (B, K))."""
    return particles.x, jnp.exp(particles.log_weights)


def resampled(key, particles: Particles) -> jax.Array:
    """One particle per condition drawn by weight, (B, *event): a sample of p_target."""
    b = particles.x.shape[0]
    pick = jax.vmap(lambda key, lw: jax.random.categorical(key, lw))(jax.random.split(key, b), particles.log_weights)
    return particles.x[jnp.arange(b), pick]


def best_of(particles: Particles) -> jax.Array:
    """The particle with the highest final reward per condition, (B, *event): a search result,
    not a sample of p_target (it ignores the weights)."""
    return particles.x[jnp.arange(particles.x.shape[0]), jnp.argmax(particles.rewards, axis=1)]
