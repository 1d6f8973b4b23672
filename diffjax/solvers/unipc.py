"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), multistep in data prediction: the official `multistep_uni_pc_bh_update` and
diffusers' UniPCMultistepScheduler.

With lambda = log(alpha/sigma) (half the logSNR), a step from s to t with h = lambda_t - lambda_s,
model outputs m_0 (at s) and m_k (at earlier s_k), r_k = (lambda_sk - lambda_s)/h and
D_k = (m_k - m_0)/r_k:

    UniP-p:  x_t   = (sigma_t/sigma_s) x - alpha_t expm1(-h) m_0 - alpha_t B(h) sum_{k<p} rho_k D_k
    UniC-p:  x_t^c = (sigma_t/sigma_s) x - alpha_t expm1(-h) m_0
                     - alpha_t B(h) (sum_{k<p} rho^c_k D_k + rho^c_p (m_t - m_0)),   m_t = x0(x_t, t)

B(h) = -h ("bh1") or expm1(-h) ("bh2"); rho solves sum_k rho_k r_k^(i-1) = b_i (i < p for UniP on
r_1..r_{p-1}; i <= p for UniC, with r = 1 for m_t), b_i = i! phi_{i+1} / B(h) from the recursion
phi_1 = expm1(-h), phi_{k+1} = phi_k/(-h) - 1/k!. As in the official code rho = 1/2 for UniP-2 and
UniC-1. UniC-p raises the order of UniP-p to p + 1 at no extra cost: m_t, evaluated at the
predicted point, corrects the step and is the next step's m_0, so NFE = steps, and the last step
is not corrected. Here step i first evaluates the model at the predicted x_i, corrects step i - 1
with it, then predicts x_{i+1}. Orders warm up 1, 2, ...; `lower_order_final` uses order
min(order, steps left) at every step, as diffusers (whose docs say "< 15 steps" but whose code
applies it always) and the official code do (`diffjax.solvers.multistep.step_order`, the rule
shared with DPM-Solver and DEIS); its uncorrected first-order last step caps the asymptotic order
at 2. A step that lands on sigma = 0 is first order (diffusers gives NaN there with bh1 or without
lower_order_final; the official code never steps to sigma = 0). A step from alpha = 0 (pure noise)
is DDIM's, after which UniPC restarts: the next step is a first step of the remaining grid, and
the step from alpha = 0 is never corrected (`diffjax.solvers.base`).

**Start.** The warm-up's first step (UniP-1, corrected by UniC-1: order 1 + corrector) caps the
global order at 2 + corrector. `start="singlestep"` takes the first step as singlestep
DPM-Solver++-3 (3 NFE, local error O(h^4)) and records x0 at the start time in the history; the
next step does not correct it (the corrector would be UniC-1, on the first step's single output,
which is second order: it would replace a third-order result by a worse one) and predicts with
UniP-2, which the step after corrects with UniC-2 as usual (from the head's x and the history
x0(t_0), x0(t_1)). The global order is then order + corrector up to 4 (UniPC-3 with corrector),
when the last step is not first order (`lower_order_final=False`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import (
    History,
    Solver,
    StepInfo,
    ddim_step,
    empty_history,
    gather_history,
    push,
    read,
    record,
    restart_at_pure_noise,
    solver_value,
    take,
    weighted_sum,
    where_pure_noise,
)
from diffjax.solvers.deis import moment_weights
from diffjax.solvers.dpm_solver import singlestep
from diffjax.solvers.multistep import START_ORDER, check_bool, check_start, global_order, step_order, warm_up_orders


class UniPCState(NamedTuple):
    """UniPC's state: the predicted sample, the one the last step started from, and the x0 history with
    its half-logSNRs (for the corrector)."""

    x: jax.Array  # the predicted sample at the current time, not yet corrected
    x_prev: jax.Array  # the (corrected) sample the previous step started from
    t_prev: jax.Array  # and its time (not per particle)
    m: History  # x0 predictions of the last `order` evaluations, values (order, N, ...)
    lam: jax.Array  # (order,) their half-logSNRs, newest first (not per particle)
    i: jax.Array  # steps taken (not per particle)
    n: jax.Array  # steps in the grid (not per particle)


def _update(x, m, lam, s, t, p, sched, variant, m_t=None):
    """UniP-p from x at s to t, with outputs m and half-logSNRs lam newest first; UniC-p if m_t is given."""
    size = m.values.shape[0]
    h = 0.5 * sched.logsnr(t) - lam[0]
    used = jnp.arange(1, size) < p  # D_1..D_{p-1}; the rest of the history may be placeholders
    r = jnp.where(used, (lam[1:] - lam[0]) / h, 1.0)
    B = -h if variant == "bh1" else jnp.expm1(-h)
    b, phi, factorial = [], jnp.expm1(-h), 1.0
    for i in range(1, size + 1):
        phi = phi / -h - 1.0 / factorial  # h phi_{i+1}(-h) of the official code
        b.append(phi * factorial / B)
        factorial *= i + 1
    half = 0.5 * (jnp.arange(size) == 0)
    if m_t is None:  # rho_1..rho_{p-1} on D_1..D_{p-1}
        rho = jnp.where(p == 2, half[:-1], moment_weights(r, b, p - 1))
    else:  # the same, after rho_t on m_t - m_0 (node r = 1)
        rho = jnp.where(p == 1, half, moment_weights(jnp.append(1.0, r), b, p))
        rho_t, rho = rho[0], rho[1:]
    alpha_t = sched.alpha(t)
    weights = jnp.where(used, alpha_t * B * rho / r, 0.0)
    m_0 = read(m, 0)
    x_t = sched.sigma(t) / sched.sigma(s) * x - alpha_t * jnp.expm1(-h) * m_0
    x_t = x_t - weighted_sum(m, jnp.concatenate([-jnp.sum(weights, keepdims=True), weights]))  # sum_k w_k (m_k - m_0)
    return x_t if m_t is None else x_t - alpha_t * B * rho_t * (m_t - m_0)


@solver_value
class UniPC(Solver):
    """Multistep UniPC with UniP of order `method_order`; build it with `unipc`."""

    method_order: int = 2
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool = True
    start: str = "lower_order"

    def _order_at(self, i, n, into_zero=False):
        return step_order(self.method_order, i, n, into_zero=into_zero, lower_order_final=self.lower_order_final)

    def init(self, x, timesteps):
        lam = jnp.zeros((self.method_order,), jnp.result_type(timesteps, float))
        m = empty_history(self.method_order, x)
        return UniPCState(x, x, jnp.asarray(timesteps)[0], m, lam, jnp.int32(0), jnp.int32(len(timesteps) - 1))

    def _restart(self, sched, t, t_next, state, new):
        """`new`, or where alpha(t) = 0 the state before the first step of the remaining grid: nothing to
        correct and no history."""
        m = empty_history(state.m.values.shape[0], new.x)
        t_next = jnp.broadcast_to(t_next, jnp.shape(state.t_prev)).astype(state.t_prev.dtype)
        fresh = UniPCState(new.x, new.x, t_next, m, jnp.zeros_like(state.lam), jnp.zeros_like(state.i),
                           state.n - state.i - 1)  # fmt: skip
        return restart_at_pure_noise(sched, t, fresh, new)

    def step(self, state, key, t, t_next, denoise):
        del key
        sched = denoise.schedule
        pred = denoise(state.x, t)
        x = state.x
        if self.corrector:  # correct step i - 1 (not the singlestep start: it is already third order)
            p_prev = self._order_at(state.i - 1, state.n)
            x_c = _update(state.x_prev, state.m, state.lam, state.t_prev, t, p_prev, sched, self.variant, pred.x0)
            x = jnp.where(state.i > len(self.head), x_c, x).astype(x.dtype)
        m, lam = record(state.m, pred.x0), push(state.lam, 0.5 * sched.logsnr(t))
        p = self._order_at(state.i, state.n, jnp.isinf(sched.logsnr(t_next)))
        x_next = _update(x, m, lam, t, t_next, p, sched, self.variant)
        x_next = where_pure_noise(sched, t, ddim_step(sched, pred, t, t_next).mean, x_next).astype(x.dtype)
        new = UniPCState(x_next, x, t, m, lam, state.i + 1, state.n)
        return self._restart(sched, t, t_next, state, new), StepInfo(jnp.int32(1), pred.x0)

    def singlestep_start(self, state, key, t, t_next, denoise):
        """The first step as singlestep DPM-Solver++-3 (3 NFE); records x0 at t in the history."""
        del key
        sched = denoise.schedule
        x_next, pred = singlestep(START_ORDER, "dpmsolver++", "dpmsolver", "logsnr", state.x, t, t_next, denoise)
        m, lam = record(state.m, pred.x0), push(state.lam, 0.5 * sched.logsnr(t))
        new = UniPCState(x_next.astype(state.x.dtype), state.x, t, m, lam, state.i + 1, state.n)
        return self._restart(sched, t, t_next, state, new), StepInfo(jnp.int32(START_ORDER), pred.x0)

    @property
    def head(self):
        return (self.singlestep_start,) if self.start == "singlestep" else ()

    @property
    def order(self):
        order, boost = self.method_order, int(self.corrector)
        # The last step is never corrected: UniP-1 with lower_order_final (and the one before UniP-2,
        # corrected), else UniP-order.
        final = [1, min(order, 2) + boost] if self.lower_order_final else [order]
        return global_order(order + boost, warm_up_orders(order, self.start, boost) + final)

    def gather(self, state, ancestors):
        return state._replace(
            x=take(state.x, ancestors), x_prev=take(state.x_prev, ancestors), m=gather_history(state.m, ancestors)
        )


def unipc(
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    *,
    start: str = "lower_order",
) -> UniPC:
    """UniPC (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models"), multistep in data prediction, as the official
    `multistep_uni_pc_bh_update` and diffusers' UniPCMultistepScheduler.

    Each step predicts with UniP-`order` and, with `corrector`, the next step's single evaluation
    corrects it with UniC, lifting the order by one at no extra cost: one NFE per step. Declared
    order: min(order + corrector, 2 + corrector) with the lower-order start, order + corrector with
    `start="singlestep"`, both capped at 2 by `lower_order_final`'s first-order last step.

    Args:
      order: the predictor's order, 1, 2 or 3.
      variant: "bh1" (B(h) = -h) or "bh2" (B(h) = expm1(-h), the default of diffusers).
      corrector: apply UniC (the "PC" in UniPC); False is UniP alone.
      lower_order_final: use order min(order, steps left) on every grid, as diffusers' code and the
        official code do; the last step is then first order and uncorrected.
      start: "lower_order" (orders 1, 2, ... on the first steps, as diffusers) or "singlestep" (the
        first step is singlestep DPM-Solver++-3, 3 NFE).

    Returns:
      A `Solver` value (`UniPC`).
    """
    order = _checks.positive_int("order", order)
    _checks.one_of("order", order, (1, 2, 3))
    _checks.one_of("variant", variant, ("bh1", "bh2"))
    check_bool("corrector", corrector)
    check_bool("lower_order_final", lower_order_final)
    check_start(start)
    return UniPC(order, variant, corrector, lower_order_final, start)
