"""The solver interface, in the style of optax's `GradientTransformation` and blackjax's kernels.

    state = solver.init(x_T, timesteps)
    state, info = solver.step(state, key, t, t_next, denoise)

A solver is a *value*: an immutable dataclass of its static options, registered as a pytree, so
`ddim(eta=0.5) == ddim(eta=0.5)`, equal solvers hash equal and share one compiled sampler, and a
solver is passed to `jit` as an ordinary argument. Options are static (they may change the
program); a solver that carries arrays (the Gaussian-mixture oracle's exact kernel) holds them
as pytree leaves, which `jit` traces.

`denoise(x, t) -> Prediction` is a `Denoiser` (or anything with that call and a `.schedule`).
`step` is pure: every stochastic step draws its noise from `key` only, as `noise_like(key, x)`.
States are fixed-shape pytrees with the current sample in `state.x`, so a whole sampler is one
`lax.scan`. Steps that cost a different number of network evaluations cannot share one
`lax.scan` without branching, so a solver may name them statically: `head` steps replace `step`
on the first intervals of the grid (F-PNDM's Runge-Kutta warm-up), `tail` steps on the last ones
(EDM's Heun ends with an Euler step, DPM-Solver-fast with orders 2, 1). The middle is one scan
(`sampling.run_steps`, the one step driver; `step_at` picks the function for a step index).

Every solver declares its convergence `order` (the global order of the deterministic error on a
smooth problem, or the weak order of a stochastic solver) and whether it is `stochastic`; the
order tests measure the declared order. Particle methods resample a population of solver states,
so a solver declares how to take its state at ancestor indices (`gather`).

`GaussianSolver`s are those whose step is one Gaussian transition x' ~ N(mean, std^2) given the
state and the prediction at (x, t) (DDIM with eta > 0, DDPM, Euler-ancestral, SDE-DPM-Solver++,
Euler-Maruyama): TDS and SMCDiff use them as proposal kernels, evaluating `transition` at a
twisted prediction and reading the density.

**Starting at alpha = 0.** A grid may start where alpha(t) = 0 and x_t is pure noise (rectified flow
at t = 1), where x/alpha, sigma/alpha and lambda = log(alpha/sigma), the coordinates most solvers
step in, are infinite. There every solver takes DDIM's step from the prediction at (x, t),
x' = alpha' x0 + sigma' eps (`ddim_step`, `gaussian.posterior`, finite there because
SNR(t) = 0), selected branch-free with `jnp.where` on the traced `at_pure_noise(schedule, t)`, so a
step from alpha > 0 computes the solver's own arithmetic (bit for bit under the test suite's XLA:CPU
-O0; with LLVM's optimizations on, the select's fusion can move the last bit or two). It is the
limit alpha -> 0 of every solver's first-order step (Euler in sigma/alpha, DPM-Solver(++)-1, UniP-1,
DEIS-1, PNDM's transfer; x0-hat at alpha = 0 is the data mean, as x_t carries no information about
x0), while their higher-order corrections have no limit (their step in sigma/alpha or lambda is
infinitely long). Stochastic solvers take their own step's limit, which is one of DDIM's family: Euler-ancestral's
DDIM(min(eta, 1)) with its noise scaled by s_noise, Euler-Maruyama's and SDE-DPM-Solver++'s the
ancestral (DDPM posterior) step, Heun's the deterministic step (churn at an infinite noise level
is undefined). Multistep solvers then restart (`restart_at_pure_noise`): the output of that step
never enters their finite differences, and the next step is a first step of the remaining grid, so
a run from alpha = 0 equals the DDIM step followed by the solver on the rest of the grid (exactly,
for solvers without head steps). The prediction at alpha = 0 must give x0: `sample` refuses
eps-, score- and EDM-predicting denoisers there (`check_start_prediction`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks, gaussian
from diffjax.arrays import noise_like  # noqa: F401  (solvers draw noise through this module)
from diffjax.gaussian import Gaussian


class StepInfo(NamedTuple):
    """What one solver step reports: its network evaluations and the data prediction it used."""

    nfe: jax.Array  # network evaluations spent in this step (int32)
    x0: jax.Array  # the data prediction the step used


class State(NamedTuple):
    """State of a one-step solver: only the current sample."""

    x: jax.Array


def solver_value(cls):
    """Class decorator: a frozen dataclass of static options, registered as a static pytree (no
    leaves; equality and hash are its options')."""
    return jax.tree_util.register_static(dataclasses.dataclass(frozen=True)(cls))


def take(a, ancestors, axis: int = 0):
    """a taken at `ancestors` along `axis` (the particle axis of one state leaf)."""
    return jnp.take(a, ancestors, axis=axis)


class Solver(abc.ABC):
    """Base class of every solver. Subclasses are `solver_value` dataclasses (or pytrees holding
    arrays) and implement `step`; they override `init`, `head`, `tail`, `gather`, `order` and
    `stochastic` as needed. `repr` shows the options: `ddim(eta=0.5)` prints as `DDIM(eta=0.5)`."""

    def init(self, x, timesteps):
        """The state before the first step from x at timesteps[0]."""
        del timesteps
        return State(x)

    @abc.abstractmethod
    def step(self, state, key, t, t_next, denoise):
        """One step from t to t_next: returns (state, StepInfo(nfe, x0))."""

    @property
    def head(self) -> tuple[Callable, ...]:
        """Step functions used instead of `step` on the grid's first intervals."""
        return ()

    @property
    def tail(self) -> tuple[Callable, ...]:
        """Step functions used instead of `step` on the grid's last intervals."""
        return ()

    @property
    @abc.abstractmethod
    def order(self) -> float:
        """The declared convergence order (weak order for stochastic solvers)."""

    @property
    def stochastic(self) -> bool:
        """Whether `step` draws noise from its key."""
        return False

    @property
    def token_states(self) -> bool:
        """Whether states are integer token arrays (masked diffusion, `diffjax.discrete`); then the
        `StepInfo.x0` of a step is the log-probabilities of the clean tokens, (N, L, V)."""
        return False

    def gather(self, state, ancestors):
        """The state of particle `ancestors[j]` for every j: every per-particle leaf taken along its
        particle axis. The default serves states whose per-particle leaves all lead with the batch
        axis (`State`); solvers with histories override it."""
        return jax.tree.map(lambda a: take(a, ancestors), state)

    def with_x(self, state, x):
        """The state with its sample replaced by x and everything else kept: how guidance and
        inverse-problem methods move the sample between steps (DPS's gradient step, RePaint's
        replacement). The default serves states with an `x` field."""
        return state._replace(x=x)

    def step_at(self, i, num_steps: int) -> Callable:
        """The step function for step i of `num_steps`: a head or tail step when i is a Python int
        that falls there, else `step` (a traced i must be a middle step)."""
        if isinstance(i, int):
            if i < len(self.head):
                return self.head[i]
            first_tail = num_steps - len(self.tail)
            if i >= first_tail:
                return self.tail[i - first_tail]
        return self.step


class GaussianSolver(Solver):
    """A solver whose step is x' = mean + std z given the state and the prediction at (x, t).

    Subclasses implement `transition(state, pred, t, t_next, schedule) -> Gaussian` and, if they keep
    more than x, `advance(state, x_next, pred, t, t_next, schedule) -> state`. `step` evaluates the
    denoiser once, takes the transition and draws its noise (none when not `stochastic`)."""

    @abc.abstractmethod
    def transition(self, state, pred, t, t_next, schedule) -> Gaussian:
        """The Gaussian law of the next sample given the state and `pred` = denoise(state.x, t)."""

    def advance(self, state, x_next, pred, t, t_next, schedule):
        """The state after moving to x_next (default: only the sample changes)."""
        del pred, t, t_next, schedule
        return state._replace(x=x_next)

    def step(self, state, key, t, t_next, denoise):
        pred = denoise(state.x, t)
        law = self.transition(state, pred, t, t_next, denoise.schedule)
        x_next = (law.sample(key) if self.stochastic else law.mean).astype(state.x.dtype)
        return self.advance(state, x_next, pred, t, t_next, denoise.schedule), StepInfo(jnp.int32(1), pred.x0)


def push(history, value):
    """Newest-first fixed-size history: drop the oldest entry and put `value` at index 0."""
    return jnp.concatenate([value[None].astype(history.dtype), history[:-1]], axis=0)


class History(NamedTuple):
    """A fixed-size ring buffer of earlier arrays (model outputs of past steps).

    `record` writes one slot in place (a dynamic-update-slice of the scan carry) instead of shifting
    every slot as `push` does; entry j (0 = newest) is read without moving the others.
    """

    values: jax.Array  # (size, *shape)
    newest: jax.Array  # int32: the slot holding entry 0


def empty_history(size, like):
    """A `History` of `size` zero slots shaped like `like`."""
    return History(jnp.zeros((size,) + like.shape, like.dtype), jnp.int32(0))


def record(history, value):
    """The history with `value` as its newest entry, written in place over the oldest slot."""
    slot = (history.newest - 1) % history.values.shape[0]
    values = jax.lax.dynamic_update_index_in_dim(history.values, value.astype(history.values.dtype), slot, 0)
    return History(values, slot)


def read(history, j):
    """Entry j, 0 being the newest recorded."""
    return jax.lax.dynamic_index_in_dim(history.values, (history.newest + j) % history.values.shape[0], 0, False)


def weighted_sum(history, weights):
    """sum_j weights[j] * read(history, j), in one pass over the buffer."""
    return jnp.tensordot(jnp.roll(weights, history.newest).astype(history.values.dtype), history.values, axes=1)


def gather_history(history, ancestors):
    """A history of per-particle arrays (size, N, ...) taken at `ancestors` along the particle axis."""
    return history._replace(values=take(history.values, ancestors, axis=1))


# --- starting at alpha = 0 -----------------------------------------------------------------------

# predictions that cannot give x0 where alpha = 0 (x0 = (x - sigma eps) / alpha, EDM's x / alpha)
NO_X0_AT_PURE_NOISE = ("eps", "score", "edm")


def at_pure_noise(schedule, t):
    """Whether alpha(t) == 0, where x_t is pure noise (a traced bool of t's shape).

    Args:
      schedule: the schedule.
      t: the time (a scalar, or per-sample (B, 1, ..., 1)).

    Returns:
      The bool array `schedule.alpha(t) == 0`.
    """
    return schedule.alpha(t) == 0


def ddim_step(schedule, pred, t, t_next, *, eta=0.0) -> Gaussian:
    """DDIM's step from t to t_next as a Gaussian: with eta = 0 the point mass at
    alpha' x0 + sigma' eps, with eta = 1 the ancestral step, N(alpha' x0, sigma'^2 I) from alpha(t) = 0
    (`gaussian.posterior`, the one home of DDIM's formula). It is finite from alpha(t) = 0 and into
    sigma(t_next) = 0, where other solvers' coordinates are not (module docstring).

    Args:
      schedule: the schedule.
      pred: the `Prediction` at (x, t).
      t: the step's start time.
      t_next: the step's end time.
      eta: DDIM's noise level in [0, 1].

    Returns:
      The step's `Gaussian` law, std broadcast to x0's shape.
    """
    return gaussian.posterior(schedule, pred.x0, pred.eps, t, t_next, eta=eta)


def where_pure_noise(schedule, t, at_noise, otherwise):
    """`at_noise` where alpha(t) == 0, else `otherwise` (x-shaped arrays; a per-sample t broadcasts),
    branch-free: where alpha(t) > 0 the result is `otherwise` bit for bit.

    Args:
      schedule: the schedule.
      t: the step's start time.
      at_noise: the value at alpha(t) = 0 (from `ddim_step`).
      otherwise: the solver's own value.

    Returns:
      jnp.where(alpha(t) == 0, at_noise, otherwise), in `otherwise`'s dtype.
    """
    return jnp.where(at_pure_noise(schedule, t), at_noise, otherwise).astype(jnp.result_type(otherwise))


def restart_at_pure_noise(schedule, t, fresh, state):
    """A multistep solver's state after a step from t: `fresh` (the state before a grid's first step)
    where alpha(t) == 0, else `state`, leaf by leaf and branch-free. The history of the step from
    alpha = 0 is dropped, so the next step is a first step and no finite difference uses that output.

    A per-sample t (`time_shift`) restarts every sample when any one sits at alpha = 0 (the counters
    are shared by the batch); `fresh` should hold the same x as `state`.

    Args:
      schedule: the schedule.
      t: the step's start time.
      fresh: the restarted state (a pytree like `state`).
      state: the solver's own next state.

    Returns:
      The selected state.
    """
    restart = jnp.any(at_pure_noise(schedule, t))
    return jax.tree.map(lambda a, b: jnp.where(restart, a, b).astype(b.dtype), fresh, state)


def check_start_prediction(denoiser, timesteps) -> None:
    """Raise a ValueError when a concrete grid starts where alpha = 0 and `denoiser` predicts eps, score
    or EDM's F, from which x0 = (x - sigma eps) / alpha is undefined there; x0-, v- and
    velocity-predicting denoisers give x0 at alpha = 0. A wrapper (CFG, guidance) is checked through
    its `.denoiser`; denoisers without a `prediction` and traced grids are not checked.

    Args:
      denoiser: the denoiser (`Denoiser.prediction` is read, through wrappers' `.denoiser`).
      timesteps: the grid; its first time is checked.

    Raises:
      ValueError: naming the prediction and the time.
    """
    schedule = getattr(denoiser, "schedule", None)
    inner, prediction = denoiser, None
    for _ in range(16):  # the outermost `prediction`: a wrapper that predicts x0 itself is allowed
        prediction = getattr(inner, "prediction", None)
        if prediction is not None or inner is None:
            break
        inner = getattr(inner, "denoiser", None)
    if prediction not in NO_X0_AT_PURE_NOISE or schedule is None:
        return
    if _checks.grid_on(schedule, timesteps):  # remembered from the caller's grid check: no work on a hit
        t = float(np.asarray(timesteps)[0])
        raise ValueError(
            f"timesteps[0]={t!r} is a time where alpha = 0 (pure noise), where a denoiser with "
            f"prediction={prediction!r} cannot give x0 = (x - sigma eps) / alpha; start the grid below it "
            "(e.g. dj.timesteps.uniform(sched, n, t_max=0.999)) or use an x0-, v- or velocity-predicting denoiser"
        )


# --- wrappers ------------------------------------------------------------------------------------


class Wrapper(Solver):
    """A solver that transforms every step function of an `inner` solver the same way.

    Subclasses are dataclasses with an `inner` field and implement `wrap(step_fn, index)`, where
    index is 0 for the first head step and None otherwise; `step`, `head` and `tail` are the inner
    solver's, wrapped. Override `init` and `gather` when the wrapper keeps state of its own."""

    @abc.abstractmethod
    def wrap(self, step_fn: Callable, index: int | None) -> Callable:
        """`step_fn` (the inner solver's step, or head step `index`) transformed by this wrapper."""

    def init(self, x, timesteps):
        return self.inner.init(x, timesteps)

    def step(self, state, key, t, t_next, denoise):
        return self.wrap(self.inner.step, None)(state, key, t, t_next, denoise)

    @property
    def head(self):
        return tuple(self.wrap(f, i) for i, f in enumerate(self.inner.head))

    @property
    def tail(self):
        return tuple(self.wrap(f, None) for f in self.inner.tail)

    @property
    def order(self):
        return self.inner.order

    @property
    def stochastic(self):
        return self.inner.stochastic

    @property
    def token_states(self):
        return self.inner.token_states

    def gather(self, state, ancestors):
        return self.inner.gather(state, ancestors)

    def with_x(self, state, x):
        return self.inner.with_x(state, x)


@solver_value
class DenoiseToZero(Wrapper):
    """`inner` followed by one more evaluation at the grid's last time; build it with `denoise_to_zero`."""

    inner: Solver

    def wrap(self, step_fn, index):
        del index
        return step_fn

    @property
    def tail(self):
        return self.inner.tail[:-1] + (self._last,)

    def _last(self, state, key, t, t_next, denoise):
        last = self.inner.tail[-1] if self.inner.tail else self.inner.step
        state, info = last(state, key, t, t_next, denoise)
        x0 = denoise(state.x, t_next).x0
        return state._replace(x=x0.astype(state.x.dtype)), StepInfo(info.nfe + 1, info.x0)


def denoise_to_zero(solver: Solver) -> Solver:
    """`solver` followed by one evaluation at the grid's last time that returns its data prediction
    x0 (DDPM's and score_sde's final denoising; DPM-Solver's `denoise_to_zero`).

    Args:
      solver: any solver.

    Returns:
      A solver with the same steps whose last step also replaces the sample by x0-hat at the final
      time: one more NFE, no extra grid point.
    """
    check_solver("solver", solver)
    return DenoiseToZero(solver)


@dataclasses.dataclass(frozen=True)
class _FunctionSolver(Solver):
    init_fn: Callable
    step_fn: Callable
    head_fns: tuple = ()
    tail_fns: tuple = ()
    declared_order: float = 1.0
    is_stochastic: bool = False

    def init(self, x, timesteps):
        return self.init_fn(x, timesteps)

    def step(self, state, key, t, t_next, denoise):
        return self.step_fn(state, key, t, t_next, denoise)

    @property
    def head(self):
        return self.head_fns

    @property
    def tail(self):
        return self.tail_fns

    @property
    def order(self):
        return self.declared_order

    @property
    def stochastic(self):
        return self.is_stochastic


jax.tree_util.register_static(_FunctionSolver)


def custom(init: Callable, step: Callable, *, head=(), tail=(), order: float = 1.0, stochastic: bool = False):
    """A solver from plain functions, for experiments: `init(x_T, timesteps) -> state` and
    `step(state, key, t, t_next, denoise) -> (state, StepInfo)`, with optional head and tail step
    functions. It is hashed by the identity of its functions, so build it once and reuse it; write
    a `solver_value` class instead to get equality by options.

    Args:
      init: `init(x_T, timesteps) -> state`, the state with the sample in `.x`.
      step: `step(state, key, t, t_next, denoise) -> (state, StepInfo)`.
      head: step functions used instead of `step` on the grid's first intervals.
      tail: step functions used instead of `step` on the grid's last intervals.
      order: the declared convergence order.
      stochastic: whether `step` draws noise from its key.

    Returns:
      A `Solver`.
    """
    for name, fn in (("init", init), ("step", step)):
        if not callable(fn):
            raise ValueError(f"{name} must be callable, got {fn!r}")
    return _FunctionSolver(init, step, tuple(head), tuple(tail), float(order), bool(stochastic))


def check_solver(name: str, solver) -> Solver:
    """Raise a ValueError naming `name` unless `solver` is a diffjax Solver."""
    if not isinstance(solver, Solver):
        raise ValueError(f"{name} must be a diffjax Solver (e.g. dj.solvers.ddim()), got {solver!r}")
    return solver


def check_gaussian(name: str, solver) -> GaussianSolver:
    """Raise a ValueError naming `name` unless `solver` is a stochastic `GaussianSolver` without head or
    tail steps: a proposal kernel with a density (DDIM(eta > 0), DDPM, Euler-ancestral,
    SDE-DPM-Solver++, Euler-Maruyama)."""
    check_solver(name, solver)
    if not (isinstance(solver, GaussianSolver) and solver.stochastic and not solver.head and not solver.tail):
        raise ValueError(
            f"{name} must be a stochastic solver whose step is one Gaussian transition (ddim(eta>0), ddpm, "
            f"euler_ancestral, dpmpp_2m_sde, euler_maruyama), got {solver!r}"
        )
    return solver


def single_step_init(x, timesteps):
    """`init` of a solver whose state is only the sample (for `custom`)."""
    del timesteps
    return State(x)
