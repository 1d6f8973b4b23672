r"""Exact log-likelihoods from the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", App. D.2; Chen et al. 2018 / FFJORD's instantaneous change of variables).

The marginals p_t of x_t = alpha(t) x_0 + sigma(t) eps are transported by the deterministic flow

    dx/dt = u(x, t) = alpha'(t) x0_hat + sigma'(t) eps_hat        (`Prediction.velocity`),

and along any solution the density obeys d log p_t(x_t)/dt = -div u(x_t, t). Integrating from the
data side t0 to the noise side t1 (t grows from data to noise, `diffjax.schedules`):

    log p_{t0}(x) = log p_{t1}(x_{t1}) + int_{t0}^{t1} div u(x_t, t) dt,   x_{t0} = x.

The state (x, integral) is solved by one diffrax `diffeqsolve` for the whole batch (an adaptive
Runge-Kutta method with a PID controller on the batch's RMS error; every sample shares the step
sizes). The divergence is exact (D Jacobian-vector products per evaluation) or estimated with probes
drawn once and kept fixed over the solve, as score_sde's `likelihood.py` does; with Hutchinson the
path x_t does not depend on the probes, so the integral is linear in the estimator and the solve
carries one integral per probe: their mean is the estimate and their spread its standard error.

Choices made here (and where they come from):
- t0 defaults to the schedule's t_min. Where sigma(t_min) = 0 (rectified flow, a schedule starting
  at the data) the eps view is singular, so t0 is nudged to the time of noise level
  sigma/alpha = 1e-3 (`schedule.t_from_ve_sigma(1e-3)`; score_sde's VP sampling_eps = 1e-5 gives
  sigma ~ 1e-3 too). The result is then log p_{t0}, a slightly smoothed density.
- t1 defaults to t_max; the prior term log p_{t1} defaults to `gaussian_prior(schedule, t1)`:
  N(0, (alpha_{t1}^2 v + sigma_{t1}^2) I) with data variance v = 1 (unit-scaled data), which is
  p_{t1} exactly for N(0, I) data and the usual N(0, I) prior of VP schedules at alpha_T ~ 0; pass the
  exact log p_{t1} when it is known (the tests pass the mixture's).
- score_sde's defaults are RK45 with rtol = atol = 1e-5 and Rademacher probes; here Tsit5
  (diffrax's recommended 5(4) pair), Dopri5 (RK45's tableau) or Dopri8.
- nfe counts the denoiser evaluations the FSAL tableau makes: (stages - 1) per step (accepted or
  rejected), plus three at the start (the first stage and diffrax's initial step selection).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, as_pytree
from diffjax.likelihood import divergence as div_lib

DIVERGENCES = ("exact", "hutchinson", "hutch++")
METHODS = {"tsit5": "Tsit5", "dopri5": "Dopri5", "dopri8": "Dopri8"}  # names of diffrax solvers
T0_VE_SIGMA = 1e-3  # where sigma(t_min) = 0, t0 is the time of this noise level sigma / alpha


class LogLikelihood(NamedTuple):
    """The result of `log_likelihood`.

    log_p: log p_{t0}(x), (B,), in nats.
    prior_log_p: log p_{t1}(x_{t1}), (B,).
    delta_log_p: the integral of div u over [t0, t1], (B,) (log_p = prior_log_p + delta_log_p).
    std_err: the standard error of log_p over the probes, (B,): 0 for the exact divergence, the
      spread of the K per-probe integrals / sqrt(K) for Hutchinson (nan for K = 1 and for Hutch++,
      whose probes are not exchangeable).
    x_t1: the ODE's end point, the latent of x, (B, *event).
    nfe: denoiser evaluations (module docstring).
    num_accepted_steps, num_rejected_steps: diffrax's step counts.
    """

    log_p: jax.Array
    prior_log_p: jax.Array
    delta_log_p: jax.Array
    std_err: jax.Array
    x_t1: jax.Array
    nfe: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array


@struct.dataclass(eq=False)
class GaussianPrior(Value):
    """log N(x; 0, variance I) summed over each sample's event, a value (the variance is a leaf)."""

    variance: jax.Array

    def __call__(self, x):
        var = jnp.asarray(self.variance, x.dtype)
        z = x.reshape(x.shape[0], -1)
        return -0.5 * jnp.sum(z**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)


def gaussian_prior(schedule, t, data_variance: float = 1.0) -> GaussianPrior:
    """The Gaussian N(0, (alpha_t^2 v + sigma_t^2) I) that p_t is for N(0, v I) data.

    Args:
      schedule: a diffjax schedule.
      t: the time (the ODE's noise end t1).
      data_variance: v, the per-entry variance of the data, > 0.

    Returns:
      A `GaussianPrior`, callable as prior(x) -> (B,).

    Raises:
      ValueError: data_variance not positive.
    """
    v = _checks.positive("data_variance", data_variance)
    return GaussianPrior(jnp.asarray(schedule.alpha(t) ** 2 * v + schedule.sigma(t) ** 2))


def default_times(schedule, t0=None, t1=None):
    """(t0, t1) as `log_likelihood` uses them: t_min nudged where sigma(t_min) = 0, and t_max.

    Args:
      schedule: a diffjax schedule.
      t0: the data end, or None for the default.
      t1: the noise end, or None for t_max.

    Returns:
      (t0, t1) as floats.

    Raises:
      ValueError: non-finite times or t0 >= t1.
    """
    if t0 is None:
        t0 = float(schedule.t_min)
        if not float(schedule.sigma(t0)) > 0:
            t0 = float(schedule.t_from_ve_sigma(T0_VE_SIGMA))
    t0 = _checks.finite("t0", t0)
    t1 = _checks.finite("t1", float(schedule.t_max) if t1 is None else t1)
    _checks.less("t0", t0, "t1", t1)
    return t0, t1


def _velocity(den, t):
    return lambda x: den(x, t).velocity


def _vector_field(estimator, t, y, args):
    den, z = args
    x, _ = y
    f = _velocity(den, t)
    if estimator == "exact":
        u, d = div_lib.exact(f, x)
        d = d[:, None]
    elif estimator == "hutchinson":
        u, d = div_lib.hutchinson_terms(f, x, z)
        d = d.T
    else:
        u, d = div_lib.hutch_plus_plus(f, x, z)
        d = d[:, None]
    return u, d


@functools.partial(jax.jit, static_argnames=("estimator", "method", "adjoint", "max_steps", "num_integrals"))
def _solve(den, prior, x, z, t0, t1, rtol, atol, *, estimator, method, adjoint, max_steps, num_integrals):
    import diffrax  # imported here (0.8 s): `import diffjax` stays fast

    y0 = (x, jnp.zeros((x.shape[0], num_integrals), x.dtype))
    solver = getattr(diffrax, METHODS[method])()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(functools.partial(_vector_field, estimator)),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        args=(den, z),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint else diffrax.ForwardMode(),
        max_steps=max_steps,
    )
    x_t1, integrals = sol.ys[0][-1], sol.ys[1][-1]
    prior_log_p = prior(x_t1)
    delta = jnp.mean(integrals, axis=-1)
    if estimator == "exact":
        std_err = jnp.zeros_like(delta)
    elif estimator == "hutchinson" and num_integrals > 1:
        std_err = jnp.std(integrals, axis=-1, ddof=1) / np.sqrt(num_integrals)
    else:
        std_err = jnp.full_like(delta, jnp.nan)
    stages = len(solver.tableau.c) + 1
    steps = sol.stats["num_steps"]
    nfe = (stages - 1) * steps + 3
    return LogLikelihood(prior_log_p + delta, prior_log_p, delta, std_err, x_t1, nfe,
                         sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])  # fmt: skip


def log_likelihood(
    denoiser,
    x,
    *,
    key=None,
    divergence: str = "exact",
    num_probes: int = 1,
    probe: str = "rademacher",
    method: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float | None = None,
    t1: float | None = None,
    prior: Any = None,
    adjoint: bool = False,
    max_steps: int = 4096,
) -> LogLikelihood:
    """log p_{t0}(x) of a denoiser's probability-flow ODE, per sample (module docstring).

    Args:
      denoiser: a `Denoiser` (or any value callable as den(x, t) -> Prediction with a `.schedule`);
        it is a jit argument, so new parameters do not recompile.
      x: data (B, *event).
      key: a typed key for the probes; required unless divergence="exact".
      divergence: "exact" (D JVPs per evaluation), "hutchinson" or "hutch++" (the adaptive, QR
        variant: the non-adaptive one's pseudo-inverse of a random sketch S^T J R jumps where it
        passes through singular matrices, which an adaptive ODE solver cannot step over).
      num_probes: probes per sample for the stochastic estimators (the matvec budget m for Hutch++,
        >= 3), fixed over the whole solve.
      probe: "rademacher" or "gaussian".
      method: "tsit5", "dopri5" or "dopri8".
      rtol: the PID controller's relative tolerance, finite and > 0.
      atol: its absolute tolerance, finite and > 0.
      t0: the data end of the ODE (default: `default_times`).
      t1: the noise end (default: the schedule's t_max).
      prior: a callable x_{t1} -> log p_{t1}(x_{t1}) of shape (B,) (a value or a function), default
        `gaussian_prior(schedule, t1)`.
      adjoint: True to differentiate (reverse mode) through the solve with
        `diffrax.RecursiveCheckpointAdjoint`; False solves with `diffrax.ForwardMode` (no stored
        trajectory; forward-mode derivatives only).
      max_steps: the most solver steps; a solve that needs more raises an error at run time.

    Returns:
      A `LogLikelihood`.

    Raises:
      ValueError: a bad argument (named), before anything is traced.
    """
    _checks.one_of("divergence", divergence, DIVERGENCES)
    _checks.one_of("method", method, METHODS)
    _checks.one_of("probe", probe, div_lib.DISTRIBUTIONS)
    rtol, atol = _checks.positive("rtol", rtol), _checks.positive("atol", atol)
    num_probes = _checks.positive_int("num_probes", num_probes, 3 if divergence == "hutch++" else 1)
    max_steps = _checks.positive_int("max_steps", max_steps)
    if not isinstance(adjoint, bool):
        raise ValueError(f"adjoint must be True or False, got {adjoint!r}")
    schedule = getattr(denoiser, "schedule", None)
    if not callable(denoiser) or schedule is None:
        raise ValueError(f"denoiser must be callable as den(x, t) with a .schedule, got {denoiser!r}")
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must have shape (B, *event), got shape {jnp.shape(x)}")
    if _checks.is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("x must be finite, got non-finite entries")
    t0, t1 = default_times(schedule, t0, t1)
    if prior is None:
        prior = gaussian_prior(schedule, t1)
    elif not callable(prior):
        raise ValueError(f"prior must be callable as prior(x) -> log p_t1(x), got {prior!r}")
    x = jnp.asarray(x, jnp.result_type(x, float))
    if divergence == "exact":
        z, num_integrals = None, 1
    else:
        if key is None:
            raise ValueError(f"key is required for divergence={divergence!r} (its probes are random)")
        z = div_lib.probes(key, num_probes, x, probe)
        num_integrals = num_probes if divergence == "hutchinson" else 1
    dtype = x.dtype
    return _solve(as_pytree(denoiser), as_pytree(prior), x, z, jnp.asarray(t0, dtype), jnp.asarray(t1, dtype),
                  jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype), estimator=divergence, method=method,
                  adjoint=adjoint, max_steps=max_steps, num_integrals=num_integrals)  # fmt: skip
