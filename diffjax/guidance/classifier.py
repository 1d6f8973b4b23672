r"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").

`classifier_guidance(den, logits_fn, scale)` is a denoiser whose score is

    score_guided(x_t, t) = score(x_t, t) + scale * grad_{x_t} log p_phi(y | x_t, t),
    log p_phi(y | x_t, t) = log_softmax(logits_fn(x_t, t))[y],

with a noise-aware classifier `logits_fn(x_t, t) -> (B, classes)` (`steering.rewards.classifier_logits`
with the schedule it was trained on: `training.classifier_loss(schedule)` feeds it x_t and
`schedule.model_time(t)`), so its views are

    eps_guided = eps - sigma * scale * grad,    x0_guided = x0 + sigma^2 / alpha * scale * grad

(Dhariwal & Nichol's eps - sqrt(1 - alpha_bar) s grad), every view moved consistently
(`cfg.shift`). The gradient is taken through the classifier only: the denoiser is evaluated as
usual and never differentiated (it may be non-differentiable). The log-probability is that of
`steering.twists.classifier_twist(noisy=True)`. Its gradient is the gradient of the sum over the
batch of per-sample log-probabilities, which does not couple samples (for a per-sample classifier).

With an exact classifier, log p(c | x_t) = log p_t(x | c) + log p(c) - log p_t(x), the guided score
is that of p_t(x | c)^scale p_t(x)^(1 - scale): classifier-free guidance with the same scale.
scale = 0 is the denoiser itself, bit-exactly.

Labels y are the condition (`sample(cond=labels)`, (B,) or a scalar) or a fixed `target`. By
default they reach only the classifier and the denoiser is called without a condition (an
unconditional model, or one with its own fixed `.cond`); `condition_denoiser=True` also passes
them to the denoiser, guiding a class-conditional model towards the class it is conditioned on
(Dhariwal & Nichol's conditional model with guidance, whose score is then
score(x | y) + scale * grad log p(y | x_t)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, broadcast_to_x
from diffjax.denoiser import Prediction
from diffjax.guidance.cfg import shift
from diffjax.steering import twists


@struct.dataclass(eq=False)
class ClassifierGuided(Value):
    """A classifier-guided denoiser; build it with `classifier_guidance`.

    Attributes:
      denoiser: the model, called as `denoiser(x, t)` or, with `condition_denoiser`,
        `denoiser(x, t, labels)` (pytree).
      log_likelihood: log p(y | x_t, t), a `twists.ClassifierTwist` over the noisy classifier's
        logits (pytree: a classifier's parameters are leaves).
      scale: the guidance scale (leaf: a new scale does not recompile).
      cond: the labels, set by `sample(cond=...)` (pytree).
      target: the class guided towards for every sample, or None to read the labels from cond
        (static).
      condition_denoiser: whether the labels are also the denoiser's condition (static).
    """

    denoiser: Any
    log_likelihood: twists.ClassifierTwist
    scale: jax.Array
    cond: Any = None
    target: int | None = struct.field(pytree_node=False, default=None)
    condition_denoiser: bool = struct.field(pytree_node=False, default=False)

    @property
    def schedule(self):
        """The wrapped denoiser's schedule."""
        return self.denoiser.schedule

    def __call__(self, x, t, cond=None) -> Prediction:
        t = jnp.asarray(t)
        labels = self.cond if cond is None else cond
        if self.target is not None:
            labels = self.target
        if labels is None:
            raise ValueError("classifier guidance needs labels: pass cond=labels to sample() or build it with target=")
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), x.shape[:1])
        pred = self.denoiser(x, t, labels) if self.condition_denoiser else self.denoiser(x, t)
        log_p = lambda z: jnp.sum(self.log_likelihood(z, None, t, labels))
        grad = jax.grad(log_p)(x)
        sigma = broadcast_to_x(self.schedule.sigma(t), x)
        delta = -(sigma * self.scale) * grad
        return shift(pred, self.schedule, t, "eps", delta.astype(x.dtype))


def classifier_guidance(
    denoiser, logits_fn: Callable, scale, *, target: int | None = None, condition_denoiser: bool = False
) -> ClassifierGuided:
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"):
    the score plus scale times the gradient in x_t of a noise-aware classifier's log p(y | x_t, t).

    Args:
      denoiser: the model, with a `.schedule`; called as `denoiser(x, t)` (or `denoiser(x, t, labels)`
        with `condition_denoiser`) and not differentiated.
      logits_fn: `logits_fn(x_t, t) -> (B, classes)`, a time-conditioned classifier's logits: a value
        (`steering.rewards.classifier_logits(module, params, schedule=schedule)`, whose parameters are
        then data) or any function (compiled once per function object).
      scale: the finite guidance scale (Dhariwal & Nichol's s); 0 is the denoiser itself. Data: new
        scales reuse the compiled sampler.
      target: a class index >= 0 guided towards for every sample, or None to read the labels
        (B,) from the condition.
      condition_denoiser: also pass the labels to the denoiser as its condition (a class-conditional
        model); by default the denoiser gets no condition (module docstring).

    Returns:
      A `ClassifierGuided` denoiser (a value: equal options share one compiled sampler).

    Raises:
      ValueError: if `denoiser` is not callable with a `.schedule`, `logits_fn` is not callable,
        `scale` is not finite, `target` is not an integer >= 0 or `condition_denoiser` is not a
        bool; when called without labels and without a target.
    """
    if not callable(denoiser) or not hasattr(denoiser, "schedule"):
        raise ValueError(f"denoiser must be callable as denoiser(x, t) and have a .schedule, got {denoiser!r}")
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable as logits_fn(x_t, t) -> (B, classes), got {logits_fn!r}")
    scale = _checks.finite("scale", scale)
    if target is not None:
        target = _checks.positive_int("target", target, minimum=0)
    if not isinstance(condition_denoiser, (bool, np.bool_)):
        raise ValueError(f"condition_denoiser must be a bool, got {condition_denoiser!r}")
    log_likelihood = twists.classifier_twist(logits_fn, noisy=True)
    return ClassifierGuided(denoiser, log_likelihood, jnp.asarray(scale), None, target, bool(condition_denoiser))
