r"""The DDPM variational bound (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021's `calc_bpd_loop`).

For a discrete schedule with abar_1 > ... > abar_T (diffjax's `schedules.discrete`, model step i at
t = i/T), SNR_t = abar_t / (1 - abar_t), beta_t = 1 - abar_t / abar_{t-1} (abar_0 = 1) and the
reverse process with the fixed posterior variance beta~_t = beta_t (1 - abar_{t-1})/(1 - abar_t):

    -log p(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T     = KL(N(sqrt(abar_T) x_0, (1 - abar_T) I) || N(0, I))
            = 1/2 sum_d [abar_T x_0^2 + (1 - abar_T) - 1 - log(1 - abar_T)],
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) = 1/2 (SNR_{t-1} - SNR_t) ||x_0 - x0_hat(x_t, t)||^2,
    L_0     = -log p(x_0 | x_1).

(The KL of two Gaussians with the same variance beta~_t is ||mu~ - mu_theta||^2 / (2 beta~_t), and
mu~ - mu_theta = sqrt(abar_{t-1}) beta_t/(1 - abar_t) (x_0 - x0_hat), whose square over beta~_t is
SNR_{t-1} - SNR_t.) Each t in 1..T gets its own noise draw x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_t,
as improved-diffusion's `calc_bpd_loop` does (all T terms, none subsampled).

Decoders p(x_0 | x_1), with mean x0_hat(x_1) (the DDPM posterior mean at t = 1 is x0_hat):
- "discretized": improved-diffusion's `discretized_gaussian_log_likelihood`: bins of half-width
  (hi - lo)/(2 (num_bins - 1)) around the data grid, the outer bins extended to -inf / +inf, and the
  variance improved-diffusion uses at t = 1 (its posterior log-variance, clipped to beta~_2). The
  official code approximates Phi by 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); here Phi is exact
  (`jax.scipy.special.log_ndtr`), so the numbers differ from the official ones by that approximation.
  The total is then a discrete NLL bound: bits/dim with no offset (`bits_per_dim(..., num_bins=None)`).
- "gaussian": the continuous N(x0_hat(x_1), beta_1 I): a bound on a continuous density's NLL (add
  the dequantisation offset for bits/dim). The T-VLB test uses it: for N(0, 1) data, the linear
  schedule 1e-4..0.02, T = 1000 and the exact denoiser the bound is 1.883831 nats/dim.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffjax import _checks
from diffjax.arrays import as_pytree, noise_like
from diffjax.likelihood.bits import _range
from diffjax.schedules import Discrete

DECODERS = ("discretized", "gaussian")


class VLB(NamedTuple):
    """The terms of the DDPM bound per sample, in nats (summed over each sample's dimensions).

    prior: L_T, (B,).
    diffusion: L_{t-1} for t = 2..T, (B, T - 1).
    decoder: L_0, (B,).
    total: prior + sum of diffusion + decoder, (B,): an upper bound of -log p(x_0).
    nfe: denoiser evaluations per sample (T).
    """

    prior: jax.Array
    diffusion: jax.Array
    decoder: jax.Array
    total: jax.Array
    nfe: int


def _sum(a):
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def _log_prob_in_bin(lower, upper):
    """log(Phi(upper) - Phi(lower)) computed on the side of small tails (lower < upper)."""
    flip = lower > 0  # Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    hi = jnp.where(flip, -lower, upper)
    lo = jnp.where(flip, -upper, lower)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-300)))


def discretized_gaussian_log_likelihood(x, mean, std, *, num_bins, data_range):
    """log P(x) per entry of a Gaussian N(mean, std^2) discretised to the data grid (module docstring)."""
    low, high = data_range
    half = (high - low) / (2 * (num_bins - 1))
    upper = jnp.where(x > high - half, jnp.inf, (x + half - mean) / std)
    lower = jnp.where(x < low + half, -jnp.inf, (x - half - mean) / std)
    return _log_prob_in_bin(lower, upper)


def _abar(schedule, dtype):
    return jnp.asarray(schedule.alphas_cumprod, dtype)


@functools.partial(jax.jit, static_argnames=("decoder", "num_bins", "data_range"))
def _vlb(den, x0, key, *, decoder, num_bins, data_range):
    schedule = den.schedule
    abar = _abar(schedule, x0.dtype)  # abar_1..abar_T
    n = abar.shape[0]
    snr = abar / (1 - abar)
    prior = 0.5 * _sum(abar[-1] * x0**2 + (1 - abar[-1]) - 1 - jnp.log1p(-abar[-1]))

    def term(i):  # 0-based index i = t - 1
        eps = noise_like(jax.random.fold_in(key, i), x0)
        x_t = jnp.sqrt(abar[i]) * x0 + jnp.sqrt(1 - abar[i]) * eps
        x0_hat = den(x_t, (i + 1.0) / n).x0
        return _sum((x0 - x0_hat) ** 2), x0_hat

    def diffusion_term(_, i):
        sq, _ = term(i)
        return None, 0.5 * (snr[i - 1] - snr[i]) * sq

    _, diffusion = jax.lax.scan(diffusion_term, None, jnp.arange(1, n))
    _, x0_hat = term(0)
    beta1 = 1 - abar[0]
    if decoder == "gaussian":
        decoder_nll = 0.5 * _sum((x0 - x0_hat) ** 2 / beta1 + jnp.log(2 * jnp.pi * beta1))
    else:
        beta2 = 1 - abar[1] / abar[0]
        var = beta2 * (1 - abar[0]) / (1 - abar[1])  # improved-diffusion's clipped posterior variance at t = 1
        log_p = discretized_gaussian_log_likelihood(x0, x0_hat, jnp.sqrt(var), num_bins=num_bins, data_range=data_range)
        decoder_nll = -_sum(log_p)
    diffusion = diffusion.T
    return VLB(prior, diffusion, decoder_nll, prior + diffusion.sum(-1) + decoder_nll, n)


def ddpm_vlb(denoiser, x0, key, *, decoder: str = "discretized", num_bins: int = 256, data_range=(-1.0, 1.0)) -> VLB:
    """Ho et al.'s L_vlb of data x0 under a denoiser with a discrete schedule (module docstring).

    Args:
      denoiser: a `Denoiser` (or a value den(x, t) -> Prediction) whose `.schedule` is a
        `schedules.Discrete`; it is a jit argument (new parameters do not recompile).
      x0: data (B, *event), on the num_bins grid of data_range for the discretised decoder.
      key: a typed key; term t uses the noise `fold_in(key, t - 1)`.
      decoder: "discretized" (improved-diffusion's) or "gaussian" (continuous, variance beta_1).
      num_bins: the data's levels (discretised decoder), >= 2.
      data_range: (low, high) of the data (discretised decoder).

    Returns:
      A `VLB` of per-sample terms in nats; T denoiser evaluations per sample (a scan over t).

    Raises:
      ValueError: a schedule that is not discrete, a bad key, decoder, num_bins, data_range or x0.
    """
    schedule = getattr(denoiser, "schedule", None)
    if not isinstance(schedule, Discrete):
        raise ValueError(
            f"denoiser.schedule must be a schedules.discrete schedule for the DDPM bound, got {schedule!r}"
        )
    _checks.typed_key("key", key)
    _checks.one_of("decoder", decoder, DECODERS)
    num_bins = _checks.positive_int("num_bins", num_bins, 2)
    data_range = _range(data_range)
    if jnp.ndim(x0) < 2:
        raise ValueError(f"x0 must have shape (B, *event), got shape {jnp.shape(x0)}")
    if _checks.is_concrete(x0) and not bool(jnp.all(jnp.isfinite(x0))):
        raise ValueError("x0 must be finite, got non-finite entries")
    x0 = jnp.asarray(x0, jnp.result_type(x0, float))
    return _vlb(as_pytree(denoiser), x0, key, decoder=decoder, num_bins=num_bins, data_range=data_range)
