r"""Gaussian transitions of the forward process x_t = alpha(t) x0 + sigma(t) eps, in one place.

For s < t write g = 1 - SNR(t) / SNR(s) (computed as -expm1(logsnr(t) - logsnr(s)), exact also
at sigma(s) = 0). The forward process has

    q(x_t | x_s)     = N(alpha_t / alpha_s x_s, sigma_t^2 g I)
    q(x_s | x_t, x0) = N(alpha_s x0 + sigma_s sqrt(1 - g) eps, sigma_s^2 g I),  eps = (x_t - alpha_t x0) / sigma_t,

and DDIM's family (Song, Meng & Ermon 2021) keeps the marginals with any eta in [0, 1]:

    x_s = alpha_s x0 + sigma_s sqrt(1 - eta^2 g) eps + eta sigma_s sqrt(g) z.

eta = 1 is the posterior itself (DDPM's beta-tilde step), eta = 0 the deterministic DDIM step.
DDIM, DDPM, TDS's and SMCDiff's kernels, noise search and the Gaussian-mixture oracle all use
`posterior`; path search and SMCDiff's observation chain use `forward`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.arrays import noise_like


class Gaussian(NamedTuple):
    """A diagonal Gaussian over x: mean (N, *event), std broadcastable to it (0 = deterministic)."""

    mean: jax.Array
    std: jax.Array

    def sample(self, key):
        """mean + std z with z = `noise_like(key, mean)`, in the mean's dtype."""
        return (self.mean + self.std * noise_like(key, self.mean)).astype(self.mean.dtype)


def snr_gap(schedule, t, s):
    """g = 1 - SNR(t) / SNR(s) for s < t, computed without cancellation."""
    return -jnp.expm1(schedule.logsnr(t) - schedule.logsnr(s))


class PosteriorCoefficients(NamedTuple):
    """x_s = x0_coef x0 + eps_coef eps + std z (all broadcastable scalars)."""

    x0_coef: jax.Array
    eps_coef: jax.Array
    std: jax.Array


def posterior_coefficients(schedule, t, s, eta=1.0) -> PosteriorCoefficients:
    """The coefficients of DDIM's eta-family of steps from t to s (eta = 1: q(x_s | x_t, x0))."""
    gap = snr_gap(schedule, t, s)
    sigma_s = schedule.sigma(s)
    eps_coef = sigma_s * jnp.sqrt(1.0 - eta**2 * gap)
    return PosteriorCoefficients(schedule.alpha(s), eps_coef, eta * sigma_s * jnp.sqrt(gap))


def posterior(schedule, x0, eps, t, s, eta=1.0) -> Gaussian:
    """q(x_s | x_t, x0) written with the prediction (x0, eps) at x_t, generalised by DDIM's eta
    (module docstring). The std is broadcast to x0's shape."""
    c = posterior_coefficients(schedule, t, s, eta)
    return Gaussian(c.x0_coef * x0 + c.eps_coef * eps, c.std * jnp.ones_like(x0))


def forward(schedule, x_s, s, t) -> Gaussian:
    """q(x_t | x_s) for t > s: N(alpha_t / alpha_s x_s, sigma_t^2 (1 - SNR_t / SNR_s) I)."""
    return Gaussian(schedule.alpha(t) / schedule.alpha(s) * x_s,
                    schedule.sigma(t) * jnp.sqrt(snr_gap(schedule, t, s)) * jnp.ones_like(x_s))  # fmt: skip
