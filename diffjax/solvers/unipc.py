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
applies it always) and the official code do; its uncorrected first-order last step caps the
asymptotic order at 2. A step that lands on sigma = 0 is first order (diffusers gives NaN there
with bh1 or without lower_order_final; the official code never steps to sigma = 0). Needs
alpha > 0 at every time but a final sigma = 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import History, Solver, StepInfo, empty_history, push, read, record, weighted_sum
from diffjax.solvers.deis import moment_weights


class UniPCState(NamedTuple):
    x: jax.Array  # the predicted sample at the current time, not yet corrected
    x_prev: jax.Array  # the (corrected) sample the previous step started from
    t_prev: jax.Array  # and its time
    m: History  # x0 predictions of the last `order` evaluations
    lam: jax.Array  # (order,) their half-logSNRs, newest first
    i: jax.Array  # steps taken
    n: jax.Array  # steps in the grid


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


def unipc(order: int = 2, variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True) -> Solver:
    order = _checks.positive_int("order", order)
    _checks.one_of("order", order, (1, 2, 3))
    _checks.one_of("variant", variant, ("bh1", "bh2"))
    for name, value in (("corrector", corrector), ("lower_order_final", lower_order_final)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")

    def order_at(i, n):
        return jnp.minimum(jnp.minimum(order, i + 1), n - i if lower_order_final else order)

    def init(x, timesteps):
        lam = jnp.zeros((order,), jnp.result_type(timesteps, float))
        m = empty_history(order, x)
        return UniPCState(x, x, jnp.asarray(timesteps)[0], m, lam, jnp.int32(0), jnp.int32(len(timesteps) - 1))

    def step(state, key, t, t_next, denoise):
        del key
        sched = denoise.schedule
        pred = denoise(state.x, t)
        x = state.x
        if corrector:
            p_prev = order_at(state.i - 1, state.n)
            x_c = _update(state.x_prev, state.m, state.lam, state.t_prev, t, p_prev, sched, variant, pred.x0)
            x = jnp.where(state.i > 0, x_c, x).astype(x.dtype)
        m, lam = record(state.m, pred.x0), push(state.lam, 0.5 * sched.logsnr(t))
        p = jnp.where(jnp.isinf(sched.logsnr(t_next)), 1, order_at(state.i, state.n))
        x_next = _update(x, m, lam, t, t_next, p, sched, variant).astype(x.dtype)
        return UniPCState(x_next, x, t, m, lam, state.i + 1, state.n), StepInfo(jnp.int32(1), pred.x0)

    return Solver(init, step)
