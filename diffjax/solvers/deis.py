"""DEIS multistep, "tAB" in log rho (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator"), as diffusers' DEISMultistepScheduler with algorithm_type="deis".

In x_bar = x/alpha and rho = sigma/alpha the PF-ODE is dx_bar/drho = eps. DEIS interpolates the
last p outputs eps_j (at rho_j) by a polynomial in log rho and integrates it exactly:

    x' = alpha' (x/alpha + rho sum_{j<p} c_j eps_j),   c_j = integral_0^{-h} l_j(v) e^v dv,

with v = log(rho'/rho) as variable, h = lambda' - lambda (lambda = log(alpha/sigma), half the
logSNR), l_j the Lagrange basis on the nodes v_j = lambda - lambda_j (v_0 = 0). Equivalently
sum_j c_j v_j^k = I_k = integral_0^{-h} v^k e^v dv = (-1)^(k+1) k! (1 - e^{-h} sum_{j<=k} h^j/j!),
taken from its Taylor series sum_m (-h)^(k+m+1) / (m! (k+m+1)) when h < 1, where the closed
form cancels (both branch-free scalars: an incomplete-gamma call is a loop on the GPU).
p = 1 is DDIM; p = 2, 3 are diffusers' `multistep_deis_{second,third}_order_update` (there
written with antiderivatives in absolute log rho). Warm-up uses orders 1, 2, ...; with
`lower_order_final` and fewer than 15 steps the last two steps use orders 1 and <= 2, as diffusers
(the rule `diffjax.solvers.multistep.step_order` shares with DPM-Solver and UniPC). A step that
lands on sigma = 0 is first order (diffusers' DEIS never goes there; its DPMSolverMultistep does
the same for final_sigmas_type="zero"). A step from alpha = 0 (pure noise) is DDIM's, after which
DEIS restarts: the next step is a first step of the remaining grid (`diffjax.solvers.base`).

The first-order first step caps the global order of DEIS-3 at 2; `start="singlestep"` takes the
first step with singlestep DPM-Solver++-3 (3 NFE), which records eps at the start time in the
history, and DEIS-3 is then third order on every grid.
"""

import math
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
    record,
    restart_at_pure_noise,
    solver_value,
    take,
    weighted_sum,
    where_pure_noise,
)
from diffjax.solvers.dpm_solver import singlestep
from diffjax.solvers.multistep import (
    LOWER_ORDER_FINAL_BELOW,
    START_ORDER,
    check_bool,
    check_start,
    global_order,
    step_order,
    warm_up_orders,
)


class DEISState(NamedTuple):
    """DEIS's state: the sample, the eps history of the previous order - 1 steps and their half-logSNRs."""

    x: jax.Array
    eps: History  # noise predictions of the previous order - 1 steps, values (size, N, ...)
    lam: jax.Array  # (order,) newest-first half-logSNRs, the current step's first (not per particle)
    i: jax.Array  # steps taken (not per particle)
    n: jax.Array  # steps in the grid (not per particle)


def moment_weights(nodes, moments, k):
    """w with sum_j w_j nodes_j^i = moments_i for i < k over the first k nodes; w_j = 0 for j >= k.

    w_j = sum_i [z^i] l_j(z) moments_i, l_j the Lagrange basis polynomial of node j on the first k
    nodes: the solution of the (transposed) Vandermonde system, in closed form and branch-free in k.
    """
    size = nodes.shape[0]
    weights = []
    for j in range(size):
        poly = [1.0] + [0.0] * (size - 1)  # coefficients of z^0, z^1, ... of l_j
        for m in range(size):
            if m != j:  # multiply by (z - z_m)/(z_j - z_m) if nodes j and m are used, else by 1
                used = (m < k) & (j < k)
                gap = jnp.where(used, nodes[j] - nodes[m], 1.0)
                a, b = jnp.where(used, -nodes[m] / gap, 1.0), jnp.where(used, 1.0 / gap, 0.0)
                poly = [a * poly[0]] + [a * poly[i] + b * poly[i - 1] for i in range(1, size)]
        weights.append(jnp.where(j < k, sum(c * moments[i] for i, c in enumerate(poly)), 0.0))
    return jnp.stack(weights) if weights else jnp.zeros_like(nodes)


def _moments(h, order):
    """I_k = integral_0^{-h} v^k e^v dv for k < order, accurate for small h and finite at h = inf."""
    small = jnp.where(h < 1.0, h, 0.5)
    large = jnp.where(jnp.isinf(h) | (h < 1.0), 1.0, h)
    moments = []
    for k in range(order):
        series = sum((-small) ** (k + m + 1) / float(math.factorial(m) * (k + m + 1)) for m in range(20))
        tail = jnp.exp(-large) * sum(large**j / float(math.factorial(j)) for j in range(k + 1))
        closed = (-1.0) ** (k + 1) * float(math.factorial(k)) * (1.0 - jnp.where(jnp.isinf(h), 0.0, tail))
        moments.append(jnp.where(h < 1.0, series, closed))
    return moments


@solver_value
class DEIS(Solver):
    """Multistep DEIS (tAB in log rho) of order `method_order`; build it with `deis`."""

    method_order: int = 3
    lower_order_final: bool = True
    start: str = "lower_order"

    def init(self, x, timesteps):
        lam = jnp.zeros((self.method_order,), jnp.result_type(timesteps, float))
        size = max(self.method_order - 1, 1)
        return DEISState(x, empty_history(size, x), lam, jnp.int32(0), jnp.int32(len(timesteps) - 1))

    def _restart(self, sched, t, state, new):
        """`new`, or where alpha(t) = 0 the state before the first step of the remaining grid."""
        eps = empty_history(state.eps.values.shape[0], new.x)
        fresh = DEISState(new.x, eps, jnp.zeros_like(state.lam), jnp.zeros_like(state.i), state.n - state.i - 1)
        return restart_at_pure_noise(sched, t, fresh, new)

    def step(self, state, key, t, t_next, denoise):
        del key
        order = self.method_order
        sched = denoise.schedule
        pred = denoise(state.x, t)
        lam = push(state.lam, 0.5 * sched.logsnr(t))
        p = step_order(order, state.i, state.n, into_zero=jnp.isinf(sched.logsnr(t_next)),
                       lower_order_final=self.lower_order_final, below=LOWER_ORDER_FINAL_BELOW)  # fmt: skip
        h = 0.5 * sched.logsnr(t_next) - lam[0]
        c = moment_weights(lam[0] - lam, _moments(h, order), p)
        alpha, alpha_next = sched.alpha(t), sched.alpha(t_next)
        eps_sum = c[0] * pred.eps + (weighted_sum(state.eps, c[1:]) if order > 1 else 0.0)
        x_next = alpha_next * (state.x / alpha + sched.sigma(t) / alpha * eps_sum)
        x_next = where_pure_noise(sched, t, ddim_step(sched, pred, t, t_next).mean, x_next)
        new = DEISState(x_next.astype(state.x.dtype), record(state.eps, pred.eps), lam, state.i + 1, state.n)
        return self._restart(sched, t, state, new), StepInfo(jnp.int32(1), pred.x0)

    def singlestep_start(self, state, key, t, t_next, denoise):
        """The first step as singlestep DPM-Solver++-3 (3 NFE); records eps at t in the history."""
        del key
        sched = denoise.schedule
        x_next, pred = singlestep(START_ORDER, "dpmsolver++", "dpmsolver", "logsnr", state.x, t, t_next, denoise)
        lam = push(state.lam, 0.5 * sched.logsnr(t))
        new = DEISState(x_next.astype(state.x.dtype), record(state.eps, pred.eps), lam, state.i + 1, state.n)
        return self._restart(sched, t, state, new), StepInfo(jnp.int32(START_ORDER), pred.x0)

    @property
    def head(self):
        return (self.singlestep_start,) if self.start == "singlestep" else ()

    @property
    def order(self):
        return global_order(self.method_order, warm_up_orders(self.method_order, self.start))

    def gather(self, state, ancestors):
        return state._replace(x=take(state.x, ancestors), eps=gather_history(state.eps, ancestors))


def deis(order: int = 3, lower_order_final: bool = True, *, start: str = "lower_order") -> DEIS:
    """DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"),
    multistep "tAB" in log rho, as diffusers' DEISMultistepScheduler (algorithm_type="deis").

    Each step interpolates the last `order` noise predictions by a polynomial in log rho
    (rho = sigma/alpha) and integrates it exactly; one NFE per step. Orders warm up 1, 2, ...
    Declared order: min(order, 2) with the lower-order start (its first-order first step dominates
    once errors are small; on grids that start at sigma ~ 80 only at thousands of steps), `order`
    with `start="singlestep"`. A step from alpha = 0 is DDIM's, and the next a first step.

    Args:
      order: 1 (DDIM), 2 or 3.
      lower_order_final: on grids of fewer than 15 steps the last step is first order and the one
        before at most second (diffusers' rule).
      start: "lower_order" (diffusers': the first step is first order) or "singlestep" (the first
        step is singlestep DPM-Solver++-3, 3 NFE, so DEIS-3 is third order on every grid).

    Returns:
      A `Solver` value (`DEIS`).
    """
    order = _checks.positive_int("order", order)
    _checks.one_of("order", order, (1, 2, 3))
    check_bool("lower_order_final", lower_order_final)
    check_start(start)
    return DEIS(order, lower_order_final, start)
