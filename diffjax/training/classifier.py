"""Cross-entropy for the project's classifiers, on clean data or on noisy x_t.

`classifier_loss(schedule=None)` builds `loss(params, apply_fn, x0, key, labels) -> (scalar,
ClassifierAux)` with the signature of `diffusion_loss`, so `make_train_step` trains either.
`apply_fn(params, x, time)` returns a `ClassifierOutput` (`diffjax.models.Classifier`).

- clean (`schedule=None`): the classifier sees x0 and time None; this is the feature extractor of
  digits-FID and the judge of class-conditional samples.
- noisy (a schedule): t from `time_sampler` (default uniform on the schedule's range),
  x_t = alpha(t) x0 + sigma(t) eps, and the classifier sees (x_t, schedule.model_time(t)), as a
  `Denoiser` feeds its network: the noise-aware classifier of classifier guidance (Dhariwal &
  Nichol 2021) and of twisted SMC (Wu et al. 2023).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffjax import _checks, specs
from diffjax.arrays import broadcast_to_x, noise_like
from diffjax.schedules import Schedule
from diffjax.training import time_sampling


class ClassifierAux(NamedTuple):
    """The classifier loss's metrics: batch accuracy, and the training times (None when clean)."""

    accuracy: jax.Array  # fraction of the batch whose argmax logit is the label
    t: jax.Array | None  # the training times (B,), None when clean


def accuracy(logits, labels) -> jax.Array:
    """Fraction of rows whose argmax is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


@struct.dataclass
class ClassifierLoss:
    """Cross-entropy of a (noise-aware) classifier; build it with `classifier_loss`. With a schedule,
    images are noised to times drawn by `time_sampler` and the classifier sees the time."""

    schedule: Schedule | None
    time_sampler: object = struct.field(pytree_node=False)

    def __call__(self, params, apply_fn, x0, key, labels):
        _checks.typed_key("key", key)
        if labels is None or jnp.shape(labels) != x0.shape[:1]:
            raise ValueError(
                f"labels must be given with shape {x0.shape[:1]}, got {None if labels is None else jnp.shape(labels)}"
            )
        t = None
        x, time = x0, None
        if self.schedule is not None:
            key_t, key_eps = jax.random.split(key)
            t = self.time_sampler(key_t, x0.shape[0], self.schedule)
            alpha, sigma = (broadcast_to_x(f(t), x0) for f in (self.schedule.alpha, self.schedule.sigma))
            x = (alpha * x0 + sigma * noise_like(key_eps, x0)).astype(x0.dtype)
            time = self.schedule.model_time(t)
        logits = apply_fn(params, x, time).logits
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return loss, ClassifierAux(accuracy(logits, labels), t)


def classifier_loss(schedule: Schedule | None = None, *, time_sampler=None) -> ClassifierLoss:
    """Mean cross-entropy of the labels; on x_t at random times when `schedule` is given.

    `time_sampler`: a `time_sampling` sampler or spec string (default "uniform"); only with a schedule.
    """
    if schedule is None:
        if time_sampler is not None:
            raise ValueError(f"time_sampler needs a schedule (noisy training), got {time_sampler!r} with schedule=None")
        return ClassifierLoss(None, None)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be None or a diffjax schedule, got {schedule!r}")
    if time_sampler is None:
        time_sampler = time_sampling.uniform()
    elif isinstance(time_sampler, str):
        time_sampler = specs.parse("time_sampler", time_sampler, time_sampling.REGISTRY)()
    return ClassifierLoss(schedule, time_sampler)
