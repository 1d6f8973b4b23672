"""Ancestral samplers: DDPM (Ho et al. 2020) and Euler-ancestral (k-diffusion).

DDPM draws x_s ~ q(x_s | x_t, x0 = x0_hat) with the posterior mean of the forward process and a
chosen variance; with 1 - SNR_t/SNR_s written `gap`,

    x_s = alpha_s x0 + sigma_s sqrt(1 - gap) eps + std z,
    std^2 = sigma_s^2 gap   ("beta_tilde", the posterior variance: DDIM with eta = 1)
          = sigma_t^2 gap   ("beta", the forward step's variance; no noise into sigma_s = 0).
"""

import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import Solver, State, StepInfo, noise_like, single_step_init

VARIANCES = ("beta_tilde", "beta")


def ddpm(variance: str = "beta_tilde") -> Solver:
    _checks.one_of("variance", variance, VARIANCES)

    def step(state, key, t, t_next, denoise):
        sched, x = denoise.schedule, state.x
        pred = denoise(x, t)
        sigma_next = sched.sigma(t_next)
        gap = -jnp.expm1(sched.logsnr(t) - sched.logsnr(t_next))
        mean = sched.alpha(t_next) * pred.x0 + sigma_next * jnp.sqrt(1.0 - gap) * pred.eps
        std_scale = sigma_next if variance == "beta_tilde" else jnp.where(sigma_next > 0, sched.sigma(t), 0.0)
        x_next = mean + std_scale * jnp.sqrt(gap) * noise_like(key, x)
        return State(x_next.astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    return Solver(single_step_init, step)


def euler_ancestral(eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    """k-diffusion's `sample_euler_ancestral` in EDM's variables x/alpha, s = sigma/alpha:

    s_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)),  s_down = sqrt(s'^2 - s_up^2),
    x_bar' = x_bar + (s_down - s) (x_bar - x0) / s + s_noise s_up z.
    """
    eta = _checks.in_range("eta", eta, 0.0, float("inf"))
    s_noise = _checks.in_range("s_noise", s_noise, 0.0, float("inf"))

    def step(state, key, t, t_next, denoise):
        sched, x = denoise.schedule, state.x
        pred = denoise(x, t)
        alpha, alpha_next = sched.alpha(t), sched.alpha(t_next)
        s, s_next = sched.sigma(t) / alpha, sched.sigma(t_next) / alpha_next
        s_up = jnp.minimum(s_next, eta * jnp.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        s_down = jnp.sqrt(jnp.maximum(s_next**2 - s_up**2, 0.0))
        x_bar = x / alpha
        x_bar = x_bar + (s_down - s) * (x_bar - pred.x0) / s
        x_bar = x_bar + s_noise * s_up * noise_like(key, x)
        return State((alpha_next * x_bar).astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    return Solver(single_step_init, step)
