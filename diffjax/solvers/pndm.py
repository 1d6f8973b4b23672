r"""Pseudo numerical methods (Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models
on Manifolds", ICLR; github luping-liu/PNDM `runner/method.py`) and diffusers' PLMS.

Every method moves x with the *transfer* phi, DDIM(eta=0) in PNDM's increment form (its eq. 9),
written with a = alpha(t), s = sigma(t) and primes at t' so that it holds for any schedule:

    phi(x, e, t -> t') = x + (a'^2 - a^2) x / (a (a + a')) - (a'^2 s^2 - a^2 s'^2) e / (a (a s' + a' s))
                       = (a'/a) x + (s' - a' s / a) e                      (= DDIM(eta=0) with eps = e).

For VP schedules a^2 = abar and both numerators equal abar' - abar, PNDM's own formula. The methods
differ in the e they hand to phi(x_t, e, t -> t'), with e_k = eps(x, t) at the k-th previous step:

- S-PNDM: a first `head` step of improved Euler, e = (e_0 + eps(phi(x, e_0, t -> t'), t')) / 2
  (2 NFE), then e = (3 e_0 - e_1) / 2. NFE = steps + 1.
- F-PNDM: three `head` steps of pseudo Runge-Kutta (4 NFE each), with m = (t + t')/2:
  e_1 = eps(x, t), e_2 = eps(phi(x, e_1, t -> m), m), e_3 = eps(phi(x, e_2, t -> m), m),
  e_4 = eps(phi(x, e_3, t -> t'), t'), e = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6; then Adams-Bashforth 4,
  e = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24. NFE = steps + 9.
- PLMS (`plms()`, diffusers' PNDMScheduler with skip_prk_steps=True, after crowsonkb's PLMS): the
  S-PNDM head step, then Adams-Bashforth 2, 3, 4 as the history fills. NFE = steps + 1.

The midpoint m is the midpoint in the schedule's own time t, as in the paper and both official codes
(for discrete schedules the midpoint of the DDPM indices, read from the interpolated schedule). The
multistep coefficients are the paper's equal-step ones on whatever grid is given. Since phi holds e
fixed in s = sigma/alpha (x'/a' = x/a + (s' - s) e), they keep AB4's order only on grids uniform in s:
F-PNDM is then order 4, while on Karras and logSNR grids all three methods are order 2 (measured in
tests/test_pndm.py). PLMS matches diffusers when diffusers' `t - N // n` is the next listed timestep
("leading" spacing, or "trailing" with n dividing N); otherwise diffusers' own grid is inconsistent.

`index_shift=True` reproduces the official sampler's one-index shift for discrete schedules: it
trains with `alphas_cump[i]` but samples with `alphas_cump[i + 1]` for a network fed step i, so the
network is told one training step less noise than the state has. In diffjax time (step i at
t = (i + 1)/N) the state sits at the grid time t, phi uses alpha(t), sigma(t), and the network is
evaluated at t - 1/N; the midpoint's phi reads the knot `alphas_cump[int(mid) + 1]` as the official
code does (this differs from the interpolated schedule only for odd step sizes). The official grid
`range(0, N, N // S)` ending in `alphas_cump[0]` is then
`timesteps.diffusers(sched, S, spacing="leading", steps_offset=1, final="sigma_min")`.

A step from alpha = 0 (pure noise, where phi divides by alpha) is DDIM's from the prediction at
(x, t), after which the methods restart with an empty history: the next step is Adams-Bashforth 1
(the head steps are static grid positions, so a warm-up step that falls at alpha = 0 is spent on
that DDIM step; `diffjax.solvers.base`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.schedules import Discrete
from diffjax.solvers.base import (
    History,
    Solver,
    StepInfo,
    ddim_step,
    empty_history,
    gather_history,
    record,
    restart_at_pure_noise,
    solver_value,
    take,
    weighted_sum,
    where_pure_noise,
)

# Adams-Bashforth coefficients for 1..4 points, newest first.
_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class PNDMState(NamedTuple):
    """PNDM/PLMS's state: the sample and the eps of the previous order - 1 steps."""

    x: jax.Array
    eps: History  # eps(x, t) of the previous order - 1 steps, values (order - 1, N, ...)
    count: jax.Array  # int32: how many entries of `eps` are filled (not per particle)


def transfer(schedule, x, eps, t, t_next):
    """PNDM's transfer phi(x, eps, t -> t'): DDIM(eta=0) for any schedule (needs alpha(t) > 0)."""
    a, s, a_next, s_next = schedule.alpha(t), schedule.sigma(t), schedule.alpha(t_next), schedule.sigma(t_next)
    x_coef = (a_next**2 - a**2) / (a * (a + a_next))
    eps_coef = (a_next**2 * s**2 - a**2 * s_next**2) / (a * (a * s_next + a_next * s))
    return (x + x_coef * x - eps_coef * eps).astype(x.dtype)


def _shift(schedule, index_shift):
    """The time the network is moved back by (None: no shift)."""
    if not index_shift:
        return None
    if not isinstance(schedule, Discrete):
        raise ValueError(
            f"index_shift=True reproduces PNDM's one-step shift of DDPM indices and needs a discrete() schedule, "
            f"got {type(schedule).__name__}"
        )
    return 1.0 / schedule.num_train_timesteps


def _eps(denoise, x, t, shift):
    return _predict(denoise, x, t, shift).eps


def _predict(denoise, x, t, shift):
    return denoise(x, t if shift is None else t - shift)


def _midpoint(t, t_next, shift):
    """(network time, transfer time) of the midpoint; PNDM's phi truncates it to a knot."""
    mid = 0.5 * (t + t_next)
    if shift is None:
        return mid, mid
    n = 1.0 / shift  # official index = n * mid - 2; alphas_cump[int(index) + 1] sits at (int(index) + 2) / n
    return mid, (jnp.trunc(n * mid - 2.0 + 0.25) + 2.0) / n


def _finish(state, sched, x, pred, e_bar, t, t_next, nfe):
    """The step's new state from e_bar, with `pred` = the prediction at the step's start (its eps
    joins the history); from alpha(t) = 0, DDIM's step from `pred` and an empty history."""
    x0 = where_pure_noise(sched, t, pred.x0, (x - sched.sigma(t) * e_bar) / sched.alpha(t))
    x_next = where_pure_noise(sched, t, ddim_step(sched, pred, t, t_next).mean, transfer(sched, x, e_bar, t, t_next))
    new = PNDMState(x_next.astype(x.dtype), record(state.eps, pred.eps), state.count + 1)
    fresh = PNDMState(new.x, empty_history(state.eps.values.shape[0], x), jnp.zeros_like(state.count))
    return restart_at_pure_noise(sched, t, fresh, new), StepInfo(jnp.int32(nfe), x0.astype(x.dtype))


class _PseudoNumerical(Solver):
    """The shared machinery: a history of `_points - 1` earlier eps, Adams-Bashforth on it as the
    history fills (`step`), and the two warm-up steps (`improved_euler`, `runge_kutta`)."""

    _points = 4  # Adams-Bashforth points of the multistep phase
    index_shift = False

    def init(self, x, timesteps):
        del timesteps
        return PNDMState(x, empty_history(self._points - 1, x), jnp.int32(0))

    def improved_euler(self, state, key, t, t_next, denoise):
        """S-PNDM's and PLMS's first step: e = (e_0 + eps(phi(x, e_0, t -> t'), t')) / 2 (2 NFE)."""
        del key
        sched, x = denoise.schedule, state.x
        shift = _shift(sched, self.index_shift)
        pred = _predict(denoise, x, t, shift)
        e_1 = pred.eps
        e_2 = _eps(denoise, transfer(sched, x, e_1, t, t_next), t_next, shift)
        return _finish(state, sched, x, pred, 0.5 * (e_1 + e_2), t, t_next, 2)

    def runge_kutta(self, state, key, t, t_next, denoise):
        """F-PNDM's warm-up step: pseudo Runge-Kutta in phi with t-midpoints (4 NFE)."""
        del key
        sched, x = denoise.schedule, state.x
        shift = _shift(sched, self.index_shift)
        mid, mid_transfer = _midpoint(t, t_next, shift)
        pred = _predict(denoise, x, t, shift)
        e_1 = pred.eps

        # e_k = eps(phi(x, e_{k-1}, t -> c_k), c_k) for c = (m, m, t'): one scan, so one compiled network call.
        def stage(e, times):
            net_time, transfer_time = times
            e = _eps(denoise, transfer(sched, x, e, t, transfer_time), net_time, shift)
            return e, e

        times = (
            jnp.stack(jnp.broadcast_arrays(mid, mid, t_next)),
            jnp.stack(jnp.broadcast_arrays(mid_transfer, mid_transfer, t_next)),
        )
        _, (e_2, e_3, e_4) = jax.lax.scan(stage, e_1, times)
        return _finish(state, sched, x, pred, (e_1 + 2.0 * e_2 + 2.0 * e_3 + e_4) / 6.0, t, t_next, 4)

    def step(self, state, key, t, t_next, denoise):
        """Adams-Bashforth with as many of the `_points` points as the history holds (1 NFE)."""
        del key
        order = self._points
        # rows[k]: the (k+1)-point formula padded to `order` entries; row min(count, order - 1) is used.
        rows = np.array([_AB[k] + (0.0,) * (order - 1 - k) for k in range(order)])  # float64 on the host
        sched, x = denoise.schedule, state.x
        pred = _predict(denoise, x, t, _shift(sched, self.index_shift))
        e = pred.eps
        coef = rows[0]
        for k in range(1, order):
            coef = jnp.where(state.count >= k, rows[k], coef)
        e_bar = coef[0].astype(x.dtype) * e + weighted_sum(state.eps, coef[1:])
        return _finish(state, sched, x, pred, e_bar, t, t_next, 1)

    @property
    def order(self):
        # 2 on Karras and logSNR grids, the grids the order tests use. The fixed equal-step coefficients
        # keep Adams-Bashforth's nominal order only on grids uniform in s = sigma/alpha, where F-PNDM and
        # PLMS are order 4 (tests/test_pndm.py measures both); the declared order is the general one.
        return 2.0

    def gather(self, state, ancestors):
        return state._replace(x=take(state.x, ancestors), eps=gather_history(state.eps, ancestors))


@solver_value
class PNDM(_PseudoNumerical):
    """S-PNDM or F-PNDM; build it with `pndm`."""

    variant: str = "f"
    index_shift: bool = False

    @property
    def _points(self):
        return 2 if self.variant == "s" else 4

    @property
    def head(self):
        return (self.improved_euler,) if self.variant == "s" else (self.runge_kutta,) * 3


@solver_value
class PLMS(_PseudoNumerical):
    """diffusers' PLMS; build it with `plms`."""

    @property
    def head(self):
        return (self.improved_euler,)


def pndm(variant: str = "f", index_shift: bool = False) -> PNDM:
    """Pseudo numerical methods (Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion
    Models on Manifolds"): linear multistep methods on eps moved by the DDIM transfer phi.

    S-PNDM takes one improved-Euler warm-up step (2 NFE), then e = (3 e_0 - e_1) / 2 (NFE = steps
    + 1); F-PNDM three pseudo Runge-Kutta warm-up steps (4 NFE each), then Adams-Bashforth 4 (NFE =
    steps + 9). Both are second order on Karras and logSNR grids; F-PNDM is fourth order on grids
    uniform in sigma/alpha (module docstring).

    Args:
      variant: "s" (S-PNDM) or "f" (F-PNDM, the paper's main method).
      index_shift: reproduce the official sampler's one-index shift of the network's DDPM step
        (needs a `discrete()` schedule; module docstring).

    Returns:
      A `Solver` value with 1 (S-PNDM) or 3 (F-PNDM) head steps.
    """
    _checks.one_of("variant", variant, ("s", "f"))
    if not isinstance(index_shift, bool):
        raise ValueError(f"index_shift must be True or False, got {index_shift!r}")
    return PNDM(variant, index_shift)


def plms() -> PLMS:
    """PLMS: diffusers' `PNDMScheduler(skip_prk_steps=True)` (after crowsonkb's PLMS; Liu et al. 2022's
    linear multistep method on the DDIM transfer): one improved-Euler step, then Adams-Bashforth 2,
    3, 4 as the history fills. NFE = steps + 1; second order on Karras and logSNR grids.

    Returns:
      A `Solver` value with one head step.
    """
    return PLMS()
