r"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in the half-logSNR lambda = log(alpha / sigma), h = lambda_t - lambda_s.

Both algorithms share one set of formulas. Write them for the noise prediction (DPM-Solver),

    x_t = (a_t / a_s) x - b_t expm1(hh) m_s - b_t (higher-order terms in m's differences),

with a = alpha, b = sigma, m = eps, hh = h; DPM-Solver++ is the same text with a = sigma,
b = alpha, m = x0 and hh = -h (the data-prediction form of the paper). phi_1 = expm1(hh),
phi_2 = phi_1 / hh - 1, phi_3 = phi_2 / hh - 1/2.

`solver_type` "dpmsolver" (diffusers' "midpoint") and "taylor" ("heun") are the official code's
two second-order corrections. Steps that land on sigma = 0 (lambda = inf) drop to first order,
which returns the data prediction exactly, as diffusers does for `final_sigmas_type="zero"`.

**DPM-Solver++(3M).** The official code, diffusers and k-diffusion weight D2 =
(D1_0 - D1_1)/(r0 + r1), which estimates h^2 x0''/2, by phi_3, while Taylor's theorem asks for
2 phi_3: as shipped the method is second order. `variant="faithful"` reproduces the shipped
coefficient (for comparing with published numbers); `variant="corrected"` (the default) uses
2 phi_3 and is third order.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import (
    History,
    Solver,
    State,
    StepInfo,
    empty_history,
    noise_like,
    push,
    read,
    record,
    single_step_init,
    weighted_sum,
)

ALGORITHMS = ("dpmsolver", "dpmsolver++")
SOLVER_TYPES = ("dpmsolver", "taylor")
INNER = ("logsnr", "time_uniform", "time_quadratic")
LOWER_ORDER_FINAL_BELOW = 15  # diffusers' threshold (the official code uses 10)


def _lam(sched, t):
    return 0.5 * sched.logsnr(t)


def _terms(algorithm, sched, t, pred):
    """(a(t), b(t), m) of the shared formulas: (alpha, sigma, eps) or, for ++, (sigma, alpha, x0)."""
    if algorithm == "dpmsolver":
        return sched.alpha(t), sched.sigma(t), pred.eps
    return sched.sigma(t), sched.alpha(t), pred.x0


def _signed(algorithm, h):
    return h if algorithm == "dpmsolver" else -h


# --- singlestep ---------------------------------------------------------------------------------


def _inner_times(sched, s, t, order, inner):
    """The order - 1 intermediate times between s and t, placed like the official `get_time_steps`."""
    fractions = [k / order for k in range(1, order)]
    if inner == "logsnr":
        lam_s, lam_t = _lam(sched, s), _lam(sched, t)
        return [sched.t_from_logsnr(2.0 * (lam_s + f * (lam_t - lam_s))) for f in fractions]
    if inner == "time_uniform":
        return [s + f * (t - s) for f in fractions]
    return [(jnp.sqrt(s) + f * (jnp.sqrt(t) - jnp.sqrt(s))) ** 2 for f in fractions]


def singlestep_update(order: int, algorithm: str, solver_type: str, inner: str):
    """One singlestep DPM-Solver-`order` step as a solver step function (order NFE)."""

    def step(state, key, s, t, denoise):
        del key
        sched, x = denoise.schedule, state.x
        pred = denoise(x, s)
        a_s, _, m_s = _terms(algorithm, sched, s, pred)
        a_t, b_t, _ = _terms(algorithm, sched, t, pred)
        lam_s = _lam(sched, s)
        hh = _signed(algorithm, _lam(sched, t) - lam_s)
        phi_1 = jnp.expm1(hh)
        x_t = (a_t / a_s) * x - b_t * phi_1 * m_s
        if order >= 2:
            times = _inner_times(sched, s, t, order, inner)
            rs = [_signed(algorithm, _lam(sched, u) - lam_s) / hh for u in times]
            r1 = rs[0]
            a_1, b_1, _ = _terms(algorithm, sched, times[0], pred)
            x_1 = (a_1 / a_s) * x - b_1 * jnp.expm1(r1 * hh) * m_s
            m_1 = _terms(algorithm, sched, times[0], denoise(x_1.astype(x.dtype), times[0]))[2]
        if order == 2:
            if solver_type == "dpmsolver":
                x_t = x_t - (0.5 / r1) * b_t * phi_1 * (m_1 - m_s)
            else:
                x_t = x_t - (1.0 / r1) * b_t * (phi_1 / hh - 1.0) * (m_1 - m_s)
        if order == 3:
            r2 = rs[1]
            a_2, b_2, _ = _terms(algorithm, sched, times[1], pred)
            phi_22 = jnp.expm1(r2 * hh) / (r2 * hh) - 1.0
            x_2 = (a_2 / a_s) * x - b_2 * jnp.expm1(r2 * hh) * m_s - (r2 / r1) * b_2 * phi_22 * (m_1 - m_s)
            m_2 = _terms(algorithm, sched, times[1], denoise(x_2.astype(x.dtype), times[1]))[2]
            phi_2 = phi_1 / hh - 1.0
            if solver_type == "dpmsolver":
                x_t = x_t - (1.0 / r2) * b_t * phi_2 * (m_2 - m_s)
            else:
                d1_0, d1_1 = (m_1 - m_s) / r1, (m_2 - m_s) / r2
                d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
                d2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
                x_t = x_t - b_t * phi_2 * d1 - b_t * (phi_2 / hh - 0.5) * d2
        return State(x_t.astype(x.dtype)), StepInfo(jnp.int32(order), pred.x0)

    return step


def _singlestep_solver(order, algorithm, solver_type, inner, final_orders):
    order = _checks.positive_int("order", order)
    if order > 3:
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)
    _checks.one_of("inner", inner, INNER)
    final_orders = tuple(final_orders)
    for k in final_orders:
        if k not in (1, 2, 3):
            raise ValueError(f"final_orders must hold orders 1, 2 or 3, got {final_orders}")
    tail = tuple(singlestep_update(k, algorithm, solver_type, inner) for k in final_orders)
    return Solver(single_step_init, singlestep_update(order, algorithm, solver_type, inner), tail=tail)


def dpm_solver(order: int = 3, *, solver_type="dpmsolver", inner="logsnr", final_orders=()) -> Solver:
    """Singlestep DPM-Solver-`order` (noise prediction), `order` NFE per step; the last
    len(final_orders) steps use those orders. Intermediate points follow `inner` (the paper: logsnr)."""
    return _singlestep_solver(order, "dpmsolver", solver_type, inner, final_orders)


def dpmpp_2s(*, solver_type="dpmsolver", inner="logsnr", final_orders=()) -> Solver:
    """Singlestep DPM-Solver++(2S): data prediction, 2 NFE per step."""
    return _singlestep_solver(2, "dpmsolver++", solver_type, inner, final_orders)


def fast_orders(nfe: int, order: int = 3):
    """DPM-Solver-fast: the per-step orders that spend exactly `nfe` evaluations (Lu et al. 2022, 3.4)."""
    nfe = _checks.positive_int("nfe", nfe)
    if order == 3:
        k = nfe // 3 + 1
        return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    if order == 1:
        return [1] * nfe
    raise ValueError(f"order must be 1, 2 or 3, got {order!r}")


def dpm_solver_fast(nfe: int, order: int = 3, *, algorithm="dpmsolver", solver_type="dpmsolver", inner="logsnr"):
    """(solver, number of grid steps) for DPM-Solver-fast with `nfe` evaluations.

    Build the grid with that many steps (the paper spaces it uniformly in logSNR):
    `solver, n = dpm_solver_fast(20); ts = dj.timesteps.logsnr_uniform(sched, n)`.
    """
    _checks.one_of("algorithm", algorithm, ALGORITHMS)
    orders = fast_orders(nfe, order)
    tail = [k for k in orders[::-1] if k != orders[0]][::-1]
    solver = _singlestep_solver(orders[0], algorithm, solver_type, inner, tail)
    return solver, len(orders)


# --- multistep ----------------------------------------------------------------------------------


class MultistepState(NamedTuple):
    x: jax.Array
    i: jax.Array  # steps taken so far
    n: jax.Array  # steps in the grid
    models: History  # model outputs (eps or x0) of the previous order - 1 steps
    lams: jax.Array  # (order,) newest-first half-logSNRs, the current step's first


def _multistep_init(order):
    def init(x, timesteps):
        return MultistepState(
            x=x,
            i=jnp.int32(0),
            n=jnp.int32(timesteps.shape[0] - 1),
            models=empty_history(max(order - 1, 1), x),
            lams=jnp.zeros((order,), jnp.result_type(timesteps)),
        )

    return init


def step_order(state, order, t_next_sigma, lower_order_final, euler_at_final):
    """Warm up with orders 1, 2, ...; lower the order on the last steps (diffusers' rule: the last
    step first order, the one before at most second, when the grid has < 15 steps); first order
    into sigma = 0. Branch-free: a traced integer."""
    k = jnp.minimum(order, state.i + 1)
    remaining = state.n - state.i
    if lower_order_final:
        short = state.n < LOWER_ORDER_FINAL_BELOW
        k = jnp.where(short & (remaining == 1), 1, k)
        k = jnp.where(short & (remaining == 2), jnp.minimum(k, 2), k)
    if euler_at_final:
        k = jnp.where(remaining == 1, 1, k)
    return jnp.where(t_next_sigma == 0, 1, k)


def _multistep_coefficients(order_k, hh, r0, r1, solver_type, d2_weight):
    """Scalars (c0, c1, c2) so that the update is x_t = (a_t/a_s) x - b_t (c0 m0 + c1 (m0 - m1) + c2 (m1 - m2))."""
    phi_1 = jnp.expm1(hh)
    phi_2 = phi_1 / hh - 1.0
    phi_3 = phi_2 / hh - 0.5
    c1_order2 = 0.5 * phi_1 / r0 if solver_type == "dpmsolver" else phi_2 / r0
    # Order 3: D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1), D1_0 = (m0-m1)/r0, D1_1 = (m1-m2)/r1.
    c1_order3 = phi_2 * (1.0 + r0 / (r0 + r1)) / r0 + d2_weight * phi_3 / (r0 * (r0 + r1))
    c2_order3 = -phi_2 * r0 / ((r0 + r1) * r1) - d2_weight * phi_3 / (r1 * (r0 + r1))
    c1 = jnp.where(order_k == 1, 0.0, jnp.where(order_k == 2, c1_order2, c1_order3))
    c2 = jnp.where(order_k == 3, c2_order3, 0.0)
    return phi_1, c1, c2


def dpm_multistep(
    order: int = 2,
    *,
    algorithm="dpmsolver++",
    solver_type="dpmsolver",
    d2_weight=2.0,
    lower_order_final=True,
    euler_at_final=False,
) -> Solver:
    """Multistep DPM-Solver(++) of order 1-3; one NFE per step, the model output at the start of
    each step joins a fixed-size history."""
    _checks.one_of("algorithm", algorithm, ALGORITHMS)
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")

    def step(state, key, s, t, denoise):
        del key
        sched, x = denoise.schedule, state.x
        pred = denoise(x, s)
        a_s, _, m_s = _terms(algorithm, sched, s, pred)
        a_t, b_t, _ = _terms(algorithm, sched, t, pred)
        lam_s, lam_t = _lam(sched, s), _lam(sched, t)
        lams = push(state.lams, lam_s)
        k = step_order(state, order, sched.sigma(t), lower_order_final, euler_at_final)
        h = lam_t - lam_s
        r0 = (lams[0] - lams[1 % order]) / h
        r1 = (lams[1 % order] - lams[2 % order]) / h
        phi_1, c1, c2 = _multistep_coefficients(k, _signed(algorithm, h), r0, r1, solver_type, d2_weight)
        # phi_1 m0 + c1 (m0 - m1) + c2 (m1 - m2), with m1, m2 read from the history in one pass.
        earlier = weighted_sum(state.models, jnp.stack([c2 - c1, -c2])[: state.models.values.shape[0]])
        x_t = (a_t / a_s) * x - b_t * ((phi_1 + c1) * m_s + earlier)
        new = MultistepState(x_t.astype(x.dtype), state.i + 1, state.n, record(state.models, m_s), lams)
        return new, StepInfo(jnp.int32(1), pred.x0)

    return Solver(_multistep_init(order), step)


def dpmpp_2m(*, solver_type="dpmsolver", lower_order_final=True, euler_at_final=False) -> Solver:
    """DPM-Solver++(2M): x_t = (sigma_t/sigma_s) x - alpha_t phi_1 (x0_0 + (x0_0 - x0_1)/(2 r0))."""
    return dpm_multistep(
        2,
        algorithm="dpmsolver++",
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
    )


def dpmpp_3m(variant="corrected", *, lower_order_final=True, euler_at_final=False) -> Solver:
    """DPM-Solver++(3M); `variant` "corrected" (third order, 2 phi_3 on D2) or "faithful" (the
    shipped phi_3, second order)."""
    _checks.one_of("variant", variant, ("corrected", "faithful"))
    return dpm_multistep(
        3,
        algorithm="dpmsolver++",
        d2_weight=2.0 if variant == "corrected" else 1.0,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
    )


# --- SDE-DPM-Solver++(2M) -----------------------------------------------------------------------


def dpmpp_2m_sde(eta: float = 1.0, *, solver_type="dpmsolver", lower_order_final=True, euler_at_final=False):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b; diffusers' "sde-dpmsolver++", k-diffusion's
    `sample_dpmpp_2m_sde`): with g = 1 - exp(-(1 + eta) h),

        x_t = (sigma_t/sigma_s) e^{-eta h} x + alpha_t g x0_0 + alpha_t g' D + sigma_t sqrt(1 - e^{-2 eta h}) z,

    D = (x0_0 - x0_1)/r0 and g' = g/2 ("dpmsolver") or g/((1 + eta) h) - 1 ("taylor").
    eta = 1 is the paper's SDE solver; eta = 0 is DPM-Solver++(2M).
    """
    eta = _checks.in_range("eta", eta, 0.0, float("inf"))
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)

    def step(state, key, s, t, denoise):
        sched, x = denoise.schedule, state.x
        pred = denoise(x, s)
        lam_s, lam_t = _lam(sched, s), _lam(sched, t)
        lams = push(state.lams, lam_s)
        k = step_order(state, 2, sched.sigma(t), lower_order_final, euler_at_final)
        h = lam_t - lam_s
        eta_h = eta * h
        g = -jnp.expm1(-h - eta_h)
        d = (pred.x0 - read(state.models, 0)) * (h / (lams[0] - lams[1]))
        g_d = 0.5 * g if solver_type == "dpmsolver" else g / (h + eta_h) - 1.0
        alpha_t, sigma_t = sched.alpha(t), sched.sigma(t)
        x_t = sigma_t / sched.sigma(s) * jnp.exp(-eta_h) * x + alpha_t * g * pred.x0
        x_t = x_t + jnp.where(k == 2, alpha_t * g_d * d, 0.0)
        if eta > 0:
            noise = noise_like(key, x)
            x_t = x_t + sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * eta_h)) * noise
        new = MultistepState(x_t.astype(x.dtype), state.i + 1, state.n, record(state.models, pred.x0), lams)
        return new, StepInfo(jnp.int32(1), pred.x0)

    return Solver(_multistep_init(2), step)
