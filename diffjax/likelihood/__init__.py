"""Likelihoods of diffusion models: exact PF-ODE log-densities, the DDPM variational bound, and
bits per dimension.

    import diffjax.likelihood as lik

    res = lik.log_likelihood(den, x)                                   # exact divergence, Tsit5
    res = lik.log_likelihood(den, x, key=key, divergence="hutchinson", num_probes=4)
    res.log_p, res.std_err, res.nfe, res.num_accepted_steps            # (B,), (B,), steps
    x_deq = lik.dequantize(key, x, num_bins=256)                       # data on the 256-level grid
    bpd = lik.bits_per_dim(lik.log_likelihood(den, x_deq).log_p, x.shape[1:])   # + log2(1/bin) offset
    elbo = lik.ddpm_vlb(den, x, key)                                   # a `schedules.discrete` model
    elbo.total, lik.bits_per_dim(-elbo.total, x.shape[1:], num_bins=None)

`divergence` holds the trace estimators (`exact`, `hutchinson`, `hutch_plus_plus`, `probes`) for
any batched vector field; `pf_ode` the ODE solve (diffrax) with the denoiser's velocity view;
`bits` the dequantisation and the bits/dim offset; `vlb` Ho et al.'s L_vlb.
"""

from diffjax.likelihood import bits, divergence, pf_ode, vlb
from diffjax.likelihood.bits import bits_offset, bits_per_dim, dequantize
from diffjax.likelihood.divergence import exact, hutch_plus_plus, hutchinson, hutchinson_terms, probes
from diffjax.likelihood.pf_ode import GaussianPrior, LogLikelihood, default_times, gaussian_prior, log_likelihood
from diffjax.likelihood.vlb import VLB, ddpm_vlb

log_prob = log_likelihood  # the name of the design's API sketch

__all__ = [
    "VLB",
    "GaussianPrior",
    "LogLikelihood",
    "bits",
    "bits_offset",
    "bits_per_dim",
    "ddpm_vlb",
    "default_times",
    "dequantize",
    "divergence",
    "exact",
    "gaussian_prior",
    "hutch_plus_plus",
    "hutchinson",
    "hutchinson_terms",
    "log_likelihood",
    "log_prob",
    "pf_ode",
    "probes",
    "vlb",
]
