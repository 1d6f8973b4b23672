"""Ancestral samplers: DDPM (Ho et al. 2020) and Euler-ancestral (k-diffusion).

DDPM draws x_s ~ q(x_s | x_t, x0 = x0_hat) with the posterior mean of the forward process and a
chosen variance; with 1 - SNR_t/SNR_s written `gap`,

    x_s = alpha_s x0 + sigma_s sqrt(1 - gap) eps + std z,
    std^2 = sigma_s^2 gap   ("beta_tilde", the posterior variance: DDIM with eta = 1)
          = sigma_t^2 gap   ("beta", the forward step's variance; no noise into sigma_s = 0).
"""

import jax.numpy as jnp

from diffjax import _checks, gaussian
from diffjax.gaussian import Gaussian
from diffjax.solvers.base import GaussianSolver, ddim_step, solver_value, where_pure_noise

VARIANCES = ("beta_tilde", "beta")


@solver_value
class DDPM(GaussianSolver):
    """Ancestral DDPM sampling; build it with `ddpm`."""

    variance: str = "beta_tilde"

    def transition(self, state, pred, t, t_next, schedule):
        del state
        law = gaussian.posterior(schedule, pred.x0, pred.eps, t, t_next)
        if self.variance == "beta_tilde":
            return law
        sigma_next = schedule.sigma(t_next)
        scale = jnp.where(sigma_next > 0, schedule.sigma(t), 0.0)
        return Gaussian(law.mean, scale * jnp.sqrt(gaussian.snr_gap(schedule, t, t_next)) * jnp.ones_like(law.mean))

    @property
    def stochastic(self):
        return True

    @property
    def order(self):
        return 1.0


def ddpm(variance: str = "beta_tilde") -> DDPM:
    """Ancestral sampling of DDPM (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models").

    Each step draws x_s ~ N(posterior mean of q(x_s | x_t, x0 = x0-hat), std^2) for any schedule;
    weak order 1.

    Args:
      variance: "beta_tilde" (std^2 = sigma_s^2 g, the posterior variance; equal to DDIM with
        eta = 1) or "beta" (std^2 = sigma_t^2 g, the forward step's variance, Ho et al.'s other
        choice; no noise into sigma_s = 0). g = 1 - SNR_t / SNR_s.

    Returns:
      A `GaussianSolver` value.
    """
    _checks.one_of("variance", variance, VARIANCES)
    return DDPM(variance)


@solver_value
class EulerAncestral(GaussianSolver):
    """k-diffusion's `sample_euler_ancestral`; build it with `euler_ancestral`."""

    eta: float = 1.0
    s_noise: float = 1.0

    def transition(self, state, pred, t, t_next, schedule):
        x = state.x
        alpha, alpha_next = schedule.alpha(t), schedule.alpha(t_next)
        s, s_next = schedule.sigma(t) / alpha, schedule.sigma(t_next) / alpha_next
        s_up = jnp.minimum(s_next, self.eta * jnp.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        s_down = jnp.sqrt(jnp.maximum(s_next**2 - s_up**2, 0.0))
        x_bar = x / alpha
        x_bar = x_bar + (s_down - s) * (x_bar - pred.x0) / s
        mean, std = alpha_next * x_bar, alpha_next * self.s_noise * s_up * jnp.ones_like(x)
        # From alpha = 0 (s = inf): the limit s_up = min(eta, 1) s', s_down = sqrt(1 - min(eta, 1)^2) s',
        # which is DDIM(min(eta, 1)) with its noise scaled by s_noise.
        at_noise = ddim_step(schedule, pred, t, t_next, eta=min(self.eta, 1.0))
        return Gaussian(where_pure_noise(schedule, t, at_noise.mean, mean),
                        where_pure_noise(schedule, t, self.s_noise * at_noise.std, std))  # fmt: skip

    @property
    def stochastic(self):
        return self.eta > 0 and self.s_noise > 0

    @property
    def order(self):
        return 1.0


def euler_ancestral(eta: float = 1.0, s_noise: float = 1.0) -> EulerAncestral:
    """Euler-ancestral sampling (k-diffusion's `sample_euler_ancestral`, Karras et al. 2022's
    variables), for any schedule: with x_bar = x/alpha and s = sigma/alpha,

        s_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)),  s_down = sqrt(s'^2 - s_up^2),
        x_bar' = x_bar + (s_down - s) (x_bar - x0) / s + s_noise s_up z.

    Weak order 1; with eta = 1 it is DDPM posterior sampling. A step from alpha = 0 (s = inf) is the
    limit of this one, DDIM(min(eta, 1)) with its noise scaled by s_noise.

    Args:
      eta: the fraction of the step's variance that is fresh noise (>= 0; 0 is Euler).
      s_noise: scale of the added noise (>= 0; 1 keeps the marginals).

    Returns:
      A `GaussianSolver` value.
    """
    eta = _checks.in_range("eta", eta, 0.0, float("inf"))
    s_noise = _checks.in_range("s_noise", s_noise, 0.0, float("inf"))
    return EulerAncestral(eta, s_noise)
