"""DDIM (Song, Meng & Ermon 2021) for any schedule, with its noise drawn from the step's key.

    x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z,   z ~ N(0, I),
    c  = eta sigma' sqrt(1 - SNR(t)/SNR(t'))

eta = 0 is the deterministic sampler (the exponential-integrator / Euler step of the probability
flow ODE); eta = 1 draws from the DDPM posterior q(x_t' | x_t, x0) with variance beta-tilde.
"""

import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import Solver, State, StepInfo, noise_like, single_step_init


def ddim(eta: float = 0.0) -> Solver:
    eta = _checks.in_range("eta", eta, 0.0, 1.0)

    def step(state, key, t, t_next, denoise):
        sched = denoise.schedule
        x = state.x
        pred = denoise(x, t)
        alpha_next, sigma_next = sched.alpha(t_next), sched.sigma(t_next)
        # 1 - SNR(t)/SNR(t') computed as -expm1(logsnr(t) - logsnr(t')), exact also at sigma' = 0.
        gap = -jnp.expm1(sched.logsnr(t) - sched.logsnr(t_next))
        x_next = alpha_next * pred.x0 + sigma_next * jnp.sqrt(1.0 - eta**2 * gap) * pred.eps
        if eta > 0:
            noise = noise_like(key, x)
            x_next = x_next + eta * sigma_next * jnp.sqrt(gap) * noise
        return State(x_next.astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    return Solver(single_step_init, step)
