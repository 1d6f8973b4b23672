r"""The Time-Shift sampler (Li, Qu, Yao, Sun & Moens 2024, "Alleviating Exposure Bias in Diffusion Models
through Sampling with Shifted Time Steps", ICLR; github Mingxiao-Li/TS-DPM) as a wrapper of any solver.

Before every step t -> t' but the first, while t' lies above training step `cutoff`, each sample's
variance v (over its flattened entries, unbiased as `torch.var`) picks the candidate training step

    k = argmin_{j in W} (v - (1 - abar_j))^2,   W = {i' - window//2, ..., i' + window//2} within [0, N - 1]

around t' = (i' + 1)/N (diffjax's time of DDPM step i'), and the step goes to t_k = (k + 1)/N instead
of t'. Steps are counted in training steps, so this needs a `discrete()` schedule; 1 - abar_j is
sigma(t_j)^2 there, the variance of x_j for data of zero per-sample variance (real data add
alpha^2 Var(x0), so the match leans to noisier steps; the paper and code do the same).

The paper couples each state x_t with the nearby time whose 1 - abar matches its variance; the official
code, followed here, makes the choice before a step from the state it starts at, searches around the
step's target t', and uses the result as that target. Where the next step then starts (`resume`) and
what is measured (`variance`) differ between its two implementations:

- `resume="shifted"`: the state sits at t_k, so the next step starts there (network and coefficients),
  as TS-DPM's DPM-Solver does (`t_prev_list[-1] = vec_t`, dpm_solver_utils.py L1137-1149);
  `resume="grid"`: the next step starts at the grid's t' again, as TS-DPM's DDIM/S-PNDM/F-PNDM code
  does (pnm_solver.py L150-163), which relabels a state left at t_k as being at t'.
- `variance="state"`: v is the variance of x, as in the paper and pnm_solver.py L100-128;
  `variance="eps"`: v is the variance of eps(x, t) at the state's own time, as the DPM-Solver variant
  does (dpm_solver_utils.py L389-420 measures `model_prev_list[-1]`, the last noise prediction, not x).
  That prediction is the wrapped step's own first network call, so it is reused, not paid twice
  (`Reuse`; a step whose first call differs, as with PNDM's index shift, pays one more NFE, and
  counts it).

Each sample gets its own times: the wrapped step sees t, t' of shape (B, 1, ..., 1), which DDIM,
Euler and PNDM broadcast against x, and its denoiser receives them as (B,). Solvers that store times
in their state need them in that shape too. Candidates outside [0, N - 1] are dropped, as the
official code truncates the window; a window wider than the grid's step can move a step backwards.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.schedules import Discrete
from diffjax.solvers.base import Solver, Wrapper, check_solver, solver_value, take


class TimeShiftState(NamedTuple):
    """The state of `time_shift(solver)` (Li et al. 2024, TS-DPM): the wrapped solver's state, the
    time each sample sits at after its last shift, and the number of steps taken; `x` is the inner
    state's sample."""

    inner: Any  # the wrapped solver's state
    t: jax.Array  # (B, 1, ..., 1): the time each sample's state sits at (after a shift, t_k)
    steps: jax.Array  # int32: steps taken; the first step is never shifted (not per particle)

    @property
    def x(self):
        """The current sample, the inner state's `x`."""
        return self.inner.x


class Reuse:
    """A denoiser that answers one call it has already seen: `Reuse(denoise, x, t, pred)` returns
    `pred` when called with exactly the objects `x` and `t` (the same traced arrays, compared with
    `is`) and no `cond`, and calls `denoise` otherwise. `reused` then says whether the saved
    prediction was handed out, so the caller counts the NFE it saved.

    Use it to hand a solver step a prediction computed beforehand (to measure the state, to score a
    candidate) without paying for the step's own first network call:

        pred = denoise(state.x, t)
        reuse = Reuse(denoise, state.x, t, pred)
        state, info = solver.step(state, key, t, t_next, reuse)  # its denoise(state.x, t) is `pred`
        nfe = info.nfe + (0 if reuse.reused else 1)

    The match is by identity, so it is free and safe under `jit`: a step that evaluates elsewhere
    (a shifted time, a perturbed x) simply calls the network. With `pred=None` it only forwards.
    `schedule` is the wrapped denoiser's.
    """

    def __init__(self, denoise, x=None, t=None, pred=None):
        self.schedule, self._denoise, self._x, self._t, self._pred = denoise.schedule, denoise, x, t, pred
        self.reused = False

    def __call__(self, x, t, cond=None):
        if self._pred is not None and x is self._x and t is self._t and cond is None:
            self.reused = True
            return self._pred
        return self._denoise(x, t) if cond is None else self._denoise(x, t, cond)


class _PerSampleTimes:
    """The denoiser the wrapped step sees: (B, 1, ..., 1) times go to the network as (B,)."""

    def __init__(self, denoise):
        self.schedule, self._denoise = denoise.schedule, denoise

    def __call__(self, x, t, cond=None):
        t = jnp.asarray(t)
        t = t.reshape(x.shape[:1]) if t.ndim == x.ndim > 1 else t
        return self._denoise(x, t) if cond is None else self._denoise(x, t, cond)


def _variance(y):
    if y.size // y.shape[0] < 2:
        raise ValueError(f"time_shift measures each sample's variance and needs >= 2 entries per sample, got {y.shape}")
    return jnp.var(y.reshape(y.shape[0], -1), axis=1, ddof=1)


def _choose(sched, v, t_next, window):
    """The candidate time (k + 1)/N whose 1 - abar_k is closest to each v, shape (B,)."""
    n = sched.num_train_timesteps
    times = t_next + jnp.arange(-(window // 2), window // 2 + 1) / n
    index = n * times - 1.0
    inside = (index > -1e-6) & (index < n - 1 + 1e-6)
    dist = jnp.where(inside, (v[:, None] - sched.sigma(times) ** 2) ** 2, jnp.inf)
    return times[jnp.argmin(dist, axis=1)]


@solver_value
class TimeShift(Wrapper):
    """`inner` with TS-DPM's time shift; build it with `time_shift`."""

    inner: Solver
    window: int
    cutoff: int
    variance: str = "state"
    resume: str = "shifted"

    def init(self, x, timesteps):
        t = jnp.broadcast_to(jnp.asarray(timesteps)[0], x.shape[:1] + (1,) * (x.ndim - 1))
        return TimeShiftState(self.inner.init(x, timesteps), t, jnp.int32(0))

    def wrap(self, step_fn, index):
        first = index == 0

        def step(state, key, t, t_next, denoise):
            sched, x = denoise.schedule, state.x
            if not isinstance(sched, Discrete):
                raise ValueError(
                    f"time_shift counts its window and cutoff in training steps and needs a discrete() schedule, "
                    f"got {type(sched).__name__}"
                )
            start = state.t if self.resume == "shifted" else jnp.broadcast_to(t, state.t.shape).astype(state.t.dtype)
            per_sample = _PerSampleTimes(denoise)
            den = Reuse(per_sample)
            target = jnp.broadcast_to(t_next, x.shape[:1])
            if not first:
                if self.variance == "eps":
                    pred = denoise(x, start.reshape(x.shape[:1]))
                    den, v = Reuse(per_sample, x, start, pred), _variance(pred.eps)
                else:
                    v = _variance(x)
                shift = (state.steps > 0) & (sched.num_train_timesteps * t_next - 1.0 > self.cutoff + 1e-6)
                target = jnp.where(shift, _choose(sched, v, t_next, self.window), target)
            target = target.reshape(start.shape).astype(start.dtype)
            inner, info = step_fn(state.inner, key, start, target, den)
            if self.variance == "eps" and not first and not den.reused:
                info = info._replace(nfe=info.nfe + 1)
            return TimeShiftState(inner, target, state.steps + 1), info

        return step

    def gather(self, state, ancestors):
        return TimeShiftState(self.inner.gather(state.inner, ancestors), take(state.t, ancestors), state.steps)

    def with_x(self, state, x):
        return state._replace(inner=self.inner.with_x(state.inner, x))


def time_shift(
    solver: Solver, *, window: int, cutoff: int, variance: str = "state", resume: str = "shifted"
) -> TimeShift:
    """The Time-Shift sampler (Li, Qu, Yao, Sun & Moens 2024, "Alleviating Exposure Bias in Diffusion
    Models through Sampling with Shifted Time Steps"; TS-DPM) as a wrapper of any solver: before each
    step but the first whose target lies above training step `cutoff`, every sample moves its target
    to the training step within `window` whose 1 - abar matches the sample's variance (module
    docstring). Needs a `discrete()` schedule; same NFE as `solver`; declares `solver`'s order.

    Args:
      solver: the solver to wrap (any; its step sees per-sample times of shape (B, 1, ..., 1)).
      window: width of the candidate window in training steps (>= 0; the paper uses 5 for F-PNDM
        at 100 steps, 30 for DPM-Solver).
      cutoff: shift only targets above this training step (>= 0; paper: 550 and 300).
      variance: "state" (the variance of x, the paper's and TS-DPM's PNDM code) or "eps" (of the
        noise prediction at the state's time, TS-DPM's DPM-Solver code; reused by the step).
      resume: "shifted" (the next step starts at the shifted time, TS-DPM's DPM-Solver code) or
        "grid" (at the grid's time again, TS-DPM's DDIM/PNDM code).

    Returns:
      A `Solver` value (a `Wrapper` of `solver` with its own state, `TimeShiftState`).
    """
    check_solver("solver", solver)
    window = _checks.positive_int("window", window, 0)
    cutoff = _checks.positive_int("cutoff", cutoff, 0)
    _checks.one_of("variance", variance, ("state", "eps"))
    _checks.one_of("resume", resume, ("shifted", "grid"))
    return TimeShift(solver, window, cutoff, variance, resume)
