r"""The Itô density estimator (Skreta, Atanackovic, Bose, Tong & Neklyudov 2025, "The Superposition of
Diffusion Models Using the Itô Density Estimator", Theorem 1) and stacks of denoisers on one schedule.

**The estimator, in diffjax's time convention.** The forward SDE is dx = f(t) x dt + g(t) dW with
f = `schedule.drift`, g^2 = `schedule.diffusion2`, and q_t its marginal (one model's p_t). In D
dimensions the Fokker-Planck equation dq/dt = -div(f x q) + 1/2 g^2 Lap q gives, with s = grad log q_t,

    d/dt log q_t(x) = -D f - f <x, s> + 1/2 g^2 (div s + ||s||^2).

Sampling runs t downwards. Along any path x_t with Itô differential dx and quadratic variation
d<x^i, x^j> = gamma^2 delta_ij |dt|, Itô's lemma for log q_t(x_t) over a step t -> t' = t - h is

    Delta log q = <Delta x, s> - h d/dt log q + 1/2 gamma^2 h div s
                = <x' - x, s(x, t)> + h [D f + f <x, s> - 1/2 g^2 ||s||^2] + 1/2 (gamma^2 - g^2) h div s,

evaluated at the step's start (x, t) (the left point: an Itô sum). On a path of the reverse SDE
(Euler-Maruyama, DDPM, DDIM(eta=1), Euler-ancestral, SDE-DPM-Solver++ with eta = 1: step noise variance
g^2 h to first order) gamma = g and the divergence cancels (`path="sde"`, free: no derivative of the
network). On a deterministic path (an ODE solver) gamma = 0 and the term -1/2 g^2 h div s remains
(`path="ode"`); it is estimated by Hutchinson's trace estimator with Rademacher probes drawn from the
step's key, z^T (ds/dx) z by one `jax.jvp` per probe per model: extra cost, counted as one NFE each.
(The shared brief wrote this term as "+ 1/2 g^2 h div s"; the derivation above, and the exact check
Delta log q = h div(f x - 1/2 g^2 s) along the PF-ODE step of q itself, give the minus sign.)

Checked against the official code (necludov/super-diffusion, notebook `get_stoch_dll`, reverse time
dt > 0, sigma_t = t, network output sigma s, beta-bar = sigma g^2 / 2): their
Delta log q = D f dt - dt beta-bar ||sigma s||^2 / sigma + <dx + dt f x, sigma s> / sigma is the
formula above term by term (dx = x' - x; the dt f <x, s> term is their <dt f x, s>).

**State.** `ito_density(solver)` wraps any solver; its state carries the running log-densities of the
M models of a `Stack`, shape (B, M), along the inner solver's own path. The start is 0 for every model
(`init` does not see the models; at the prior time all models share nearly the same Gaussian, and only
differences of log-densities enter SuperDiff); `sample_with_density(..., log_q0=...)` starts from given
values (for example the exact log q_T(x_T), to compare with exact densities).

**Stacks.** `stack(d1, ..., dM, weights=...)` holds M denoisers on one schedule. Called as a denoiser it
returns the weighted combination of every view, sum_m kappa_m view_m (sum kappa = 1; `average` is the
same value, the "score averaging" baseline). Every view (x0, eps, v, score, velocity) is affine in the
score at fixed (x, t) with coefficients set by the schedule alone, so combining each view with the same
weights gives one consistent model (alpha x0 + sigma eps = x). `Stack.predictions(x, t)` returns each
model's views with a leading model axis (M, B, ...): one vmapped call when all models share one pytree
structure and leaf shapes (the same network with other weights, exact oracles of one shape), else a loop.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, broadcast_to_x
from diffjax.denoiser import Prediction
from diffjax.likelihood import divergence
from diffjax.sampling import check_grid, check_steps, run_steps
from diffjax.schedules import Schedule, same_schedule
from diffjax.solvers.base import Solver, StepInfo, Wrapper, check_solver, solver_value, take
from diffjax.solvers.time_shift import Reuse

PATHS = ("sde", "ode")


# --- the increment -----------------------------------------------------------------------------


def _dot(a, b, event_ndim: int):
    """<a, b> over the trailing `event_ndim` axes."""
    prod = a * b
    return jnp.sum(prod, axis=tuple(range(prod.ndim - event_ndim, prod.ndim)))


def increment(x, x_next, score, *, drift, diffusion2, h, divergence=None):
    """The Itô estimate of log q_{t'}(x') - log q_t(x) over one step t -> t' = t - h (module docstring).

    Delta log q = <x' - x, s> + h [D f + f <x, s> - 1/2 g^2 ||s||^2] (- 1/2 g^2 h div s on a deterministic
    path), with s = grad log q_t(x) and f, g^2 the forward SDE's coefficients at t.

    Args:
      x: the sample at t, (B, *event).
      x_next: the sample at t' after the step, (B, *event).
      score: s(x, t), (B, *event), or (M, B, *event) for M models at once.
      drift: f(t), a scalar or (B,).
      diffusion2: g(t)^2, a scalar or (B,).
      h: t - t' > 0, a scalar or (B,).
      divergence: None on a path whose diffusion is g (the reverse SDE), else div s(x, t) with the
        shape of the result (the path is deterministic).

    Returns:
      The increments, (B,) or (M, B).
    """
    event_ndim = x.ndim - 1
    size = int(np.prod(x.shape[1:]))
    out = _dot(x_next - x, score, event_ndim) + h * (
        size * drift + drift * _dot(x, score, event_ndim) - 0.5 * diffusion2 * _dot(score, score, event_ndim)
    )
    if divergence is not None:
        out = out - 0.5 * diffusion2 * h * divergence
    return out


# --- stacks of denoisers -----------------------------------------------------------------------


def _vmappable(denoisers) -> bool:
    """Whether the models share one pytree structure with leaves of equal shapes and dtypes."""
    first_leaves, first_tree = jax.tree.flatten(denoisers[0])
    spec = lambda leaves: [(jnp.shape(a), jnp.result_type(a)) for a in leaves]
    for den in denoisers[1:]:
        leaves, tree = jax.tree.flatten(den)
        if tree != first_tree or spec(leaves) != spec(first_leaves):
            return False
    return True


def mix(preds: Prediction, weights, dtype=None) -> Prediction:
    """sum_m weights_m view_m for every view of stacked predictions (M, B, ...).

    Args:
      preds: a `Prediction` whose views have a leading model axis, (M, B, *event).
      weights: (M,) or per sample (B, M); they should sum to 1 over models so that the views stay
        consistent.
      dtype: the output dtype (default: that of preds.x0).

    Returns:
      A `Prediction` of shape (B, *event).
    """
    w = jnp.asarray(weights)
    w = w[:, None] if w.ndim == 1 else w.T  # (M, 1) or (M, B)
    dtype = dtype or preds.x0.dtype
    return Prediction(*(jnp.sum(broadcast_to_x(w, v) * v, axis=0).astype(dtype) for v in preds))


@struct.dataclass(eq=False)
class Stack(Value):
    """M denoisers on one schedule; build it with `stack` (or `average`).

    Attributes:
      denoisers: the M models, a tuple of denoisers (pytrees) called as `den(x, t[, cond])`.
      weights: the combination weights used when the stack is called as a denoiser, (M,) or (B, M)
        (leaf: new weights never recompile).
      cond: the condition passed to every model, set by `sample(cond=...)` (pytree).
    """

    denoisers: tuple
    weights: jax.Array
    cond: Any = None

    @property
    def schedule(self) -> Schedule:
        """The models' shared schedule (checked equal when the stack is built)."""
        return self.denoisers[0].schedule

    @property
    def num_models(self) -> int:
        """M, the number of stacked denoisers."""
        return len(self.denoisers)

    def _call_one(self, den, x, t, cond):
        return den(x, t) if cond is None else den(x, t, cond)

    def predictions(self, x, t, cond=None) -> Prediction:
        """Every model's views at (x, t), each with a leading model axis (M, B, *event)."""
        cond = self.cond if cond is None else cond
        t = jnp.asarray(t)
        if _vmappable(self.denoisers):
            stacked = jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(a) for a in leaves]), *self.denoisers)
            return jax.vmap(lambda den: self._call_one(den, x, t, cond))(stacked)
        preds = [self._call_one(d, x, t, cond) for d in self.denoisers]
        return Prediction(*(jnp.stack(views) for views in zip(*preds)))

    def __call__(self, x, t, cond=None) -> Prediction:
        return mix(self.predictions(x, t, cond), self.weights, x.dtype)

    def with_weights(self, weights) -> Stack:
        """The same models combined with other weights, (M,) or (B, M)."""
        return self.replace(weights=weights)


def stack(*denoisers, weights=None) -> Stack:
    """A stack of M >= 2 denoisers on one schedule: the models of SuperDiff and of `ito_density`.

    Called as a denoiser, it is the weighted combination sum_m w_m view_m of every view (module docstring).

    Args:
      *denoisers: M >= 2 denoisers (callable as `den(x, t)`, with a `.schedule`), all on equal schedules.
      weights: M finite weights summing to 1 (default: 1/M each).

    Returns:
      A `Stack` value.

    Raises:
      ValueError: with fewer than 2 models, a model that is not a denoiser, models whose schedules differ
        (naming the first one that differs from model 0's), or weights that are not M finite numbers
        summing to 1.
    """
    if len(denoisers) < 2:
        raise ValueError(f"denoisers must be at least 2 models, got {len(denoisers)}")
    for i, den in enumerate(denoisers):
        if not callable(den) or not isinstance(getattr(den, "schedule", None), Schedule):
            raise ValueError(f"denoisers[{i}] must be callable as den(x, t) with a .schedule, got {den!r}")
    for i, den in enumerate(denoisers[1:], start=1):
        if not same_schedule(den.schedule, denoisers[0].schedule):
            raise ValueError(
                f"denoisers[{i}].schedule must equal denoisers[0].schedule (one schedule for all models), got "
                f"{den.schedule!r} and {denoisers[0].schedule!r}"
            )
    m = len(denoisers)
    if weights is None:
        weights = np.full((m,), 1.0 / m)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (m,) or not np.all(np.isfinite(w)) or abs(w.sum() - 1.0) > 1e-6:
            raise ValueError(f"weights must be {m} finite numbers summing to 1, got {weights!r}")
        weights = w
    return Stack(tuple(denoisers), jnp.asarray(weights))


def average(*denoisers, weights=None) -> Stack:
    """Score averaging, the naive composition baseline: the denoiser whose every view is sum_m w_m view_m
    (equal weights by default), which is not the score of either the mixture or the product of the models'
    densities (SuperDiff's OR and AND are). It is `stack(*denoisers, weights=weights)`.

    Args:
      *denoisers: M >= 2 denoisers on equal schedules.
      weights: M finite weights summing to 1 (default: 1/M each).

    Returns:
      A `Stack` value, usable as a denoiser by every solver.

    Raises:
      ValueError: as `stack`.
    """
    return stack(*denoisers, weights=weights)


def check_stack(denoise, num_models: int) -> Stack:
    """The denoiser a density-tracking solver is given, checked (at trace time): a `Stack` of num_models."""
    if not isinstance(denoise, Stack):
        raise ValueError(
            f"the denoiser of a density-tracking solver (ito_density, superdiff) must be a compose.stack(...) of "
            f"the models, got {type(denoise).__name__}"
        )
    if denoise.num_models != num_models:
        raise ValueError(
            f"num_models must equal the stack's number of models {denoise.num_models}, got num_models={num_models}"
        )
    return denoise


# --- the density-tracking state and step ---------------------------------------------------------


class DensityState(NamedTuple):
    """The state of a density-tracking solver: the inner solver's state, the running log-densities of the
    M models (B, M), and the weights kappa of the last step (B, M); `x` is the inner state's sample."""

    inner: Any
    log_q: jax.Array
    kappa: jax.Array

    @property
    def x(self):
        """The current sample, the inner solver state's `x`."""
        return self.inner.x


def _sde_mismatch(solver) -> str | None:
    """Why the SDE-path estimator does not fit this stochastic solver (its noise is not the reverse SDE's)."""
    from diffjax.solvers.ancestral import EulerAncestral
    from diffjax.solvers.ddim import DDIM
    from diffjax.solvers.dpm_solver import DPMSolverPP2MSDE
    from diffjax.solvers.sde import PredictorCorrector

    if isinstance(solver, DDIM) and solver.eta != 1.0:
        return f"ddim(eta={solver.eta}) injects less noise than the reverse SDE (eta=1 does)"
    if isinstance(solver, EulerAncestral) and (solver.eta != 1.0 or solver.s_noise != 1.0):
        return "euler_ancestral needs eta=1 and s_noise=1 to inject the reverse SDE's noise"
    if isinstance(solver, DPMSolverPP2MSDE) and solver.eta != 1.0:
        return f"dpmpp_2m_sde(eta={solver.eta}) injects other noise than the reverse SDE (eta=1 does)"
    if isinstance(solver, PredictorCorrector):
        return "predictor_corrector adds Langevin noise besides the reverse SDE's"
    return None


def check_path(path, solver) -> str:
    """The estimator's path ("sde" or "ode") for `solver`: None picks it from `solver.stochastic`; a
    ValueError for a path that does not fit the solver."""
    if path is None:
        path = "sde" if solver.stochastic else "ode"
    _checks.one_of("path", path, PATHS)
    if path == "sde" and not solver.stochastic:
        raise ValueError(f"path='sde' needs a stochastic solver (the reverse SDE's noise), got {solver!r}; use 'ode'")
    if path == "ode" and solver.stochastic:
        raise ValueError(f"path='ode' needs a deterministic solver, got the stochastic {solver!r}; use 'sde'")
    if path == "sde" and (why := _sde_mismatch(solver)) is not None:
        raise ValueError(f"path='sde' needs a solver whose step noise is the reverse SDE's, got {solver!r}: {why}")
    return path


def evaluate(stack_: Stack, x, t, key, path: str, num_probes: int):
    """Every model's predictions at (x, t), (M, B, ...), and on the ODE path the Hutchinson estimates of
    div s_m(x, t), (M, B) (None on the SDE path). NFE: M, plus M num_probes JVPs on the ODE path."""
    if path == "sde":
        return stack_.predictions(x, t), None
    preds, linear = jax.linearize(lambda y: stack_.predictions(y, t), x)
    probes = divergence.probes(jax.random.fold_in(key, 1), num_probes, x)
    scores = jax.vmap(lambda z: linear(z).score)(probes)  # (P, M, B, *event)
    div = jnp.mean(_dot(scores, probes[:, None], x.ndim - 1), axis=0)
    return preds, div


def step_increments(schedule, x, x_next, preds, div, t, t_next):
    """The (B, M) Itô increments of every model's log-density over the step (x, t) -> (x_next, t_next)."""
    t = jnp.asarray(t)
    coeff = lambda a: jnp.broadcast_to(a, x.shape[:1])
    dl = increment(
        x,
        x_next,
        preds.score,
        drift=coeff(schedule.drift(t)),
        diffusion2=coeff(schedule.diffusion2(t)),
        h=coeff(t - t_next),
        divergence=div,
    )
    return dl.T


def tracked_step(step_fn, state, key, t, t_next, stack_: Stack, preds, div, kappa):
    """One inner step with the stack combined by kappa (B, M), its first evaluation at (x, t) being the
    precomputed `preds` mixed by kappa; returns the new DensityState and the step's StepInfo (NFE: M for
    every evaluation the inner step makes, plus the divergence probes)."""
    x = state.x
    combined = stack_.with_weights(kappa)
    reuse = Reuse(combined, x, t, mix(preds, kappa, x.dtype))
    inner, info = step_fn(state.inner, key, t, t_next, reuse)
    dl = step_increments(stack_.schedule, x, inner.x, preds, div, t, t_next)
    m = stack_.num_models
    nfe = (m * info.nfe + (0 if reuse.reused else m)).astype(jnp.int32)
    new = DensityState(inner, state.log_q + dl.astype(state.log_q.dtype), kappa.astype(state.kappa.dtype))
    return new, StepInfo(nfe, info.x0)


class Tracking(Wrapper):
    """Shared machinery of the density-tracking wrappers (`ItoDensity`, `superdiff.SuperDiff`): the state
    (`DensityState`), its init, gather and with_x. Subclasses have fields `inner`, `num_models`, `path`,
    `num_probes` and implement `weights(state, stack, preds, div, step_fn, key, t, t_next) -> kappa`."""

    def init(self, x, timesteps):
        inner = self.inner.init(x, timesteps)
        dtype = jnp.result_type(x.dtype, jnp.float32)
        zeros = jnp.zeros((x.shape[0], self.num_models), dtype)
        return DensityState(inner, zeros, zeros + 1.0 / self.num_models)

    def gather(self, state, ancestors):
        return DensityState(
            self.inner.gather(state.inner, ancestors), take(state.log_q, ancestors), take(state.kappa, ancestors)
        )

    def with_x(self, state, x):
        return state._replace(inner=self.inner.with_x(state.inner, x))

    def wrap(self, step_fn, index):
        del index

        def step(state, key, t, t_next, denoise):
            stack_ = check_stack(denoise, self.num_models)
            preds, div = evaluate(stack_, state.x, t, key, self.path, self.num_probes)
            kappa = self.weights(state, stack_, preds, div, step_fn, key, t, t_next)
            new, info = tracked_step(step_fn, state, key, t, t_next, stack_, preds, div, kappa)
            extra = 0 if div is None else self.num_models * self.num_probes
            return new, info._replace(nfe=info.nfe + extra)

        return step


@solver_value
class ItoDensity(Tracking):
    """`inner` carrying the Itô estimates of the stack's log-densities; build it with `ito_density`."""

    inner: Solver
    num_models: int = 2
    path: str = "sde"
    num_probes: int = 1

    def weights(self, state, stack_, preds, div, step_fn, key, t, t_next):
        """The stack's own weights kappa (fixed, broadcast to (B, M)): the density is tracked, not used."""
        del preds, div, step_fn, key, t, t_next
        w = jnp.asarray(stack_.weights, state.kappa.dtype)
        return jnp.broadcast_to(w, state.kappa.shape)


def check_tracking(solver, num_models, path, num_probes):
    """Shared argument checks of `ito_density` and `superdiff`: (num_models, path, num_probes)."""
    check_solver("solver", solver)
    num_models = _checks.positive_int("num_models", num_models, 2)
    path = check_path(path, solver)
    num_probes = _checks.positive_int("num_probes", num_probes)
    return num_models, path, num_probes


def ito_density(solver: Solver, *, num_models: int = 2, path: str | None = None, num_probes: int = 1) -> ItoDensity:
    """`solver` carrying the running log-density of each of M models along its own path, by the Itô density
    estimator of SuperDiff (Skreta et al. 2025, Theorem 1; module docstring), for any inner solver.

    Sample with a `stack(d1, ..., dM)` as the denoiser: the path is the stack called as a denoiser (its
    weights; one-hot weights follow one model), and the state's `log_q` (B, M) holds the estimates of
    log q_m,t(x_t) - log q_m,T(x_T) (the start is 0; `sample_with_density` reads them out and can start
    from given values).

    Args:
      solver: the inner solver, any `Solver`.
      num_models: M, the stack's number of models (>= 2; checked against the stack when traced).
      path: "sde" (the inner step's noise is the reverse SDE's: no divergence needed), "ode" (a
        deterministic solver: adds -1/2 g^2 h div s by Hutchinson's estimator with Rademacher probes from
        the step's key, M num_probes JVPs a step), or None to pick from `solver.stochastic`.
      num_probes: Hutchinson probes per step on the ODE path (>= 1).

    Returns:
      An `ItoDensity` solver value (NFE: M per evaluation of the inner solver, plus M num_probes on the
      ODE path).

    Raises:
      ValueError: if `solver` is not a Solver, num_models < 2, num_probes < 1, or `path` is unknown or does
        not fit the solver ("sde" with a deterministic solver or one whose noise is not the reverse SDE's,
        "ode" with a stochastic one).
    """
    num_models, path, num_probes = check_tracking(solver, num_models, path, num_probes)
    return ItoDensity(solver, num_models, path, num_probes)


# --- a driver that reads the densities out --------------------------------------------------------


class DensityInfo(NamedTuple):
    """What `sample_with_density` returns besides the sample."""

    log_q: jax.Array  # (B, M): the final running log-densities
    nfe: jax.Array  # total network evaluations
    trajectory: jax.Array | None = None  # (n + 1, B, *event): x_T, then the sample after each step
    log_q_trajectory: jax.Array | None = None  # (n + 1, B, M)
    kappa_trajectory: jax.Array | None = None  # (n, B, M): the weights each step used


@functools.partial(jax.jit, static_argnames=("return_trajectory",))
def _sample_with_density(solver, stack_, timesteps, key, x_T, log_q0, return_trajectory):
    n = timesteps.shape[0] - 1
    keys = jax.random.split(key, n)
    state = solver.init(x_T, timesteps)
    state = state._replace(log_q=jnp.broadcast_to(log_q0, state.log_q.shape).astype(state.log_q.dtype))

    def body(state, i):
        state, info = solver.step_at(i, n)(state, keys[i], timesteps[i], timesteps[i + 1], stack_)
        saved = (state.x, state.log_q, state.kappa) if return_trajectory else None
        return state, (info.nfe, saved)

    start = state
    state, (nfe, saved) = run_steps(solver, body, state, n)
    info = DensityInfo(state.log_q, jnp.sum(nfe))
    if return_trajectory:
        xs, lqs, kappas = saved
        info = info._replace(
            trajectory=jnp.concatenate([x_T[None], xs]),
            log_q_trajectory=jnp.concatenate([start.log_q[None], lqs]),
            kappa_trajectory=kappas,
        )
    return state.x, info


def sample_with_density(
    solver: Tracking, stack_: Stack, timesteps, key, x_T, *, log_q0=None, cond=None, return_trajectory=False
):
    """Sample like `diffjax.sample` with a density-tracking solver (`ito_density`, `superdiff`) and read out
    the running log-densities (and, if asked, their trajectory and the weights of every step).

    Args:
      solver: an `ito_density(...)` or `superdiff(...)` solver.
      stack_: the `stack(...)` of the solver's models.
      timesteps: 1-D grid from noise to data.
      key: a typed key, split once per step as `sample` does (the same bits as `sample`).
      x_T: the start (B, *event).
      log_q0: the starting log-densities, (B, M), (B, 1) or a scalar; None starts at 0.
      cond: the models' condition, or None.
      return_trajectory: also return the samples, log-densities and weights after every step.

    Returns:
      (x, DensityInfo).

    Raises:
      ValueError: for a solver that does not track densities, a stack of another number of models, a bad
        grid, key or x_T, or a log_q0 of another shape.
    """
    if not isinstance(solver, Tracking):
        raise ValueError(f"solver must be ito_density(...) or superdiff(...), got {solver!r}")
    check_stack(stack_, solver.num_models)
    check_grid(timesteps)
    check_steps(solver, timesteps)
    _checks.typed_key("key", key)
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1:
        raise ValueError(f"x_T must have a batch axis, shape (B, *event), got shape {x_T.shape}")
    log_q0 = jnp.zeros(()) if log_q0 is None else jnp.asarray(log_q0)
    try:
        jnp.broadcast_shapes(log_q0.shape, (x_T.shape[0], solver.num_models))
    except ValueError:
        raise ValueError(
            f"log_q0 must broadcast to (B, M) = {(x_T.shape[0], solver.num_models)}, got shape {log_q0.shape}"
        ) from None
    if cond is not None:
        stack_ = stack_.replace(cond=cond)
    return _sample_with_density(solver, stack_, jnp.asarray(timesteps), key, x_T, log_q0, return_trajectory)
