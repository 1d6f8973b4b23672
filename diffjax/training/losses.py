r"""Denoising losses for every parameterization, with the weightings of the literature.

For a batch x0 of shape (B, *event), `diffusion_loss(schedule, ...)` builds a pure
`loss(params, apply_fn, x0, key, cond=None) -> (scalar, LossAux)`. It draws t from its time sampler
and eps ~ N(0, I) (in float32, cast to x0's dtype, as the solvers draw noise), forms
x_t = alpha(t) x0 + sigma(t) eps, and computes

    loss = mean_b  w(t_b) * reduce_dims (target_hat - target)^2,      reduce = mean ("vdm": sum).

**The network is called exactly as `Denoiser` calls it**, with the same `prediction`, `time_fn` and
`sigma_data`: `apply_fn(params, x_in, time, cond)` with x_in = x_t and time = schedule.model_time(t)
(or time_fn(t)); for prediction="edm", x_in = c_in x_t / alpha and time = c_noise = ln(sigma/alpha)/4.
So a network trained with `diffusion_loss(schedule, prediction=p)` samples correctly as
`Denoiser(apply_fn, params, schedule, prediction=p)`.

**The regression target** is by default what the network outputs (target_hat is then the raw
output): eps; x0; v = alpha eps - sigma x0 (Salimans & Ho 2022); score = -eps/sigma; velocity
dx/dt = alpha' x0 + sigma' eps (rectified flow: eps - x0); EDM's F = (x0 - c_skip x_t/alpha)/c_out
(Karras et al. 2022). `target=` regresses another view instead, after converting the output with
`predictions.to_x0_eps`, as `Denoiser` does.

**Weights are defined on the x0-error.** At fixed x_t every target is affine in x0 (eps = (x_t -
alpha x0)/sigma), so |target_hat - target|^2 = k^2(t) |x0_hat - x0|^2 with k = |d target/d x0|:

| target   | k^2 (`target_scale`)                                               |
|----------|--------------------------------------------------------------------|
| x0       | 1                                                                  |
| eps      | SNR = alpha^2 / sigma^2                                            |
| v        | (alpha^2 + sigma^2)^2 / sigma^2            (VP: SNR + 1)           |
| score    | alpha^2 / sigma^4                                                  |
| velocity | (alpha sigma' - sigma alpha')^2 / sigma^2  (rectified flow: 1/t^2) |
| edm      | 1 / c_out^2 = (s^2 + sd^2) / (s sd)^2,  s = sigma/alpha, sd = sigma_data |

A weighting is lambda(t), the weight on |x0_hat - x0|^2, so it names the same objective whatever
the network predicts; the loss puts w(t) = lambda(t) / k^2(t) on the target error. Only "uniform"
is defined on the target itself (w = 1).

| weighting | lambda(t) on the x0-error         | on the eps-error (lambda/SNR) | source |
|-----------|-----------------------------------|-------------------------------|--------|
| uniform   | k^2 of the target                 | k^2 / SNR                   | each paper's plain MSE |
| snr       | SNR                               | 1                           | DDPM's L_simple; k-diffusion "snr" |
| min_snr   | min(SNR, gamma)                   | min(SNR, gamma) / SNR       | Hang et al. 2023 |
| edm       | (s^2 + sd^2) / (s sd)^2           | 1 + s^2 / sd^2              | Karras et al. 2022 (unit weight on F) |
| vdm       | (t_max - t_min)/2 (-dlogsnr/dt) SNR | (t_max - t_min)/2 (-dlogsnr/dt) | Kingma et al. 2021 |

Min-SNR-gamma thus gives w = min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR + 1) for VP v and
min(SNR, gamma) for x0, as in the paper. "vdm" sums over dimensions and needs `uniform` or
`antithetic` times on [t_min, t_max]: its expectation is then
integral_{t_min}^{t_max} 1/2 (-dlogsnr/dt) E|eps - eps_hat(x_t, t)|^2 dt, the diffusion term L_inf of
the VDM bound (Kingma et al. 2021, its continuous-time limit) in nats per example, without the prior and reconstruction
terms (divide by dim * ln 2 for bits per dimension). A callable `weighting(schedule, t)` gives
lambda(t) directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from diffjax import _checks, predictions, specs
from diffjax.arrays import broadcast_to_x, noise_like
from diffjax.denoiser import network_inputs
from diffjax.schedules import Discrete, Schedule
from diffjax.training import time_sampling

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm", "vdm")


class LossAux(NamedTuple):
    """What a loss call returns beside the scalar, for logging: per-example losses and times, (B,)."""

    per_example: jax.Array
    t: jax.Array


class Weights(NamedTuple):
    """lambda(t) on |x0_hat - x0|^2 and the equivalent w(t) = lambda / k^2 on |target_hat - target|^2."""

    x0: jax.Array
    target: jax.Array


def regression_target(target, *, x, x0, eps, alpha, sigma, dalpha, dsigma, sigma_data):
    """The view `target` (one of `predictions.PREDICTIONS`) of (x0, eps) at x = alpha x0 + sigma eps."""
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    if target == "v":
        return predictions.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    if target == "score":
        return predictions.score_from_eps(eps=eps, sigma=sigma)
    if target == "velocity":
        return predictions.velocity_from_x0_eps(x0=x0, eps=eps, dalpha=dalpha, dsigma=dsigma)
    return predictions.edm_from_x0(x=x, x0=x0, alpha=alpha, sigma=sigma, sigma_data=sigma_data)


def target_scale(target, *, alpha, sigma, dalpha, dsigma, sigma_data):
    """k^2 = |d target / d x0|^2 at fixed x_t, so |target error|^2 = k^2 |x0 error|^2 (table above)."""
    if target == "x0":
        return jnp.ones_like(alpha)
    if target == "eps":
        return (alpha / sigma) ** 2
    if target == "v":
        return ((alpha**2 + sigma**2) / sigma) ** 2
    if target == "score":
        return (alpha / sigma**2) ** 2
    if target == "velocity":
        return ((alpha * dsigma - sigma * dalpha) / sigma) ** 2
    return predictions.edm_coefficients(alpha=alpha, sigma=sigma, sigma_data=sigma_data).c_out ** -2


@struct.dataclass(eq=False)
class DiffusionLoss:
    """A denoising loss; build it with `diffusion_loss`, which validates and documents the options.

    Call it as `loss(params, apply_fn, x0, key, cond=None) -> (scalar, LossAux)`; `per_example`
    evaluates it at given times and noise, and `weights(t)` gives its weights on a grid of t.
    A pytree (the schedule is its data), hashed by identity so that `jax.jit(loss)` works for
    schedules holding arrays (`Discrete`).
    """

    schedule: Schedule
    prediction: str = struct.field(pytree_node=False)
    target: str = struct.field(pytree_node=False)
    weighting: str | Callable = struct.field(pytree_node=False)
    time_sampler: Callable = struct.field(pytree_node=False)
    time_fn: Callable | None = struct.field(pytree_node=False)
    sigma_data: float = struct.field(pytree_node=False)
    min_snr_gamma: float = struct.field(pytree_node=False)

    def _coefficients(self, t):
        sched = self.schedule
        return dict(alpha=sched.alpha(t), sigma=sched.sigma(t), dalpha=sched.dalpha(t), dsigma=sched.dsigma(t))

    def weights(self, t) -> Weights:
        """lambda(t) on the x0-error and w(t) = lambda / k^2 on the target error (module docstring)."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))
        coeffs = self._coefficients(t)
        scale = target_scale(self.target, sigma_data=self.sigma_data, **coeffs)
        if self.weighting == "uniform":
            return Weights(x0=scale, target=jnp.ones_like(scale))
        snr = (coeffs["alpha"] / coeffs["sigma"]) ** 2
        if callable(self.weighting):
            lam = self.weighting(self.schedule, t)
        elif self.weighting == "snr":
            lam = snr
        elif self.weighting == "min_snr":
            lam = jnp.minimum(snr, self.min_snr_gamma)
        elif self.weighting == "edm":
            lam = target_scale("edm", sigma_data=self.sigma_data, **coeffs)
        else:  # vdm: (t_max - t_min) turns the mean over uniform t into the integral over t
            t_min, t_max = self.time_sampler.bounds(self.schedule)
            lam = 0.5 * (t_max - t_min) * -self.schedule.dlogsnr(t) * snr
        return Weights(x0=lam, target=lam / scale)

    def per_example(self, params, apply_fn, x0, t, eps, cond=None):
        """Per-example losses (B,) at given times t (scalar or (B,)) and noise eps (shape of x0)."""
        if x0.ndim < 1 or eps.shape != x0.shape:
            raise ValueError(f"x0 must be a batch (B, *event) and eps of its shape, got {x0.shape} and {eps.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, dtype=jnp.result_type(t, float)), x0.shape[:1])
        coeffs = {name: broadcast_to_x(c, x0) for name, c in self._coefficients(t).items()}
        x = (coeffs["alpha"] * x0 + coeffs["sigma"] * eps).astype(x0.dtype)
        x_in, time = network_inputs(
            self.schedule, self.prediction, x, t, time_fn=self.time_fn, sigma_data=self.sigma_data,
            alpha=coeffs["alpha"], sigma=coeffs["sigma"],
        )  # fmt: skip
        output = apply_fn(params, x_in, time, cond)
        if output.shape != x.shape:
            raise ValueError(f"apply_fn must return the shape of x {x.shape}, got {output.shape}")
        estimate = output
        if self.target != self.prediction:
            x0_hat, eps_hat = predictions.to_x0_eps(self.prediction, output, x=x, sigma_data=self.sigma_data, **coeffs)
            estimate = regression_target(self.target, x=x, x0=x0_hat, eps=eps_hat, sigma_data=self.sigma_data, **coeffs)
        error = estimate - regression_target(self.target, x=x, x0=x0, eps=eps, sigma_data=self.sigma_data, **coeffs)
        reduce = jnp.sum if self.weighting == "vdm" else jnp.mean
        return reduce(broadcast_to_x(self.weights(t).target, x) * error**2, axis=tuple(range(1, x.ndim)))

    def __call__(self, params, apply_fn, x0, key, cond=None):
        _checks.typed_key("key", key)
        key_t, key_eps = jax.random.split(key)
        t = self.time_sampler(key_t, x0.shape[0], self.schedule)
        eps = noise_like(key_eps, x0)
        per_example = self.per_example(params, apply_fn, x0, t, eps, cond)
        return jnp.mean(per_example), LossAux(per_example, t)


def _default_sampler(schedule, weighting):
    if weighting == "vdm":
        return time_sampling.antithetic()
    if weighting == "edm":
        return time_sampling.edm_lognormal()
    if isinstance(schedule, Discrete):
        return time_sampling.discrete_uniform()
    return time_sampling.uniform()


def _time_sampler(time_sampler, schedule, weighting):
    if time_sampler is None:
        time_sampler = _default_sampler(schedule, weighting)
    elif isinstance(time_sampler, str):
        time_sampler = specs.parse("time_sampler", time_sampler, time_sampling.REGISTRY)()
    elif not callable(time_sampler):
        raise ValueError(f"time_sampler must be None, a spec string or a callable, got {time_sampler!r}")
    if weighting == "vdm" and getattr(time_sampler, "name", None) not in ("uniform", "antithetic"):
        raise ValueError(
            f"time_sampler must be time_sampling.uniform() or antithetic() for weighting='vdm' "
            f"(the loss is then the VDM bound), got {time_sampler!r}"
        )
    shape = jax.eval_shape(lambda key: time_sampler(key, 2, schedule), jax.random.key(0)).shape
    if shape != (2,):
        raise ValueError(f"time_sampler(key, n, schedule) must return shape (n,), got {shape} for n = 2")
    return time_sampler


def diffusion_loss(
    schedule: Schedule,
    *,
    prediction: str = "eps",
    target: str | None = None,
    weighting: str | Callable = "uniform",
    time_sampler: str | Callable | None = None,
    time_fn: Callable | None = None,
    sigma_data: float | None = None,
    min_snr_gamma: float = 5.0,
) -> DiffusionLoss:
    """The denoising loss of a network that outputs `prediction` (see the module docstring).

    Args:
      schedule: the forward process x_t = alpha x0 + sigma eps.
      prediction: what `apply_fn` outputs, one of `predictions.PREDICTIONS`, as in `Denoiser`.
      target: the view regressed (default: `prediction`).
      weighting: one of WEIGHTINGS, or `weighting(schedule, t) -> lambda(t)` on the x0-error.
      time_sampler: a `time_sampling` sampler, a spec such as "logit_normal(std=1.0)", or any
        `f(key, n, schedule) -> (n,)`. Default: `antithetic()` for "vdm", `edm_lognormal()` for
        "edm", else `discrete_uniform()` for discrete schedules and `uniform()` otherwise.
      time_fn: the network's time input, as `Denoiser.time_fn` (default: model_time, or c_noise for "edm").
      sigma_data: EDM's data scale for prediction, target or weighting "edm" (default, as in
        `Denoiser`: the schedule's `sigma_data`, else 0.5).
      min_snr_gamma: gamma of "min_snr" (Hang et al. 2023 use 5).
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    _checks.one_of("prediction", prediction, predictions.PREDICTIONS)
    target = prediction if target is None else target
    _checks.one_of("target", target, predictions.PREDICTIONS)
    if not (callable(weighting) or weighting in WEIGHTINGS):
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable (schedule, t), got {weighting!r}")
    if time_fn is not None and not callable(time_fn):
        raise ValueError(f"time_fn must be callable or None, got {time_fn!r}")
    sigma_data = getattr(schedule, "sigma_data", 0.5) if sigma_data is None else sigma_data
    return DiffusionLoss(
        schedule,
        prediction=prediction,
        target=target,
        weighting=weighting,
        time_sampler=_time_sampler(time_sampler, schedule, weighting),
        time_fn=time_fn,
        sigma_data=_checks.positive("sigma_data", sigma_data),
        min_snr_gamma=_checks.positive("min_snr_gamma", min_snr_gamma),
    )
