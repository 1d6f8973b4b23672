r"""Twists for twisted SMC (`twisted.tds`; Wu, Trippe, Naesseth, Blei & Cunningham 2023,
"Practical and Asymptotically Exact Conditional Sampling in Diffusion Models") as values.

A twist is called as `log_twist(x_t, x0_hat, t, y) -> (N,)`: the particles x_t (N, *event), the
denoiser's x0-hat(x_t) (differentiable in x_t), the time, and what the twist conditions on, y,
repeated per particle. It approximates log p_t(y | x_t); at the data it should be the likelihood
log p(y | x0) or lambda r(x0).

- `reward_twist`: lambda r(x0-hat), FK's target exp(lambda r(x0)) reached with TDS's proposal;
- `classifier_twist`: log p(y | x0-hat) of a clean classifier, or log p(y | x_t) of a noisy one;
- `inpainting_twist`: the Gaussian likelihood of observed pixels with TDS's variance inflation;
- `measurement_twist`: the same for any linear operator with an SVD (`diffjax.guidance.operators`).

Each builder returns a `rewards.Value`: a pytree whose arrays (lambda, a mask, a classifier's
parameters inside its reward or logits) are leaves and whose options are static, so `tds` compiles
once for all twists of one kind and shape, and equal builds are equal.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import as_pytree, broadcast_to_x
from diffjax.schedules import Schedule
from diffjax.steering.rewards import Value

INFLATIONS = ("tweedie", "pigdm")


@struct.dataclass(eq=False)
class RewardTwist(Value):
    """log h_t(x_t, y) = lmbda r(x0-hat(x_t), y).

    Attributes:
      reward: `reward(x, cond) -> (N,)`, a value or an `arrays.Static` function (pytree).
      lmbda: the inverse temperature lambda (leaf: a new lambda does not recompile).
    """

    reward: Callable
    lmbda: float

    def __call__(self, x_t, x0, t, y):
        del x_t, t
        r = self.reward(x0, y)
        return jnp.asarray(self.lmbda, r.dtype) * r


def reward_twist(reward: Callable, lmbda: float) -> RewardTwist:
    """The twist of a reward, lambda r(x0-hat): at the data it is exp(lambda r(x0)), FK steering's
    target, which TDS then reaches with its gradient-informed proposal.

    Args:
      reward: `reward(x, cond) -> (N,)`, a value (`rewards`) or any function; y is its cond.
      lmbda: the finite inverse temperature lambda.

    Returns:
      A `RewardTwist` `log_twist(x_t, x0_hat, t, y) -> (N,)`; equal arguments give equal twists.

    Raises:
      ValueError: if `reward` is not callable or `lmbda` is not finite.
    """
    if not callable(reward):
        raise ValueError(f"reward must be callable as reward(x, cond) -> (N,), got {reward!r}")
    lmbda = _checks.finite("lmbda", lmbda)
    return RewardTwist(as_pytree(reward), lmbda)


@struct.dataclass(eq=False)
class ClassifierTwist(Value):
    """log h_t = log_softmax(scale * logits)[y], of `logits_fn(x0_hat)` or, noisy, `logits_fn(x_t, t)`.

    Attributes:
      logits_fn: the classifier's logits, a value (`rewards.classifier_logits`) or an
        `arrays.Static` function (pytree).
      scale: the logits' inverse temperature (static).
      noisy: whether the classifier is time-conditioned and sees x_t (static).
    """

    logits_fn: Callable
    scale: float = struct.field(pytree_node=False, default=1.0)
    noisy: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x_t, x0, t, y):
        x = x_t if self.noisy else x0
        logits = self.logits_fn(x_t, t) if self.noisy else self.logits_fn(x0)
        log_p = jax.nn.log_softmax(self.scale * logits.astype(x.dtype), axis=-1)
        return jnp.take_along_axis(log_p, jnp.asarray(y, jnp.int32)[:, None], axis=-1)[:, 0]


def classifier_twist(logits_fn: Callable, *, scale: float = 1.0, noisy: bool = False) -> ClassifierTwist:
    """The class twist log p(y | .) = log_softmax(scale * logits)[y] for labels y: TDS's twist of a
    clean classifier on x0-hat (`classifier_guidance_scale` = scale) or, with `noisy=True`, a
    time-conditioned classifier's on x_t.

    Args:
      logits_fn: `logits_fn(x0_hat) -> (N, classes)`, or with `noisy=True`
        `logits_fn(x_t, t) -> (N, classes)`: a value (`rewards.classifier_logits`, with its schedule
        for a noisy classifier) or any function.
      scale: inverse temperature > 0 of the logits.
      noisy: call `logits_fn` on (x_t, t) instead of x0-hat.

    Returns:
      A `ClassifierTwist` `log_twist(x_t, x0_hat, t, y) -> (N,)`, y the labels (N,).

    Raises:
      ValueError: if `logits_fn` is not callable, `scale` is not > 0 or `noisy` is not a bool.
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {logits_fn!r}")
    scale = _checks.positive("scale", scale)
    if not isinstance(noisy, (bool, np.bool_)):
        raise ValueError(f"noisy must be a bool, got {noisy!r}")
    return ClassifierTwist(as_pytree(logits_fn), scale, bool(noisy))


def _inflation(schedule: Schedule, t, inflation: str, tausq: float):
    """TDS's tau_t^2: r^2 = sigma_t^2 / alpha_t^2 ("tweedie") or r^2 tausq / (r^2 + tausq) ("pigdm")."""
    ratio = (schedule.sigma(t) / schedule.alpha(t)) ** 2
    return ratio if inflation == "tweedie" else ratio * tausq / (ratio + tausq)


@struct.dataclass(eq=False)
class InpaintingTwist(Value):
    """log h_t = log N(y_obs; x0-hat_obs, (sigma_y^2 + tau_t^2) I) over the observed entries.

    Attributes:
      schedule: the diffusion's schedule, for tau_t (pytree).
      mask: 1 where observed, 0 elsewhere, of the event's shape (leaf).
      sigma_y: the measurement noise's standard deviation (static).
      inflation: "tweedie" or "pigdm", the form of tau_t^2 (static).
      tausq: the PiGDM prior variance (static).
    """

    schedule: Schedule
    mask: jax.Array
    sigma_y: float = struct.field(pytree_node=False)
    inflation: str = struct.field(pytree_node=False, default="tweedie")
    tausq: float = struct.field(pytree_node=False, default=0.12)

    def __call__(self, x_t, x0, t, y):
        del x_t
        var = self.sigma_y**2 + broadcast_to_x(_inflation(self.schedule, t, self.inflation, self.tausq), x0)
        m = jnp.asarray(self.mask, x0.dtype)
        term = -0.5 * m * ((y - x0) ** 2 / var + jnp.log(2 * jnp.pi * var))
        return jnp.sum(term.reshape(x0.shape[0], -1), axis=-1)


def inpainting_twist(schedule: Schedule, mask, *, sigma_y: float, inflation: str = "tweedie",
                     tausq: float = 0.12) -> InpaintingTwist:  # fmt: skip
    """TDS's inpainting twist: the Gaussian likelihood of the observed entries under x0-hat with an
    inflated variance, log N(y_obs; x0-hat_obs, (sigma_y^2 + tau_t^2) I).

    tau_t^2 is sigma_t^2 / alpha_t^2 ("tweedie", TDS's type 1) or the PiGDM form
    r^2 tausq / (r^2 + tausq), r^2 = sigma_t^2 / alpha_t^2 ("pigdm", its type 6). tau_0 = 0, so at
    the data the twist is the likelihood of y = M x0 + sigma_y e.

    Args:
      schedule: the diffusion's schedule.
      mask: 1 = observed, 0 = free, of the event's shape; y is the measurement (B, *event).
      sigma_y: the measurement noise's standard deviation, > 0.
      inflation: "tweedie" or "pigdm".
      tausq: the PiGDM prior variance, > 0 (used by "pigdm").

    Returns:
      An `InpaintingTwist` `log_twist(x_t, x0_hat, t, y) -> (N,)`.

    Raises:
      ValueError: if `schedule` is not a diffjax schedule, `sigma_y` or `tausq` is not > 0,
        `inflation` is not one of `INFLATIONS` or `mask` holds values other than 0 and 1.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    sigma_y = _checks.positive("sigma_y", sigma_y)
    _checks.one_of("inflation", inflation, INFLATIONS)
    tausq = _checks.positive("tausq", tausq)
    values = np.asarray(mask, dtype=np.float64)
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"mask must hold only 0 and 1, got {mask!r}")
    return InpaintingTwist(schedule, jnp.asarray(values), sigma_y, inflation, tausq)


@struct.dataclass(eq=False)
class MeasurementTwist(Value):
    """log h_t = log N(y; A x0-hat, sigma_y^2 I + tau_t^2 A A^T), evaluated in the operator's SVD.

    Attributes:
      schedule: the diffusion's schedule, for tau_t (pytree).
      operator: a linear measurement operator with an SVD (`diffjax.guidance.operators`; pytree).
      sigma_y: the measurement noise's standard deviation (static).
      inflation: "tweedie" or "pigdm", the form of tau_t^2 (static).
      tausq: the PiGDM prior variance (static).
    """

    schedule: Schedule
    operator: object
    sigma_y: float = struct.field(pytree_node=False)
    inflation: str = struct.field(pytree_node=False, default="tweedie")
    tausq: float = struct.field(pytree_node=False, default=0.12)

    def __call__(self, x_t, x0, t, y):
        del x_t
        s = jnp.asarray(self.operator.singular_values, x0.dtype)
        tau2 = broadcast_to_x(_inflation(self.schedule, t, self.inflation, self.tausq), x0)
        var = self.sigma_y**2 + tau2 * s**2
        residual = self.operator.measurement_to_spectral(y - self.operator(x0))  # U^T r on s > 0, else 0
        live = s > 0
        safe = jnp.where(live, var, 1.0)
        term = jnp.where(live, -0.5 * (jnp.abs(residual) ** 2 / safe + jnp.log(2 * jnp.pi * safe)), 0.0)
        return jnp.sum(term.reshape(x0.shape[0], -1), axis=-1)


def measurement_twist(schedule: Schedule, operator, *, sigma_y: float, inflation: str = "tweedie",
                      tausq: float = 0.12) -> MeasurementTwist:  # fmt: skip
    """TDS's twist for any linear measurement y = A x0 + sigma_y n with an SVD (masks, downsampling,
    blur, matrices of `diffjax.guidance.operators`): log N(y; A x0-hat, sigma_y^2 I + tau_t^2 A A^T),
    x0-hat's error taken as N(0, tau_t^2 I) with tau_t^2 as in `inpainting_twist`. In the SVD
    A = U diag(s) V^T the covariance is diagonal, sigma_y^2 + tau_t^2 s_i^2, over the observed spectral
    coordinates (s_i > 0). For an inpainting operator it equals `inpainting_twist`; with
    inflation="pigdm" and tausq = 1 it is the exact p_t(y | x_t) of a N(mu, I) prior.

    Args:
      schedule: the diffusion's schedule.
      operator: a linear operator with `has_svd` (y has its measurement shape, (B, *measurement_shape)).
      sigma_y: the measurement noise's standard deviation, > 0.
      inflation: "tweedie" or "pigdm".
      tausq: the PiGDM prior variance, > 0 (used by "pigdm").

    Returns:
      A `MeasurementTwist` `log_twist(x_t, x0_hat, t, y) -> (N,)`.

    Raises:
      ValueError: if `schedule` is not a diffjax schedule, `operator` has no SVD, `sigma_y` or `tausq`
        is not > 0 or `inflation` is not one of `INFLATIONS`.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    if not getattr(operator, "has_svd", False):
        raise ValueError(f"operator must be a linear operator with an SVD (diffjax.guidance.operators), got {operator}")
    sigma_y = _checks.positive("sigma_y", sigma_y)
    _checks.one_of("inflation", inflation, INFLATIONS)
    return MeasurementTwist(schedule, operator, sigma_y, inflation, _checks.positive("tausq", tausq))
