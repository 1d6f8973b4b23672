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
  (indices over the scheduled steps). These three count early rewards again at every later
  scheduled step, so with every step scheduled their weights degenerate (ESS 7-23 of 256 on the
  tests' mixture, means off by 0.2-0.9, not shrinking with K); their default schedule is
  therefore the paper's sparse one (`resampling.fk_paper_schedule`: every fifth of the grid).
- a callable (potential_state, r_i, lmbda) -> log G_i.

The intermediate reward is r evaluated on the data prediction x0-hat(x_{t_i}) that step i's
solver call used (`reward_on="x0"`, Tweedie's estimate; no extra network evaluation), or on the
new state x_{t_{i+1}} (`reward_on="xt"`), or the many-sample estimate (`reward_on="many"`, FK's
r_phi for discrete models) log (1/M) sum_j exp r(x0_j) with x0_j ~ N(x0-hat, v_t I) and
v_t = s^2 sigma_t^2 / (alpha_t^2 s^2 + sigma_t^2) the posterior variance of x0 given x_t for data
N(m, s^2 I) (s = `x0_std`): M reward calls per scheduled step, no extra network evaluation.
Rewards are read through lmbda r: NaN rewards count as the lowest value (log G = -inf, weight 0:
the particle is never chosen again, and it never turns into NaN samples), as do rewards with
lmbda r = -inf; rewards with lmbda r = +inf take all the weight (shared equally by every such
particle of the population). A population whose every weight is 0 at a step (all rewards NaN, say)
falls back to uniform weights: `Particles.degenerate` counts those steps and `fk_steer` emits one
RuntimeWarning per call. Log-weights, their normalisation and the ESS are float32 or wider whatever
the particles' dtype (bfloat16 and float16 particles keep their dtype; their weights are float32).

Token sequences (masked diffusion, a solver with `token_states`, e.g. `diffjax.discrete.ancestral()`
with a `diffjax.discrete` denoiser) run through the same kernel: particles are (N, L) int32 states,
the step's x0 is log mu_theta (N, L, V), and the intermediate reward is r on its argmax
(`reward_on="x0"`), on the new state (`"xt"`, masks included), or FK's log-mean-exp over M draws of
an x0 sampler (`"many"`: per-position draws by default, `x0_sampler=` for others such as the
Markov chain's exact joint posterior; `diffjax.discrete.predicted`).

Resampling needs the whole solver state of a particle: the solver declares how to take it at
the ancestors (`Solver.gather`: the sample, multistep histories, time_shift's per-sample times).

The algorithm is a kernel (`FK`: `init`, `step`, `finish`) that a researcher can drive in a loop
of their own; `fk_steer` drives it with `sampling.run_steps` in one `jit`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import as_pytree, noise_like, per_particle
from diffjax.discrete.predicted import argmax_tokens, marginal_draws
from diffjax.discrete.process import check_denoiser as check_masked_denoiser
from diffjax.sampling import check_denoiser, check_steps, raise_if_nonfinite, run_steps
from diffjax.solvers.base import Solver, check_solver
from diffjax.steering import resampling
from diffjax.steering.particles import Particles, check_run, collect, warn_degenerate
from diffjax.steering.rewards import chunked


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


def _safe_reward(r):
    return jnp.where(jnp.isfinite(r), r, -jnp.inf)


def _clean_reward(r):
    """NaN as -inf (the lowest value); +-inf kept."""
    return jnp.where(jnp.isnan(r), -jnp.inf, r)


def _infinite_tilt(lmbda, r):
    """The log-weight of a non-finite reward: +inf where lmbda r = +inf (all the weight), else -inf."""
    return jnp.where(lmbda * r == jnp.inf, jnp.inf, -jnp.inf).astype(r.dtype)


def _log_mean_exp(rewards):
    rewards = resampling.wide(rewards)
    return jax.nn.logsumexp(rewards, axis=0) - jnp.log(rewards.shape[0])


def many_sample_reward(reward: Callable, key, x0, cond, std, num_samples: int):
    """log (1/M) sum_j exp r(x0 + std z_j, cond), z_j ~ N(0, I), one reward call per j
    (`jax.lax.map`), in float32 or wider; NaN rewards count as -inf, a +inf reward makes it +inf.

    Args:
      reward: `reward(x, cond) -> (N,)`.
      key: a typed key for the M draws.
      x0: (N, *event) the centres x0-hat.
      cond: the reward's condition (or None).
      std: the draws' standard deviation (a scalar).
      num_samples: M.

    Returns:
      (N,) the log-mean-exp of the M rewards.
    """
    draw = lambda key: _clean_reward(reward(x0 + std * noise_like(key, x0), cond))  # noqa: E731
    return _log_mean_exp(jax.lax.map(draw, jax.random.split(key, num_samples)))


def drawn_sample_reward(reward: Callable, x0_sampler: Callable, key, x_t, x0, cond, num_samples: int):
    """log (1/M) sum_j exp r(x0_j, cond) over the M draws `x0_sampler(key, x_t, x0, M)` (M, N, ...),
    one reward call per draw (`jax.lax.map`), in float32 or wider; NaN rewards count as -inf, a
    +inf reward makes it +inf.

    Args:
      reward: `reward(x, cond) -> (N,)`.
      x0_sampler: `x0_sampler(key, x_t, x0, M) -> (M, N, ...)`.
      key: a typed key for the draws.
      x_t: (N, ...) the step's start.
      x0: the step's data prediction.
      cond: the reward's condition (or None).
      num_samples: M.

    Returns:
      (N,) the log-mean-exp of the M rewards.
    """
    draws = x0_sampler(key, x_t, x0, num_samples)
    return _log_mean_exp(jax.lax.map(lambda x: _clean_reward(reward(x, cond)), draws))


class FKState(NamedTuple):
    """The state of FK steering over N = B K flat particles (`FK.init` / `FK.step`)."""

    solver: Any  # the solver's state of every particle
    log_weights: jax.Array  # (N,) carried log-weights
    potential: PotentialState  # per-particle reward statistics along the ancestry
    log_z: jax.Array  # (B,) running log Z-hat
    degenerate: jax.Array  # (B,) int32: steps at which every log-weight was -inf
    i: jax.Array  # int32: steps taken


class FKInfo(NamedTuple):
    """What one FK step did, per condition."""

    ess: jax.Array  # (B,) ESS of the weights before resampling
    resampled: jax.Array  # (B,) bool
    ancestors: jax.Array  # (B, K) int32 ancestors within each population
    nfe: jax.Array  # network evaluations of the solver step, per particle


@struct.dataclass
class FK:
    """Feynman–Kac steering as a kernel (blackjax style): `init`, `step`, `finish`; `fk_steer` drives it.

    A value: the solver, the reward (a pytree; plain functions are wrapped by `arrays.as_pytree`),
    `lmbda` and `x0_std` are data, the rest static configuration. Build it with `fk`. A loop of
    your own over the grid gives the same particles as `fk_steer`, bit for bit:

        kernel = dj.steering.fk(solver, reward, lmbda=2.0, num_particles=K, num_steps=n)
        state = kernel.init(x_T.reshape(B * K, *event), ts)
        for i in range(n):
            state, info = kernel.step(state, keys[i], ts, i, den, cond)
        particles = kernel.finish(state, cond)

    with `keys = jax.random.split(key, n)` and `cond` repeated per particle (`arrays.per_particle`).
    """

    solver: Solver
    reward: Any
    lmbda: jax.Array
    x0_std: jax.Array
    num_particles: int = struct.field(pytree_node=False)
    resample_steps: tuple = struct.field(pytree_node=False)
    threshold: float | None = struct.field(pytree_node=False, default=None)
    potential: Any = struct.field(pytree_node=False, default="diff")
    reward_on: str = struct.field(pytree_node=False, default="x0")
    num_x0_samples: int = struct.field(pytree_node=False, default=4)
    resampler: str = struct.field(pytree_node=False, default="systematic")
    drop_weights: bool = struct.field(pytree_node=False, default=False)
    x0_sampler: Any = None

    def init(self, x_T, timesteps) -> FKState:
        """The state at timesteps[0] for flat particles x_T (B K, *event), all weights equal; the
        weights' dtype is x_T's promoted to float32 or wider (float32 for bfloat16 particles)."""
        n = x_T.shape[0]
        b = n // self.num_particles
        floating = jnp.issubdtype(x_T.dtype, jnp.floating)
        dtype = jnp.promote_types(x_T.dtype, jnp.float32) if floating else jnp.result_type(float)
        zeros = jnp.zeros(n, dtype)
        return FKState(self.solver.init(x_T, timesteps), zeros, PotentialState(zeros, zeros, zeros, zeros),
                       jnp.zeros(b, dtype), jnp.zeros(b, jnp.int32), jnp.int32(0))  # fmt: skip

    def _intermediate_reward(self, x_t, x_new, x0, key, t, schedule, cond):
        """r_i of a scheduled step from its start x_t, its new state and its x0 (`reward_on`)."""
        tokens = self.solver.token_states
        if self.reward_on == "xt":
            return self.reward(x_new, cond)
        if self.reward_on == "x0":
            return self.reward(argmax_tokens(x0) if tokens else x0, cond)
        if self.x0_sampler is not None or tokens:
            x0_sampler = marginal_draws if self.x0_sampler is None else self.x0_sampler
            return drawn_sample_reward(self.reward, x0_sampler, key, x_t, x0, cond, self.num_x0_samples)
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        std = self.x0_std * sigma / jnp.sqrt(alpha**2 * self.x0_std**2 + sigma**2)
        return many_sample_reward(self.reward, key, x0, cond, std, self.num_x0_samples)

    def _potential(self, pot, r, dtype):
        """(log G (N,), new potential state) from the intermediate reward r; a non-finite r gives
        log G = +inf where lmbda r = +inf, else -inf (NaN included)."""
        _checks.output_shape("reward", r, pot.previous.shape[0])  # static shapes: raised while tracing
        r = r.astype(dtype)
        infinite = _infinite_tilt(self.lmbda, r)
        r = _safe_reward(r)
        log_g_fn = POTENTIALS[self.potential] if isinstance(self.potential, str) else self.potential
        log_g = log_g_fn(pot, r, self.lmbda)
        log_g = jnp.where(jnp.isfinite(r) & ~jnp.isnan(log_g), log_g, infinite)
        finite_r = jnp.where(jnp.isfinite(r), r, pot.previous)
        new = PotentialState(
            finite_r,
            jnp.maximum(pot.maximum, finite_r),
            pot.total + finite_r,
            pot.log_product + jnp.where(jnp.isfinite(log_g), log_g, 0.0),
        )
        return log_g, new

    def step(self, state: FKState, key, timesteps, i, denoiser, cond=None):
        """Sampling step i (a Python int, or traced for steps without head/tail functions): move every
        particle with the solver, and at scheduled steps multiply the weights by the potential and
        resample. `denoiser` carries the per-particle condition; `cond` is the reward's.

        Returns:
          (FKState, FKInfo).
        """
        key_solver, key_resample, key_reward = jax.random.split(key, 3)
        num_steps = timesteps.shape[0] - 1
        dtype = state.log_weights.dtype
        step_fn = self.solver.step_at(i, num_steps)
        solver_state, info = step_fn(state.solver, key_solver, timesteps[i], timesteps[i + 1], denoiser)
        inputs = (state.solver.x, solver_state.x, info.x0, key_reward)

        def potential(pot, inputs):
            r = self._intermediate_reward(*inputs, timesteps[i], denoiser.schedule, cond)
            return self._potential(pot, r, dtype)

        def skip(pot, inputs):
            del inputs
            return jnp.zeros_like(state.log_weights), pot

        if isinstance(i, int):  # an unrolled step: the schedule is known here
            scheduled = self.resample_steps[i]
            log_g, pot = (potential if scheduled else skip)(state.potential, inputs)
        else:  # rewards cost only at scheduled steps
            scheduled = jnp.asarray(self.resample_steps)[i]
            log_g, pot = jax.lax.cond(scheduled, potential, skip, state.potential, inputs)
        log_w = state.log_weights + log_g
        out = resampling.resample_flat(key_resample, log_w, self.num_particles, scheduled, self.threshold,
                                       resampling.RESAMPLERS[self.resampler])  # fmt: skip
        new = FKState(
            solver=self.solver.gather(solver_state, out.ancestors),
            log_weights=jnp.zeros_like(log_w) if self.drop_weights else out.log_weights,
            potential=jax.tree.map(lambda a: a[out.ancestors], pot),
            log_z=state.log_z + out.log_z_increment,
            degenerate=state.degenerate + out.degenerate,
            i=state.i + 1,
        )
        return new, FKInfo(out.ess, out.resampled, out.local_ancestors, info.nfe)

    def finish(self, state: FKState, cond=None, infos: FKInfo | None = None) -> Particles:
        """`Particles` after the last step: the final reward's correction lmbda r(x0) - sum log G
        along each ancestry, weights normalised per condition. `infos`: the stacked `FKInfo` of
        every step (their trace; without it the trace fields are empty). A final reward with
        lmbda r = +inf takes all the weight; NaN (reported as -inf) and lmbda r = -inf get weight 0."""
        x = state.solver.x
        dtype = state.log_weights.dtype
        _checks.output_shape("reward", jax.eval_shape(lambda x: self.reward(x, cond), x), x.shape[0])
        raw = self.reward(x, cond).astype(dtype)
        final_r = _clean_reward(raw)
        log_w = state.log_weights + jnp.where(jnp.isfinite(final_r),
                                              self.lmbda * final_r - state.potential.log_product,
                                              _infinite_tilt(self.lmbda, raw))  # fmt: skip
        b = state.log_z.shape[0]
        if infos is None:
            infos = FKInfo(jnp.zeros((0, b), dtype), jnp.zeros((0, b), bool),
                           jnp.zeros((0, b, self.num_particles), jnp.int32), jnp.zeros((0,), jnp.int32))  # fmt: skip
        trace = (infos.ess, infos.resampled, infos.ancestors)
        return collect(x, log_w, final_r, state.log_z, state.degenerate, trace, self.num_particles,
                       jnp.sum(infos.nfe))  # fmt: skip


def fk(
    solver: Solver,
    reward: Callable,
    *,
    lmbda: float,
    num_particles: int,
    num_steps: int,
    potential: str | Callable = "diff",
    reward_on: str = "x0",
    num_x0_samples: int = 4,
    x0_std: float = 0.5,
    schedule: resampling.Schedule | None = None,
    resampler: str = "systematic",
    drop_weights: bool = False,
    x0_sampler: Callable | None = None,
) -> FK:
    """The FK steering kernel (`FK`) for a grid of `num_steps` steps; the arguments are `fk_steer`'s.

    Returns:
      An `FK` value with `init`, `step` and `finish`.
    """
    check_solver("solver", solver)
    if not callable(reward):
        raise ValueError(f"reward must be callable as reward(x, cond) -> (N,), got {reward!r}")
    if not (callable(potential) or potential in POTENTIALS):
        raise ValueError(f"potential must be one of {tuple(POTENTIALS)} or a callable, got {potential!r}")
    _checks.one_of("reward_on", reward_on, REWARD_ON)
    _checks.one_of("resampler", resampler, tuple(resampling.RESAMPLERS))
    num_particles = _checks.positive_int("num_particles", num_particles)
    num_steps = _checks.positive_int("num_steps", num_steps)
    if x0_sampler is not None and not callable(x0_sampler):
        raise ValueError(
            f"x0_sampler must be callable as x0_sampler(key, x_t, x0, num) -> (num, N, ...), got {x0_sampler!r}"
        )
    schedule = default_schedule(potential, num_steps) if schedule is None else schedule
    if len(schedule.steps) != num_steps:
        raise ValueError(f"schedule must cover the grid's {num_steps} steps, got {len(schedule.steps)}")
    return FK(
        solver=solver,
        reward=as_pytree(reward),
        lmbda=jnp.asarray(_checks.finite("lmbda", lmbda)),
        x0_std=jnp.asarray(_checks.positive("x0_std", x0_std)),
        num_particles=num_particles,
        resample_steps=tuple(bool(s) for s in schedule.steps),
        threshold=schedule.threshold,
        potential=potential,
        reward_on=reward_on,
        num_x0_samples=_checks.positive_int("num_x0_samples", num_x0_samples),
        resampler=resampler,
        drop_weights=bool(drop_weights),
        x0_sampler=x0_sampler,
    )


def default_schedule(potential, num_steps: int) -> resampling.Schedule:
    """FK's resampling schedule for a potential: every step but the last for "diff" and callables;
    the paper's sparse schedule (`resampling.fk_paper_schedule`) for "max", "sum" and "rt"."""
    if isinstance(potential, str) and potential in ("max", "sum", "rt"):
        return resampling.fk_paper_schedule(num_steps)
    return resampling.resampling_schedule(num_steps)


@functools.partial(jax.jit, static_argnames=("debug_nans",))
def _fk_steer(kernel: FK, denoiser, timesteps, key, x_T, cond, debug_nans=False):
    """(Particles, whether any population was degenerate (a bool), per-step "x is finite" flags or None)."""
    num_steps = timesteps.shape[0] - 1
    keys = jax.random.split(key, num_steps)

    def body(state, i):
        state, info = kernel.step(state, keys[i], timesteps, i, denoiser, cond)
        return state, ((info, jnp.all(jnp.isfinite(state.solver.x))) if debug_nans else info)

    state, outs = run_steps(kernel.solver, body, kernel.init(x_T, timesteps), num_steps)
    infos, finite = outs if debug_nans else (outs, None)
    particles = kernel.finish(state, cond, infos)
    return particles, jnp.any(particles.degenerate > 0), finite


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
    x0_sampler: Callable | None = None,
    debug_nans: bool = False,
) -> Particles:
    """Feynman–Kac steering (Singhal et al. 2025) of `solver` towards p(x0 | c) exp(lmbda r(x0, c))
    with K particles per condition, as one compiled program (the `FK` kernel driven by
    `sampling.run_steps`).

    Args:
      solver: the proposal; use a stochastic one (resampled copies of a deterministic solver never
        diverge, and this warns). Any solver works, multistep histories and `time_shift` included:
        resampling takes every particle's whole state (`Solver.gather`).
      denoiser: the model.
      timesteps: the grid, noise to data.
      key: a typed key.
      x_T: (B, K, *event) starting particles (K = x_T.shape[1]).
      reward: `reward(x, cond) -> (N,)` on x (N, *event), N = B K, with cond repeated per particle
        (or None); a pytree value (its parameters are data: new weights never recompile) or any
        function. Non-finite rewards never give NaN samples: a NaN reward counts as the lowest
        value (weight 0), as does lmbda r = -inf, and lmbda r = +inf takes all the weight (shared
        equally by every such particle); a population whose every weight is 0 at a step (e.g. all
        rewards NaN) falls back to uniform weights, counted in `Particles.degenerate`, and the call
        emits one RuntimeWarning (raised on the host after the compiled call, not inside it).
      lmbda: the tilt's strength (data: a new value reuses the compiled program).
      potential: "diff" (default), "max", "sum", "rt" (module docstring) or a callable
        `(potential_state, r_i, lmbda) -> log G_i`.
      reward_on: "x0" (Tweedie's x0-hat of the step; for tokens, the argmax of mu_theta), "xt"
        (the new state) or "many" (FK's many-sample reward).
      num_x0_samples: M of the many-sample reward.
      x0_std: the data std s of the many-sample reward's posterior variance.
      schedule: when to resample (`resampling.resampling_schedule`); default `default_schedule`:
        every step but the last for "diff", the paper's sparse schedule for "max", "sum", "rt".
      resampler: a name in `resampling.RESAMPLERS`.
      cond: the condition per condition (B leading), repeated per particle for the network and
        the reward.
      reward_chunk: evaluate the reward on this many particles at a time (`rewards.chunked`).
      drop_weights: reproduce the official FK code's bug (weights discarded when a scheduled step
        does not resample); exists for the tests.
      x0_sampler: the draws of the many-sample reward, `x0_sampler(key, x_t, x0, M) -> (M, N, ...)`
        (a value); default Gaussian draws around x0-hat, or per-position draws for tokens
        (`diffjax.discrete.predicted`).
      debug_nans: find where NaNs start: the compiled program (a separate one; the default program
        is unchanged) also returns, per step, whether every particle is finite after it, and after
        the call a FloatingPointError names the first non-finite step and its times ("fk_steer: x
        became non-finite at step i (t = ... -> ...)"). Checked on the host: only outside `jit`/`vmap`.

    Weights, their normalisation and the ESS are float32 or wider for any particle dtype (bfloat16
    and float16 particles keep their dtype).

    Token sequences: x_T (B, K, L) int32 (the mask id V where free, a prompt elsewhere), a solver
    with `token_states` (`diffjax.discrete.ancestral()`) and a masked-diffusion denoiser; rewards
    take (N, L) tokens. Use a grid ending at t = 0 with alpha(0) = 1 (e.g.
    `discrete.uniform_grid(n, t_end=0.0)` under `log_linear`) so that no mask is left at the end.

    Returns:
      `Particles` (B conditions x K): read them with `weighted`, `resampled` or `best_of`.

    Raises:
      FloatingPointError: with `debug_nans`, if a particle became non-finite at some step.
    """
    check_solver("solver", solver)
    if solver.token_states:
        check_masked_denoiser("denoiser", denoiser)
    else:
        check_denoiser(denoiser)
    check_run(timesteps, key, x_T, schedule, resampler, denoiser=denoiser, cond=cond, tokens=solver.token_states)
    b, k = jnp.shape(x_T)[:2]
    if reward_chunk is not None:
        _checks.positive_int("reward_chunk", reward_chunk)
        if (b * k) % reward_chunk:
            raise ValueError(f"reward_chunk must divide the number of particles B*K={b * k}, got {reward_chunk}")
        reward = chunked(reward, reward_chunk)
    num_steps = jnp.shape(timesteps)[0] - 1
    check_steps(solver, timesteps)
    kernel = fk(solver, reward, lmbda=lmbda, num_particles=k, num_steps=num_steps, potential=potential,
                reward_on=reward_on, num_x0_samples=num_x0_samples, x0_std=x0_std, schedule=schedule,
                resampler=resampler, drop_weights=drop_weights, x0_sampler=x0_sampler)  # fmt: skip
    x_T = jnp.asarray(x_T)
    cond = per_particle(cond, k)
    if cond is not None:
        denoiser = denoiser.replace(cond=cond)
    timesteps = jnp.asarray(timesteps)
    particles, any_degenerate, finite = _fk_steer(kernel, denoiser, timesteps, key,
                                                  x_T.reshape((b * k,) + x_T.shape[2:]), cond,
                                                  debug_nans=bool(debug_nans))  # fmt: skip
    if debug_nans:
        raise_if_nonfinite("fk_steer", finite, timesteps)
    warn_degenerate("fk_steer", any_degenerate, particles)
    # a deterministic solver's resampled copies never diverge (token states: the sampler's own draws do)
    if not solver.token_states and not solver.stochastic and k > 1:
        warnings.warn(
            f"FK steering with a deterministic solver ({type(solver).__name__}): resampled copies of a particle "
            "never diverge; use a stochastic solver (e.g. ddim(eta=1.0)).",
            stacklevel=2,
        )
    return particles


def importance_sample(solver: Solver, denoiser, timesteps, key, x_T, reward: Callable, *, lmbda: float,
                      cond=None) -> Particles:  # fmt: skip
    """The baseline at equal NFE: K independent samples per condition, never resampled, weighted by
    exp(lmbda r(x0)) (self-normalised importance sampling of the same target). `best_of` of the
    result is best-of-N (random search over the starting noise and the solver's noise).

    Args:
      solver: the sampler, as for `fk_steer`.
      denoiser: as for `fk_steer`.
      timesteps: as for `fk_steer`.
      key: a typed key.
      x_T: (B, K, *event) start noise, as for `fk_steer`.
      reward: r(x0, cond) -> (N,), as for `fk_steer`.
      lmbda: the tilt: the target is p(x) exp(lmbda r(x)) / Z.
      cond: optional conditions, one per row of B, as for `fk_steer`.

    Returns:
      `Particles` whose weights are softmax(lmbda r(x0)) per condition.
    """
    check_solver("solver", solver)
    if solver.token_states:
        check_masked_denoiser("denoiser", denoiser)
    else:
        check_denoiser(denoiser)
    check_run(timesteps, key, x_T, None, "systematic", denoiser=denoiser, cond=cond, tokens=solver.token_states)
    _checks.finite("lmbda", lmbda)
    steps = jnp.shape(timesteps)[0] - 1
    never = resampling.Schedule(np.zeros(steps, bool), None)
    return fk_steer(solver, denoiser, timesteps, key, x_T, reward, lmbda=lmbda, schedule=never, cond=cond)
