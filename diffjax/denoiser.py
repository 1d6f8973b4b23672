"""`Denoiser`: a network (or any function) with its schedule and what it predicts.

A denoiser is called as `den(x, t)` with x of shape (B, *event) and t a scalar or (B,), and
returns every view of the prediction (`Prediction`). Solvers, guidance and steering only see
this interface (a callable with a `.schedule`), so an exact oracle, a Flax model and a guided
combination of models are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from diffjax import predictions
from diffjax.arrays import broadcast_to_x
from diffjax.schedules import Schedule


class Prediction(NamedTuple):
    """Every view of one prediction at (x, t); unused views cost nothing under `jit`."""

    x0: jax.Array
    eps: jax.Array
    v: jax.Array
    score: jax.Array
    velocity: jax.Array


def prediction_views(schedule, x0, eps, t) -> Prediction:
    """Every view of the prediction (x0, eps) at time t (scalar or (B,)), in x0's dtype: what a
    denoiser returns, and how a modified prediction (TDS's twisted x0 and eps) becomes one."""
    t = jnp.asarray(t)
    alpha, sigma, dalpha, dsigma = (broadcast_to_x(f(t), x0) for f in (schedule.alpha, schedule.sigma,
                                                                       schedule.dalpha, schedule.dsigma))  # fmt: skip
    return _views(x0, eps, alpha, sigma, dalpha, dsigma, x0.dtype)


def _views(x0, eps, alpha, sigma, dalpha, dsigma, dtype) -> Prediction:
    views = Prediction(
        x0=x0,
        eps=eps,
        v=predictions.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma),
        score=predictions.score_from_eps(eps=eps, sigma=sigma),
        velocity=predictions.velocity_from_x0_eps(x0=x0, eps=eps, dalpha=dalpha, dsigma=dsigma),
    )
    return Prediction(*(view.astype(dtype) for view in views))


def network_inputs(schedule, prediction, x, t, *, time_fn, sigma_data, alpha, sigma):
    """(x_in, time) as a network of this parameterization is fed: x and `time_fn(t)` (default:
    `schedule.model_time(t)`), or for "edm" c_in * x / alpha and c_noise = log(sigma/alpha)/4.
    `time` is broadcast to the batch (B,). Training losses use the same function."""
    if time_fn is not None:
        time = time_fn(t)
    elif prediction == "edm":
        time = 0.25 * jnp.log(schedule.ve_sigma(t))
    else:
        time = schedule.model_time(t)
    if prediction == "edm":
        c_in = predictions.edm_coefficients(alpha=alpha, sigma=sigma, sigma_data=sigma_data).c_in
        x = (c_in * x / alpha).astype(x.dtype)
    return x, jnp.broadcast_to(time, x.shape[:1])


@struct.dataclass
class Denoiser:
    """Wraps `apply_fn(params, x, time, cond) -> output` where output is `prediction`:
    "eps" | "x0" | "v" | "score" | "velocity" (dx/dt) | "edm" (EDM's F with its preconditioning).

    `time_fn(t)` maps diffjax time to what the network was trained with (default:
    `schedule.model_time`, e.g. the DDPM step index of a discrete schedule; for "edm" the default is
    c_noise = log(sigma/alpha)/4); `sigma_data` (for "edm") defaults to the schedule's, else 0.5.
    `cond` is passed through to `apply_fn` (class labels, prompts).

    A call raises a ValueError naming the shapes when `apply_fn` returns an output whose shape is not
    x's, or when `apply_fn` raises a TypeError or ValueError (chained as its cause).
    """

    apply_fn: Callable = struct.field(pytree_node=False)
    params: Any
    schedule: Schedule
    prediction: str = struct.field(pytree_node=False, default="eps")
    time_fn: Callable | None = struct.field(pytree_node=False, default=None)
    sigma_data: float | None = struct.field(pytree_node=False, default=None)
    cond: Any = None

    def __post_init__(self):
        if not callable(self.apply_fn):
            raise ValueError(f"apply_fn must be callable as apply_fn(params, x, t, cond), got {self.apply_fn!r}")
        if self.prediction not in predictions.PREDICTIONS:
            raise ValueError(f"prediction must be one of {predictions.PREDICTIONS}, got {self.prediction!r}")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a diffjax schedule, got {self.schedule!r}")
        if self.time_fn is not None and not callable(self.time_fn):
            raise ValueError(f"time_fn must be callable or None, got {self.time_fn!r}")
        if self.sigma_data is not None and not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")

    def _sigma_data(self):
        if self.sigma_data is not None:
            return self.sigma_data
        return getattr(self.schedule, "sigma_data", 0.5)

    def __call__(self, x, t, cond=None) -> Prediction:
        sched = self.schedule
        t = jnp.asarray(t)
        alpha, sigma, dalpha, dsigma = (
            broadcast_to_x(f(t), x) for f in (sched.alpha, sched.sigma, sched.dalpha, sched.dsigma)
        )
        x_in, time = network_inputs(
            sched, self.prediction, x, t, time_fn=self.time_fn, sigma_data=self._sigma_data(), alpha=alpha, sigma=sigma
        )
        try:
            output = self.apply_fn(self.params, x_in, time, self.cond if cond is None else cond)
        except jax.errors.ConcretizationTypeError:  # a tracer misused inside apply_fn: JAX's own message
            raise
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"apply_fn failed on x of shape {tuple(x.shape)} (batch {x.shape[0] if x.ndim else None}, event shape "
                f"{tuple(x.shape[1:])}) with time of shape {tuple(jnp.shape(time))}: {type(err).__name__}: {err}"
            ) from err
        if jnp.shape(output) != x.shape:
            raise ValueError(
                f"apply_fn must return an output of x's shape {tuple(x.shape)} (prediction={self.prediction!r}), "
                f"got shape {tuple(jnp.shape(output))}"
            )
        x0, eps = predictions.to_x0_eps(
            self.prediction,
            output,
            x=x,
            alpha=alpha,
            sigma=sigma,
            dalpha=dalpha,
            dsigma=dsigma,
            sigma_data=self._sigma_data(),
        )
        return _views(x0, eps, alpha, sigma, dalpha, dsigma, x.dtype)
