r"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in the half-logSNR lambda = log(alpha / sigma), h = lambda_t - lambda_s.

Both algorithms share one set of formulas. Write them for the noise prediction (DPM-Solver),

    x_t = (a_t / a_s) x - b_t expm1(hh) m_s - b_t (higher-order terms in m's differences),

with a = alpha, b = sigma, m = eps, hh = h; DPM-Solver++ is the same text with a = sigma,
b = alpha, m = x0 and hh = -h (the data-prediction form of the paper). phi_1 = expm1(hh),
phi_2 = phi_1 / hh - 1, phi_3 = phi_2 / hh - 1/2.

`solver_type` "dpmsolver" (diffusers' "midpoint") and "taylor" ("heun") are the official code's
two second-order corrections. Steps that land on sigma = 0 (lambda = inf) drop to first order,
which returns the data prediction exactly (DPM-Solver++; DPM-Solver's noise-prediction form, whose
first-order step there is 0 * inf, takes DDIM's step, the same x0), as diffusers does for
`final_sigmas_type="zero"`. A step from alpha = 0 (lambda = -inf, pure noise) is DDIM's
(`diffjax.solvers.base`), and the multistep solvers restart after it: their next step is a first
step of the remaining grid, with nothing of the step from alpha = 0 in its differences.

**DPM-Solver++(3M).** The official code, diffusers and k-diffusion weight D2 =
(D1_0 - D1_1)/(r0 + r1), which estimates h^2 x0''/2, by phi_3, while Taylor's theorem asks for
2 phi_3: as shipped the method is second order. `variant="faithful"` reproduces the shipped
coefficient (for comparing with published numbers); `variant="corrected"` (the default) uses
2 phi_3 and is third order.

**Orders.** The multistep solvers warm up with orders 1, 2, ... and lower their final orders as
`diffjax.solvers.multistep` describes (one rule for DPM-Solver, DEIS and UniPC). The first-order
first step caps the global order at 2; `start="singlestep"` takes that step with the singlestep
third-order update instead, and corrected 3M is then third order on every grid.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.gaussian import Gaussian
from diffjax.solvers.base import (
    GaussianSolver,
    History,
    Solver,
    State,
    StepInfo,
    at_pure_noise,
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
from diffjax.solvers.multistep import (
    LOWER_ORDER_FINAL_BELOW,
    START_ORDER,
    check_bool,
    check_start,
    global_order,
    step_order,
    warm_up_orders,
)

ALGORITHMS = ("dpmsolver", "dpmsolver++")
SOLVER_TYPES = ("dpmsolver", "taylor")
INNER = ("logsnr", "time_uniform", "time_quadratic")


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


def singlestep(order: int, algorithm: str, solver_type: str, inner: str, x, s, t, denoise):
    """One singlestep DPM-Solver-`order` update from x at s to t (order NFE).

    Returns:
      (x_t, pred): the new sample (in the promoted dtype of x and the schedule) and the prediction
      at (x, s), whose model output a multistep solver records when this is its first step.
    """
    sched = denoise.schedule
    pred = denoise(x, s)
    a_s, _, m_s = _terms(algorithm, sched, s, pred)
    a_t, b_t, _ = _terms(algorithm, sched, t, pred)
    lam_s = _lam(sched, s)
    hh = _signed(algorithm, _lam(sched, t) - lam_s)
    phi_1 = jnp.expm1(hh)
    x_first = x_t = (a_t / a_s) * x - b_t * phi_1 * m_s
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
    if order >= 2:  # into sigma = 0 the ratios r are inf / inf: first order, x0 itself for ++
        x_t = jnp.where(sched.sigma(t) == 0, x_first, x_t)
    return _ddim_where_singular(algorithm, sched, pred, s, t, x_t), pred


def _ddim_where_singular(algorithm, sched, pred, s, t, x_t):
    """x_t, or DDIM's step where the step from s to t is singular in lambda: from alpha(s) = 0, and
    for noise prediction also into sigma(t) = 0 (where sigma_t expm1(h) is 0 inf; DDIM gives x0)."""
    singular = at_pure_noise(sched, s)
    if algorithm == "dpmsolver":  # data prediction's first-order step into sigma = 0 is x0 itself
        singular = singular | (sched.sigma(t) == 0)
    return jnp.where(singular, ddim_step(sched, pred, s, t).mean, x_t).astype(jnp.result_type(x_t))


def singlestep_update(order: int, algorithm: str, solver_type: str, inner: str):
    """One singlestep DPM-Solver-`order` step as a solver step function (order NFE)."""

    def step(state, key, s, t, denoise):
        del key
        x_t, pred = singlestep(order, algorithm, solver_type, inner, state.x, s, t, denoise)
        return State(x_t.astype(state.x.dtype)), StepInfo(jnp.int32(order), pred.x0)

    return step


@solver_value
class DPMSolver(Solver):
    """Singlestep DPM-Solver(++); build it with `dpm_solver`, `dpmpp_2s` or `dpm_solver_fast`.

    `method_order` is the order (and NFE) of every step but the last len(final_orders)."""

    method_order: int = 3
    algorithm: str = "dpmsolver"
    solver_type: str = "dpmsolver"
    inner: str = "logsnr"
    final_orders: tuple[int, ...] = ()

    def update(self, order, state, key, t, t_next, denoise):
        """A singlestep update of the given order."""
        return singlestep_update(order, self.algorithm, self.solver_type, self.inner)(state, key, t, t_next, denoise)

    def step(self, state, key, t, t_next, denoise):
        return self.update(self.method_order, state, key, t, t_next, denoise)

    @property
    def tail(self):
        return tuple(functools.partial(self.update, k) for k in self.final_orders)

    @property
    def order(self):
        return global_order(self.method_order, self.final_orders)


def _singlestep_solver(order, algorithm, solver_type, inner, final_orders):
    order = _checks.positive_int("order", order)
    if order > 3:
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)
    _checks.one_of("inner", inner, INNER)
    final_orders = tuple(final_orders)
    for k in final_orders:
        if isinstance(k, bool) or k not in (1, 2, 3):
            raise ValueError(f"final_orders must hold orders 1, 2 or 3, got {final_orders}")
    return DPMSolver(order, algorithm, solver_type, inner, tuple(int(k) for k in final_orders))


def dpm_solver(order: int = 3, *, solver_type="dpmsolver", inner="logsnr", final_orders=()) -> DPMSolver:
    """Singlestep DPM-Solver (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver: A Fast ODE Solver for
    Diffusion Probabilistic Model Sampling in Around 10 Steps"), in noise prediction.

    Each step from s to t evaluates the model at s and at order - 1 intermediate times and
    integrates the exponentially weighted noise prediction exactly up to its Taylor term of that
    order: `order` NFE per step, global order `order` (capped at q + 1 by a final step of order q).

    Args:
      order: 1 (DDIM), 2 or 3.
      solver_type: "dpmsolver" (the paper's update; diffusers' "midpoint") or "taylor" (the official
        code's Taylor-expanded variant; diffusers' "heun").
      inner: where the intermediate times lie: "logsnr" (uniform in logSNR, the paper's),
        "time_uniform" or "time_quadratic" (uniform in t or sqrt(t), the official code's options).
      final_orders: orders (1, 2 or 3) of the last len(final_orders) steps, e.g. (2, 1); the grid
        must have at least that many steps.

    Returns:
      A `Solver` value (`DPMSolver`).
    """
    return _singlestep_solver(order, "dpmsolver", solver_type, inner, final_orders)


def dpmpp_2s(*, solver_type="dpmsolver", inner="logsnr", final_orders=()) -> DPMSolver:
    """Singlestep DPM-Solver++(2S) (Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++: Fast Solver
    for Guided Sampling of Diffusion Probabilistic Models"): the second-order singlestep update in
    data prediction, 2 NFE per step, global order 2.

    Args:
      solver_type: "dpmsolver" (midpoint) or "taylor" (see `dpm_solver`).
      inner: where the intermediate time lies: "logsnr", "time_uniform" or "time_quadratic".
      final_orders: orders (1, 2 or 3) of the last len(final_orders) steps.

    Returns:
      A `Solver` value (`DPMSolver` with algorithm "dpmsolver++").
    """
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
    """DPM-Solver-fast (Lu et al. 2022, section 3.4): singlestep DPM-Solver whose per-step orders
    (`fast_orders`) spend exactly `nfe` network evaluations.

    Build the grid with the returned number of steps (the paper spaces it uniformly in logSNR):
    `solver, n = dpm_solver_fast(20); ts = dj.timesteps.logsnr_uniform(sched, n)`.

    Args:
      nfe: the evaluation budget (>= 1).
      order: the highest order, 1, 2 or 3.
      algorithm: "dpmsolver" (noise prediction) or "dpmsolver++" (data prediction).
      solver_type: "dpmsolver" or "taylor" (see `dpm_solver`).
      inner: where the intermediate times lie (see `dpm_solver`).

    Returns:
      (solver, n): a `DPMSolver` value (equal budgets give equal solvers) whose last steps have the
      lower orders, and the number of grid steps that spends `nfe` evaluations.
    """
    _checks.one_of("algorithm", algorithm, ALGORITHMS)
    orders = fast_orders(nfe, order)
    tail = [k for k in orders[::-1] if k != orders[0]][::-1]
    solver = _singlestep_solver(orders[0], algorithm, solver_type, inner, tail)
    return solver, len(orders)


# --- multistep ----------------------------------------------------------------------------------


class MultistepState(NamedTuple):
    """The multistep DPM-Solver's state: the sample and the model outputs and half-logSNRs of the
    previous steps."""

    x: jax.Array
    i: jax.Array  # steps taken so far (not per particle)
    n: jax.Array  # steps in the grid (not per particle)
    models: History  # model outputs (eps or x0) of the previous order - 1 steps, values (size, N, ...)
    lams: jax.Array  # (order,) newest-first half-logSNRs, the current step's first (not per particle)


def _multistep_init(order, x, timesteps):
    return MultistepState(
        x=x,
        i=jnp.int32(0),
        n=jnp.int32(timesteps.shape[0] - 1),
        models=empty_history(max(order - 1, 1), x),
        lams=jnp.zeros((order,), jnp.result_type(timesteps)),
    )


def _restart(sched, s, state, new):
    """`new`, or where alpha(s) = 0 the state before the first step of the remaining grid."""
    fresh = MultistepState(new.x, jnp.zeros_like(state.i), state.n - state.i - 1,
                           empty_history(state.models.values.shape[0], new.x), jnp.zeros_like(state.lams))  # fmt: skip
    return restart_at_pure_noise(sched, s, fresh, new)


def _gather_multistep(state, ancestors):
    return state._replace(x=take(state.x, ancestors), models=gather_history(state.models, ancestors))


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


@solver_value
class DPMMultistep(Solver):
    """Multistep DPM-Solver(++) of order `method_order`; build it with `dpm_multistep`, `dpmpp_2m`
    or `dpmpp_3m`."""

    method_order: int = 2
    algorithm: str = "dpmsolver++"
    solver_type: str = "dpmsolver"
    d2_weight: float = 2.0
    lower_order_final: bool = True
    euler_at_final: bool = False
    start: str = "lower_order"

    def init(self, x, timesteps):
        return _multistep_init(self.method_order, x, timesteps)

    def step(self, state, key, s, t, denoise):
        del key
        order, algorithm = self.method_order, self.algorithm
        sched, x = denoise.schedule, state.x
        pred = denoise(x, s)
        a_s, _, m_s = _terms(algorithm, sched, s, pred)
        a_t, b_t, _ = _terms(algorithm, sched, t, pred)
        lam_s, lam_t = _lam(sched, s), _lam(sched, t)
        lams = push(state.lams, lam_s)
        k = step_order(order, state.i, state.n, into_zero=sched.sigma(t) == 0, lower_order_final=self.lower_order_final,
                       below=LOWER_ORDER_FINAL_BELOW, euler_at_final=self.euler_at_final)  # fmt: skip
        h = lam_t - lam_s
        r0 = (lams[0] - lams[1 % order]) / h
        r1 = (lams[1 % order] - lams[2 % order]) / h
        phi_1, c1, c2 = _multistep_coefficients(k, _signed(algorithm, h), r0, r1, self.solver_type, self.d2_weight)
        # phi_1 m0 + c1 (m0 - m1) + c2 (m1 - m2), with m1, m2 read from the history in one pass.
        earlier = weighted_sum(state.models, jnp.stack([c2 - c1, -c2])[: state.models.values.shape[0]])
        x_t = (a_t / a_s) * x - b_t * ((phi_1 + c1) * m_s + earlier)
        x_t = _ddim_where_singular(algorithm, sched, pred, s, t, x_t)
        new = MultistepState(x_t.astype(x.dtype), state.i + 1, state.n, record(state.models, m_s), lams)
        return _restart(sched, s, state, new), StepInfo(jnp.int32(1), pred.x0)

    def singlestep_start(self, state, key, s, t, denoise):
        """The first step as singlestep DPM-Solver(++)-3 (3 NFE); records the model output at s."""
        del key
        sched = denoise.schedule
        x_t, pred = singlestep(START_ORDER, self.algorithm, "dpmsolver", "logsnr", state.x, s, t, denoise)
        m_s = _terms(self.algorithm, sched, s, pred)[2]
        lams = push(state.lams, _lam(sched, s))
        new = MultistepState(x_t.astype(state.x.dtype), state.i + 1, state.n, record(state.models, m_s), lams)
        return _restart(sched, s, state, new), StepInfo(jnp.int32(START_ORDER), pred.x0)

    @property
    def head(self):
        return (self.singlestep_start,) if self.start == "singlestep" else ()

    @property
    def order(self):
        nominal = 2 if self.method_order == 3 and self.d2_weight != 2.0 else self.method_order
        final = [1] if self.euler_at_final else []
        return global_order(nominal, warm_up_orders(self.method_order, self.start) + final)

    def gather(self, state, ancestors):
        return _gather_multistep(state, ancestors)


def dpm_multistep(
    order: int = 2,
    *,
    algorithm="dpmsolver++",
    solver_type="dpmsolver",
    d2_weight=2.0,
    lower_order_final=True,
    euler_at_final=False,
    start="lower_order",
) -> DPMMultistep:
    """Multistep DPM-Solver(++) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models"), as the official code's and diffusers' DPMSolverMultistepScheduler.

    One NFE per step: the model output at the start of each step joins a fixed-size history, and
    step k uses a polynomial through the last `order` outputs. Orders warm up 1, 2, ... and drop on
    the last steps (`diffjax.solvers.multistep`). Declared order: min(order, 2) with the
    lower-order start, `order` with `start="singlestep"` (2 for d2_weight != 2), 2 with
    `euler_at_final`.

    Args:
      order: 1 (DDIM), 2 or 3.
      algorithm: "dpmsolver++" (data prediction, DPM-Solver++) or "dpmsolver" (noise prediction).
      solver_type: the second-order correction, "dpmsolver" (midpoint) or "taylor" ("heun").
      d2_weight: the weight of phi_3 on the second difference D2 at order 3: 2 is Taylor's (third
        order), 1 the official code's and diffusers' (second order; `dpmpp_3m("faithful")`).
      lower_order_final: on grids of fewer than 15 steps the last step is first order and the one
        before at most second (diffusers' rule; it stabilises few-step sampling).
      euler_at_final: make the last step first order on every grid (caps the order at 2).
      start: "lower_order" (diffusers': the first step is first order) or "singlestep" (the first
        step is singlestep DPM-Solver(++)-3, 3 NFE, so the global order reaches 3 on every grid).

    Returns:
      A `Solver` value (`DPMMultistep`).
    """
    _checks.one_of("algorithm", algorithm, ALGORITHMS)
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    d2_weight = _checks.finite("d2_weight", d2_weight)
    check_bool("lower_order_final", lower_order_final)
    check_bool("euler_at_final", euler_at_final)
    check_start(start)
    return DPMMultistep(int(order), algorithm, solver_type, d2_weight, lower_order_final, euler_at_final, start)


def dpmpp_2m(*, solver_type="dpmsolver", lower_order_final=True, euler_at_final=False) -> DPMMultistep:
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models"): the second-order multistep update in data prediction, one NFE per step,

        x_t = (sigma_t/sigma_s) x - alpha_t phi_1 (x0_0 + (x0_0 - x0_1)/(2 r0))      ("dpmsolver")

    with phi_1 = expm1(-h), r0 = h_last / h. Global order 2.

    Args:
      solver_type: "dpmsolver" (midpoint, above) or "taylor" (weight -phi_2/r0 = (1 - g/h)/r0 on
        x0_0 - x0_1 with g = -expm1(-h); diffusers' "heun").
      lower_order_final: first-order last step on grids of fewer than 15 steps (diffusers' rule).
      euler_at_final: first-order last step on every grid.

    Returns:
      A `Solver` value (`DPMMultistep` of order 2).
    """
    return dpm_multistep(
        2,
        algorithm="dpmsolver++",
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
    )


def dpmpp_3m(variant="corrected", *, lower_order_final=True, euler_at_final=False, start="lower_order") -> DPMMultistep:
    """DPM-Solver++(3M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models"): the third-order multistep update in data prediction, one NFE per step.

    Args:
      variant: "corrected" (2 phi_3 on D2: third order, Taylor's coefficient) or "faithful" (the
        shipped phi_3 of the official code, diffusers and k-diffusion: second order).
      lower_order_final: lower the last two orders on grids of fewer than 15 steps (diffusers' rule).
      euler_at_final: first-order last step on every grid (caps the order at 2).
      start: "lower_order" (orders 1, 2 on the first steps, as diffusers: global order 2) or
        "singlestep" (a singlestep third-order first step, 3 NFE: global order 3 for "corrected").

    Returns:
      A `Solver` value (`DPMMultistep` of order 3); its `order` is the declared global order.
    """
    _checks.one_of("variant", variant, ("corrected", "faithful"))
    return dpm_multistep(
        3,
        algorithm="dpmsolver++",
        d2_weight=2.0 if variant == "corrected" else 1.0,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        start=start,
    )


# --- SDE-DPM-Solver++(2M) -----------------------------------------------------------------------


@solver_value
class DPMSolverPP2MSDE(GaussianSolver):
    """SDE-DPM-Solver++(2M); build it with `dpmpp_2m_sde`."""

    eta: float = 1.0
    solver_type: str = "dpmsolver"
    lower_order_final: bool = True
    euler_at_final: bool = False

    def init(self, x, timesteps):
        return _multistep_init(2, x, timesteps)

    def transition(self, state, pred, t, t_next, schedule):
        sched, x = schedule, state.x
        lam_s, lam_t = _lam(sched, t), _lam(sched, t_next)
        lams = push(state.lams, lam_s)
        k = step_order(2, state.i, state.n, into_zero=sched.sigma(t_next) == 0,
                       lower_order_final=self.lower_order_final, below=LOWER_ORDER_FINAL_BELOW,
                       euler_at_final=self.euler_at_final)  # fmt: skip
        h = lam_t - lam_s
        eta_h = self.eta * h if self.eta > 0 else jnp.zeros_like(h)  # not 0 * inf into sigma = 0
        g = -jnp.expm1(-h - eta_h)
        d = (pred.x0 - read(state.models, 0)) * (h / (lams[0] - lams[1]))
        # The weight of D = h x0' + O(h^2): 1 - g/((1 + eta) h) integrates x0's linear term exactly
        # (k-diffusion's and diffusers' "heun"); g/2 agrees with it to first order in h ("midpoint").
        g_d = 0.5 * g if self.solver_type == "dpmsolver" else 1.0 - g / (h + eta_h)
        alpha_t, sigma_t = sched.alpha(t_next), sched.sigma(t_next)
        mean = sigma_t / sched.sigma(t) * jnp.exp(-eta_h) * x + alpha_t * g * pred.x0
        mean = mean + jnp.where(k == 2, alpha_t * g_d * d, 0.0)
        std = sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * eta_h))
        # from alpha = 0 (h = inf) the limit of this step: the ancestral step for eta > 0, DDIM's for eta = 0
        at_noise = ddim_step(sched, pred, t, t_next, eta=1.0 if self.eta > 0 else 0.0)
        mean = where_pure_noise(sched, t, at_noise.mean, mean)
        return Gaussian(mean, where_pure_noise(sched, t, at_noise.std, std * jnp.ones_like(mean)))

    def advance(self, state, x_next, pred, t, t_next, schedule):
        del t_next
        lams = push(state.lams, _lam(schedule, t))
        new = MultistepState(x_next.astype(state.x.dtype), state.i + 1, state.n, record(state.models, pred.x0), lams)
        return _restart(schedule, t, state, new)

    @property
    def stochastic(self):
        return self.eta > 0

    @property
    def order(self):
        return global_order(2, warm_up_orders(2, "lower_order") + ([1] if self.euler_at_final else []))

    def gather(self, state, ancestors):
        return _gather_multistep(state, ancestors)


def dpmpp_2m_sde(
    eta: float = 1.0, *, solver_type="dpmsolver", lower_order_final=True, euler_at_final=False
) -> DPMSolverPP2MSDE:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models"; diffusers' "sde-dpmsolver++", k-diffusion's `sample_dpmpp_2m_sde`).

    With h = lambda_t - lambda_s, g = 1 - exp(-(1 + eta) h), D = (x0_0 - x0_1)/r0 and z ~ N(0, I),

        x_t = (sigma_t/sigma_s) e^{-eta h} x + alpha_t g x0_0 + alpha_t g' D + sigma_t sqrt(1 - e^{-2 eta h}) z,

    g' = g/2 ("dpmsolver", k-diffusion's "midpoint") or 1 - g/((1 + eta) h) ("taylor", k-diffusion's
    and diffusers' "heun"). eta = 1 is the paper's SDE solver; eta = 0 is DPM-Solver++(2M). One
    Gaussian transition per step (a `GaussianSolver`: TDS and SMCDiff use it as a proposal); weak
    order 2 (global order 2 with eta = 0).

    Args:
      eta: the fraction of the step that is stochastic (>= 0; 0 is deterministic).
      solver_type: "dpmsolver" (midpoint) or "taylor" (see above).
      lower_order_final: first-order last step on grids of fewer than 15 steps (diffusers' rule).
      euler_at_final: first-order last step on every grid.

    Returns:
      A `GaussianSolver` value (`DPMSolverPP2MSDE`), stochastic when eta > 0.
    """
    eta = _checks.in_range("eta", eta, 0.0, float("inf"))
    _checks.one_of("solver_type", solver_type, SOLVER_TYPES)
    check_bool("lower_order_final", lower_order_final)
    check_bool("euler_at_final", euler_at_final)
    return DPMSolverPP2MSDE(eta, solver_type, lower_order_final, euler_at_final)
