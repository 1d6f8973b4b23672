"""Euler on the probability-flow ODE in EDM's variables (Karras et al. 2022; k-diffusion's `sample_euler`).

With x_bar = x / alpha and s = sigma / alpha the PF-ODE is dx_bar/ds = (x_bar - D(x_bar; s)) / s
for every schedule, and one Euler step is

    x_bar' = x_bar + (s' - s) (x_bar - x0) / s,    x' = alpha' x_bar'.

Algebraically this is DDIM(eta=0); it needs alpha > 0 where a step starts.
"""

import jax.numpy as jnp

from diffjax.solvers.base import Solver, State, StepInfo, single_step_init


def euler() -> Solver:
    def step(state, key, t, t_next, denoise):
        del key
        sched = denoise.schedule
        x = state.x
        pred = denoise(x, t)
        alpha, alpha_next = sched.alpha(t), sched.alpha(t_next)
        s, s_next = sched.sigma(t) / alpha, sched.sigma(t_next) / alpha_next
        x_bar = x / alpha
        d = (x_bar - pred.x0) / s
        x_next = alpha_next * (x_bar + (s_next - s) * d)
        return State(x_next.astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    return Solver(single_step_init, step)
