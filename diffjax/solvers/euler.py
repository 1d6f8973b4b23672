"""Euler on the probability-flow ODE in EDM's variables (Karras et al. 2022; k-diffusion's `sample_euler`).

With x_bar = x / alpha and s = sigma / alpha the PF-ODE is dx_bar/ds = (x_bar - D(x_bar; s)) / s
for every schedule, and one Euler step is

    x_bar' = x_bar + (s' - s) (x_bar - x0) / s,    x' = alpha' x_bar'.

Algebraically this is DDIM(eta=0). A step from alpha = 0 (pure noise) is DDIM's, its limit
(`diffjax.solvers.base`).
"""

import jax.numpy as jnp

from diffjax.solvers.base import Solver, State, StepInfo, ddim_step, solver_value, where_pure_noise


@solver_value
class Euler(Solver):
    """Euler's method on the PF-ODE; build it with `euler`."""

    def step(self, state, key, t, t_next, denoise):
        del key
        sched = denoise.schedule
        x = state.x
        pred = denoise(x, t)
        alpha, alpha_next = sched.alpha(t), sched.alpha(t_next)
        s, s_next = sched.sigma(t) / alpha, sched.sigma(t_next) / alpha_next
        x_bar = x / alpha
        d = (x_bar - pred.x0) / s
        x_next = alpha_next * (x_bar + (s_next - s) * d)
        x_next = where_pure_noise(sched, t, ddim_step(sched, pred, t, t_next).mean, x_next)
        return State(x_next.astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    @property
    def order(self):
        return 1.0


def euler() -> Euler:
    """Euler's method on the probability-flow ODE in EDM's variables (Karras et al. 2022, "Elucidating
    the Design Space of Diffusion-Based Generative Models"; k-diffusion's `sample_euler`):
    x_bar' = x_bar + (s' - s)(x_bar - x0)/s with x_bar = x/alpha, s = sigma/alpha. First order;
    algebraically DDIM(eta=0). A step from alpha = 0 is DDIM's, the limit of Euler's.

    Returns:
      A `Solver` value.
    """
    return Euler()
