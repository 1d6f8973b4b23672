r"""What a network predicts, and exact conversions between the views.

With x = alpha x0 + sigma eps (alpha, sigma broadcast against x):

- eps and x0 determine each other: x0 = (x - sigma eps) / alpha;
- v = alpha eps - sigma x0 (Salimans & Ho 2022); for any (alpha, sigma)
  x0 = (alpha x - sigma v) / (alpha^2 + sigma^2), eps = (sigma x + alpha v) / (alpha^2 + sigma^2);
- score = grad log p_t(x) = -eps / sigma;
- flow velocity u = dx/dt = alpha' x0 + sigma' eps (for rectified flow u = eps - x0);
- EDM's F-target (Karras et al. 2022): in the VE view x_bar = x / alpha, s = sigma / alpha,
  x0 = c_skip(s) x_bar + c_out(s) F with c_skip = sd^2/(s^2+sd^2), c_out = s sd / sqrt(s^2+sd^2);
  the network sees c_in(s) x_bar, c_in = 1/sqrt(s^2+sd^2), and c_noise(s) = log(s)/4.

All functions are keyword-only and pure, in the style of `diffusion_distillation/dpm.py`.
"""

from typing import NamedTuple

import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v", "score", "velocity", "edm")


def x0_from_eps(*, x, eps, alpha, sigma):
    """x0 = (x - sigma eps) / alpha."""
    return (x - sigma * eps) / alpha


def eps_from_x0(*, x, x0, alpha, sigma):
    """eps = (x - alpha x0) / sigma."""
    return (x - alpha * x0) / sigma


def v_from_x0_eps(*, x0, eps, alpha, sigma):
    """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    return alpha * eps - sigma * x0


def x0_from_v(*, x, v, alpha, sigma):
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2), exact for any (alpha, sigma)."""
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def eps_from_v(*, x, v, alpha, sigma):
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2), exact for any (alpha, sigma)."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def score_from_eps(*, eps, sigma):
    """score = grad log p_t(x) = -eps / sigma."""
    return -eps / sigma


def eps_from_score(*, score, sigma):
    """eps = -sigma score."""
    return -sigma * score


def velocity_from_x0_eps(*, x0, eps, dalpha, dsigma):
    """The flow velocity dx/dt = alpha' x0 + sigma' eps."""
    return dalpha * x0 + dsigma * eps


def x0_from_velocity(*, x, velocity, alpha, sigma, dalpha, dsigma):
    """x0 from the flow velocity u: (sigma' x - sigma u) / (alpha sigma' - sigma alpha')."""
    return (dsigma * x - sigma * velocity) / (alpha * dsigma - sigma * dalpha)


def eps_from_velocity(*, x, velocity, alpha, sigma, dalpha, dsigma):
    """eps from the flow velocity u: (alpha u - alpha' x) / (alpha sigma' - sigma alpha')."""
    return (alpha * velocity - dalpha * x) / (alpha * dsigma - sigma * dalpha)


class EDMCoefficients(NamedTuple):
    """EDM's preconditioning at one noise level: x0 = c_skip x_bar + c_out F(c_in x_bar, c_noise)."""

    c_skip: object
    c_out: object
    c_in: object
    c_noise: object


def edm_coefficients(*, alpha, sigma, sigma_data):
    """EDM preconditioning at the VE noise level sigma / alpha (Karras et al. 2022, Table 1)."""
    s = sigma / alpha
    norm = s**2 + sigma_data**2
    return EDMCoefficients(
        c_skip=sigma_data**2 / norm,
        c_out=s * sigma_data / jnp.sqrt(norm),
        c_in=1.0 / jnp.sqrt(norm),
        c_noise=0.25 * jnp.log(s),
    )


def x0_from_edm(*, x, F, alpha, sigma, sigma_data):
    """x0 = c_skip x / alpha + c_out F from EDM's network output F (Karras et al. 2022, eq. 7)."""
    c = edm_coefficients(alpha=alpha, sigma=sigma, sigma_data=sigma_data)
    return c.c_skip * (x / alpha) + c.c_out * F


def edm_from_x0(*, x, x0, alpha, sigma, sigma_data):
    """EDM's training target F = (x0 - c_skip x / alpha) / c_out, the inverse of `x0_from_edm`."""
    c = edm_coefficients(alpha=alpha, sigma=sigma, sigma_data=sigma_data)
    return (x0 - c.c_skip * (x / alpha)) / c.c_out


def to_x0_eps(prediction, output, *, x, alpha, sigma, dalpha, dsigma, sigma_data):
    """(x0, eps) from a network `output` that predicts `prediction` (one of PREDICTIONS)."""
    if prediction == "eps":
        return x0_from_eps(x=x, eps=output, alpha=alpha, sigma=sigma), output
    if prediction == "score":
        eps = eps_from_score(score=output, sigma=sigma)
        return x0_from_eps(x=x, eps=eps, alpha=alpha, sigma=sigma), eps
    if prediction == "v":
        return x0_from_v(x=x, v=output, alpha=alpha, sigma=sigma), eps_from_v(x=x, v=output, alpha=alpha, sigma=sigma)
    if prediction == "velocity":
        coeffs = dict(x=x, velocity=output, alpha=alpha, sigma=sigma, dalpha=dalpha, dsigma=dsigma)
        return x0_from_velocity(**coeffs), eps_from_velocity(**coeffs)
    if prediction == "x0":
        x0 = output
    elif prediction == "edm":
        x0 = x0_from_edm(x=x, F=output, alpha=alpha, sigma=sigma, sigma_data=sigma_data)
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return x0, eps_from_x0(x=x, x0=x0, alpha=alpha, sigma=sigma)
