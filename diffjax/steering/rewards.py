r"""Rewards for steering and search: values `reward(x, cond) -> (N,)` of samples x (N, *event) and
their condition (or None).

- analytic, with exactly tilted targets for the tests: `linear` (r = a.x) and `quadratic`
  (r = -1/2 (x - c)^T diag(q) (x - c));
- `class_log_prob`: log p(y | x) = log_softmax(scale * logits(x))[y] of a classifier, with y the
  condition (per sample labels) or a fixed target class; `classifier_reward` builds it from a Flax
  classifier and its parameters (`ClassifierLogits`);
- `colour_fraction`: an attribute of the procedural shapes images, the soft fraction of pixels
  painted in a palette colour;
- `chunked`: any reward evaluated a few samples at a time.

Every builder returns a *value*: an immutable pytree (`Value`, a `flax.struct` dataclass) whose
arrays (directions, centres, a classifier's parameters) are leaves and whose options (a target
class, a colour, a chunk size) are static. A jitted function that takes a reward as an ordinary
argument therefore compiles once for all rewards of one kind, options and array shapes, and
new parameters (a retrained classifier) reuse the compiled program::

    score = jax.jit(lambda reward, x: reward(x, None))
    score(rewards.classifier_reward(module, params, target=3), x)
    score(rewards.classifier_reward(module, new_params, target=3), x)  # no recompilation

Two builds with the same arguments are equal (`Value.__eq__`). Plain functions work wherever a
reward is taken (`arrays.as_pytree` wraps them as static), but compile once per function object.
`REGISTRY` names the builders that configs use (`specs.parse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, as_pytree
from diffjax.data import shapes
from diffjax.models.classifier import Classifier
from diffjax.schedules import Schedule


def _flat(x):
    return x.reshape(x.shape[0], -1)


# -- analytic rewards ---------------------------------------------------------------------------


@struct.dataclass(eq=False)
class Linear(Value):
    """r(x) = <a, x>, the sum over the event of a * x.

    Attributes:
      direction: a, of the event's shape or flat (leaf).
    """

    direction: jax.Array

    def __call__(self, x, cond=None):
        del cond
        return _flat(x) @ jnp.asarray(self.direction, x.dtype).reshape(-1)


@struct.dataclass(eq=False)
class Quadratic(Value):
    """r(x) = -1/2 sum_d q_d (x_d - c_d)^2.

    Attributes:
      center: c, of the event's shape or broadcastable to it (leaf).
      precision: q >= 0, of the event's shape or broadcastable to it (leaf).
    """

    center: jax.Array
    precision: jax.Array

    def __call__(self, x, cond=None):
        del cond
        c, q = jnp.asarray(self.center, x.dtype), jnp.asarray(self.precision, x.dtype)
        return -0.5 * jnp.sum(_flat(q * (x - c) ** 2), axis=-1)


def linear(direction) -> Linear:
    """The linear reward r(x) = <a, x>, whose exp-tilt of a Gaussian is a shifted Gaussian.

    Args:
      direction: a, a non-empty finite array of the event's shape (or flat).

    Returns:
      A `Linear` reward `reward(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `direction` is empty or not finite.
    """
    value = np.asarray(direction, dtype=np.float64)
    if value.size == 0 or not np.all(np.isfinite(value)):
        raise ValueError(f"direction must be a non-empty finite array, got {direction!r}")
    return Linear(jnp.asarray(value))


def quadratic(center, precision) -> Quadratic:
    """The quadratic reward r(x) = -1/2 sum_d q_d (x_d - c_d)^2, whose exp-tilt of a Gaussian is a
    Gaussian.

    Args:
      center: c, finite, of the event's shape or a scalar.
      precision: q, finite and >= 0, of the event's shape or a scalar.

    Returns:
      A `Quadratic` reward `reward(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `center` is not finite or `precision` is not finite and >= 0.
    """
    c, q = np.asarray(center, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"center must be finite, got {center!r}")
    if not (np.all(np.isfinite(q)) and np.all(q >= 0)):
        raise ValueError(f"precision must be finite and >= 0, got {precision!r}")
    return Quadratic(jnp.asarray(c), jnp.asarray(q))


# -- classifiers --------------------------------------------------------------------------------


def _apply_classifier(module, params, schedule, x, t):
    if t is None:
        return module.apply(params, x)
    time = t if schedule is None else schedule.model_time(jnp.asarray(t))
    return module.apply(params, x, jnp.broadcast_to(time, x.shape[:1]))


@struct.dataclass(eq=False)
class ClassifierLogits(Value):
    """`logits_fn(x[, t]) -> (N, classes)`: a Flax classifier's logits, in x's dtype.

    The module is called as `module.apply(params, x)` or, with a time t, as
    `module.apply(params, x, schedule.model_time(t))` (t itself without a schedule), as
    `training.classifier_loss` trains a noise-aware `models.Classifier`; the logits are the output's
    `.logits` (a `models.ClassifierOutput`) or the output itself when it has none.

    Attributes:
      module: the `flax.linen` module (static).
      params: its variables (leaves).
      schedule: the schedule whose `model_time` a time-conditioned classifier was trained on, or
        None (pytree).
    """

    module: nn.Module = struct.field(pytree_node=False)
    params: Any
    schedule: Schedule | None = None

    def __call__(self, x, t=None):
        out = _apply_classifier(self.module, self.params, self.schedule, x, t)
        return getattr(out, "logits", out).astype(x.dtype)


@struct.dataclass(eq=False)
class ClassifierFeatures(Value):
    """`features_fn(x[, t]) -> (N, F)`: a `models.Classifier`'s penultimate features, in x's dtype
    (the feature space of `verifiers.feature_similarity` and of the metrics).

    Attributes:
      module: the `flax.linen` module, whose output has `.features` (static).
      params: its variables (leaves).
      schedule: as for `ClassifierLogits` (pytree).
    """

    module: nn.Module = struct.field(pytree_node=False)
    params: Any
    schedule: Schedule | None = None

    def __call__(self, x, t=None):
        return _apply_classifier(self.module, self.params, self.schedule, x, t).features.astype(x.dtype)


def _check_classifier(module, params, schedule):
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a flax.linen Module, got {module!r}")
    if params is None:
        raise ValueError(f"params must be the module's variables, got {params!r}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be None or a diffjax schedule, got {schedule!r}")
    if isinstance(module, Classifier) and module.time_conditioned and schedule is None:
        raise ValueError("schedule is needed for a Classifier built with time_conditioned=True, got schedule=None")


def classifier_logits(module: nn.Module, params, *, schedule: Schedule | None = None) -> ClassifierLogits:
    """A classifier's logits as a value, its parameters as leaves.

    Args:
      module: a `flax.linen` module called as `module.apply(params, x[, time])`, e.g. a
        `models.Classifier`.
      params: its variables.
      schedule: for a time-conditioned classifier, the schedule whose `model_time(t)` it was trained
        on (required for a `models.Classifier` with `time_conditioned=True`); None otherwise.

    Returns:
      A `ClassifierLogits`, `logits_fn(x, t=None) -> (N, classes)`.

    Raises:
      ValueError: if `module` is not a Flax module, `params` is None or `schedule` is missing or not
        a schedule.
    """
    _check_classifier(module, params, schedule)
    return ClassifierLogits(module, params, schedule)


def classifier_features(module: nn.Module, params, *, schedule: Schedule | None = None) -> ClassifierFeatures:
    """A `models.Classifier`'s features as a value, its parameters as leaves.

    Args:
      module: a `flax.linen` module whose output has `.features` (a `models.Classifier`).
      params: its variables.
      schedule: as for `classifier_logits`.

    Returns:
      A `ClassifierFeatures`, `features_fn(x, t=None) -> (N, F)`.

    Raises:
      ValueError: as `classifier_logits`.
    """
    _check_classifier(module, params, schedule)
    return ClassifierFeatures(module, params, schedule)


@struct.dataclass(eq=False)
class ClassLogProb(Value):
    """r(x, y) = log_softmax(scale * logits_fn(x))[y], y the condition or the fixed target.

    Attributes:
      logits_fn: `logits_fn(x) -> (N, classes)`, a value such as `ClassifierLogits` (pytree) or a
        plain function wrapped in `arrays.Static`.
      target: the class every sample is scored for, or None to take labels from the condition
        (static).
      scale: the logits' inverse temperature (static).
    """

    logits_fn: Callable
    target: int | None = struct.field(pytree_node=False, default=None)
    scale: float = struct.field(pytree_node=False, default=1.0)

    def __call__(self, x, cond=None):
        labels = cond if self.target is None else jnp.full(x.shape[:1], self.target)
        if labels is None:
            raise ValueError("class_log_prob needs labels: pass cond=labels or build it with target=")
        log_p = jax.nn.log_softmax(self.scale * self.logits_fn(x).astype(x.dtype), axis=-1)
        return jnp.take_along_axis(log_p, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]


def class_log_prob(logits_fn: Callable, *, target: int | None = None, scale: float = 1.0) -> ClassLogProb:
    """A classifier's class log-probability as a reward, r(x, y) = log_softmax(scale * logits)[y].

    Args:
      logits_fn: `logits_fn(x) -> (N, classes)`: a value (`classifier_logits`: its parameters are
        then traced, not compiled in) or any function (compiled once per function object).
      target: a class index >= 0 scored for every sample, or None to read the labels (N,) from the
        condition.
      scale: inverse temperature > 0 of the logits.

    Returns:
      A `ClassLogProb` reward `reward(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `logits_fn` is not callable, `target` is not an integer >= 0 or `scale` is not
        > 0; when called without labels and without a target.
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable as logits_fn(x) -> (N, classes), got {logits_fn!r}")
    if target is not None:
        target = _checks.positive_int("target", target, minimum=0)
    scale = _checks.positive("scale", scale)
    return ClassLogProb(as_pytree(logits_fn), target, scale)


def classifier_reward(module: nn.Module, params, *, target: int | None = None, scale: float = 1.0) -> ClassLogProb:
    """The class log-probability reward of a clean Flax classifier, its parameters as leaves:
    `class_log_prob(classifier_logits(module, params), target=target, scale=scale)`.

    `REGISTRY["classifier"]`: a config names it as "classifier(target=3)" and the experiment
    supplies the classifier, `specs.parse("config.reward", spec, REGISTRY)(module, params)`.

    Args:
      module: a `flax.linen` classifier called as `module.apply(params, x)` (a `models.Classifier`
        built with `time_conditioned=False`).
      params: its variables (e.g. a restored run's EMA parameters).
      target: a class index >= 0 scored for every sample, or None for labels from the condition.
      scale: inverse temperature > 0 of the logits.

    Returns:
      A `ClassLogProb` reward over a `ClassifierLogits`.

    Raises:
      ValueError: if `module` is not a Flax module or is a time-conditioned `models.Classifier`, or
        `params`, `target` or `scale` is invalid.
    """
    if isinstance(module, Classifier) and module.time_conditioned:
        raise ValueError(f"module must be a clean (time_conditioned=False) Classifier for a reward, got {module!r}")
    return class_log_prob(classifier_logits(module, params), target=target, scale=scale)


# -- image attributes ---------------------------------------------------------------------------


@struct.dataclass(eq=False)
class ColourFraction(Value):
    """r(x) = mean over pixels of exp(-|x_pixel - palette[colour]|^2 / (2 width^2)).

    Attributes:
      colour: a name of `data.shapes.PALETTE_NAMES` (static).
      width: the kernel width in pixel units of [-1, 1] (static).
    """

    colour: str = struct.field(pytree_node=False)
    width: float = struct.field(pytree_node=False, default=0.25)

    def __call__(self, x, cond=None):
        del cond
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"colour_fraction needs (N, H, W, 3) images, got shape {x.shape}")
        rgb = np.asarray(shapes.PALETTE[shapes.PALETTE_NAMES.index(self.colour)])
        dist2 = jnp.sum((x - jnp.asarray(rgb, x.dtype)) ** 2, axis=-1)
        return jnp.mean(jnp.exp(-dist2 / (2 * self.width**2)), axis=(1, 2))


def colour_fraction(colour: str, *, width: float = 0.25) -> ColourFraction:
    """The soft fraction of a shapes image painted in a palette colour: 1 for a flat image of that
    colour, about 0 for the background (palette colours are >= 2 apart).

    Args:
      colour: one of `data.shapes.PALETTE_NAMES`.
      width: the Gaussian kernel's width > 0 around the colour, for (N, H, W, 3) images in [-1, 1].

    Returns:
      A `ColourFraction` reward `reward(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `colour` is not a palette name or `width` is not > 0; when called on anything
        but (N, H, W, 3) images.
    """
    _checks.one_of("colour", colour, shapes.PALETTE_NAMES)
    width = _checks.positive("width", width)
    return ColourFraction(colour, width)


# -- evaluation in chunks -----------------------------------------------------------------------


@struct.dataclass(eq=False)
class Chunked(Value):
    """`reward` evaluated on `chunk_size` samples at a time (`jax.lax.map` over chunks): the same
    values, with the memory of one chunk. N must be a multiple of `chunk_size`.

    Attributes:
      reward: the reward, a value or an `arrays.Static` function (pytree).
      chunk_size: samples per call (static).
    """

    reward: Callable
    chunk_size: int = struct.field(pytree_node=False)

    def __call__(self, x, cond=None):
        n, size = x.shape[0], self.chunk_size
        if n % size:
            raise ValueError(f"the number of particles B*K={n} must be a multiple of chunk_size={size}")
        split = lambda a: a.reshape((n // size, size) + a.shape[1:])
        parts = jax.lax.map(lambda args: self.reward(*args), (split(x), jax.tree.map(split, cond)))
        return parts.reshape(n)


def chunked(reward: Callable, chunk_size: int) -> Chunked:
    """A reward evaluated a few samples at a time, to bound the memory of large reward models
    (`fk_steer(..., reward_chunk=)`).

    Equal arguments give equal values, so a jitted sampler taking the result compiles once.

    Args:
      reward: `reward(x, cond) -> (N,)`, a value or any function.
      chunk_size: samples per call, an integer >= 1 dividing the number of samples.

    Returns:
      A `Chunked` reward with the same values as `reward`.

    Raises:
      ValueError: if `reward` is not callable or `chunk_size` is not an integer >= 1; when called on
        a number of samples that `chunk_size` does not divide.
    """
    if not callable(reward):
        raise ValueError(f"reward must be callable as reward(x, cond) -> (N,), got {reward!r}")
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    return Chunked(as_pytree(reward), chunk_size)


REGISTRY: dict[str, Callable] = {
    "linear": linear,
    "quadratic": quadratic,
    "colour": colour_fraction,
    "classifier": classifier_reward,
}
"""Reward builders by config name (`specs.parse`): "linear(direction=...)",
"quadratic(center=..., precision=...)", "colour(colour='red')", and "classifier(target=3)", which
still needs the classifier: `specs.parse(field, spec, REGISTRY)(module, params)`."""
