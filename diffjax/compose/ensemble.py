r"""Decentralized expert ensembles (McAllister, Tancik, Song & Kanazawa 2025, "Decentralized Diffusion
Models", arXiv:2501.05450): experts trained in isolation on disjoint partitions of the data, mixed at
sampling time by a router p(k | x_t, t).

**The mixture.** Let the data be p_0 = sum_k w_k p_{k,0}, partition k holding the share w_k of the
data (the partitions are disjoint). Under the forward process every part diffuses on its own, so
p_t = sum_k w_k p_{k,t}, and with gamma_k(x, t) = w_k p_{k,t}(x) / sum_j w_j p_{j,t}(x) = p(k | x_t = x)

    grad log p_t(x) = sum_k gamma_k(x, t) grad log p_{k,t}(x),

    E[x_0 | x_t = x] = sum_k p(k | x_t = x) E[x_0 | x_t = x, k] = sum_k gamma_k(x, t) x0_k(x, t).

Every view of a prediction (eps, x0, v, score, velocity) is an affine function of the score at fixed
(x, t) with coefficients set by the schedule alone, so when all experts share one schedule, mixing
each view with the same convex weights gamma gives the same mixed model, and its views stay
consistent (alpha x0 + sigma eps = x whenever each expert's are). The paper's "Decentralized Flow
Matching" is this identity for the flow (velocity) view: the marginal flow is the router-weighted
sum of the experts' flows. An ensemble is therefore a denoiser like any other, usable by every solver,
guidance and steering method (`ensemble(experts, router)`).

**Routers** return log gamma (B, K):
- `exact_router(mixtures, weights, schedule)`: exact `GaussianMixture` experts with their data shares,
  log gamma_k = log w_k + log p_{k,t}(x) - logsumexp_j(...); with it an ensemble of the experts'
  exact denoisers is the full mixture's exact denoiser (`partition_mixture` splits a mixture).
- `classifier_router(module, params, schedule)`: the paper's learned router, a noise-conditional
  classifier over partition indices, fed (x_t, schedule.model_time(t)) as
  `training.classifier_loss(schedule)` trains it (`steering.rewards.classifier_logits`), gamma =
  softmax(logits). Trained on the union of the partitions with label = partition index, its Bayes
  optimum is exactly p(k | x_t), data shares included. `logits_router(logits_fn)` takes any logits.

**Sparse routing.** The paper also samples with only the top-k experts' weights kept and renormalised
(`top_k`; None, the default, is the full ensemble, the exact mixture). Every expert is still evaluated
(a fixed-shape program has no data-dependent gather of networks), so top_k changes the result, not the
cost: one ensemble call costs one router call plus K expert calls (a solver's NFE counts ensemble
calls).

**Numerics.** A NaN router log-weight is treated as -inf (that expert gets weight 0); a row whose
weights are all -inf gets uniform weights (no information: the plain average), never NaN.
Nothing here was taken from official code (none is public); the identities above are the paper's
Eq. for decentralized flow matching and are checked exactly in `tests/test_ensemble.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, as_pytree
from diffjax.data.gaussian_mixture import GaussianMixture
from diffjax.denoiser import Prediction
from diffjax.schedules import Schedule, same_schedule
from diffjax.steering import rewards


def _normalise(log_w):
    """log_softmax over the last axis, NaN as -inf, all -inf rows uniform, +inf entries sharing the mass."""
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    has_inf = jnp.any(log_w == jnp.inf, axis=-1, keepdims=True)
    log_w = jnp.where(has_inf, jnp.where(log_w == jnp.inf, 0.0, -jnp.inf), log_w)
    empty = jnp.all(log_w == -jnp.inf, axis=-1, keepdims=True)
    return jax.nn.log_softmax(jnp.where(empty, 0.0, log_w), axis=-1)


@struct.dataclass(eq=False)
class ExactRouter(Value):
    """log p(k | x_t) of exact `GaussianMixture` experts; build it with `exact_router`.

    Attributes:
      mixtures: the experts' data distributions, one `GaussianMixture` per expert (pytree leaves).
      log_weights: log w_k, the data shares, normalised (K,) (leaf).
      schedule: the forward process they diffuse under (pytree).
    """

    mixtures: tuple
    log_weights: jax.Array
    schedule: Schedule

    @property
    def num_experts(self) -> int:
        """The number of experts, one mixture each."""
        return len(self.mixtures)

    def __call__(self, x, t):
        t = jnp.asarray(t)
        logs = jnp.stack([m.log_prob(x, self.schedule, t) for m in self.mixtures], axis=-1)
        return _normalise(logs + self.log_weights).astype(x.dtype)


@struct.dataclass(eq=False)
class LogitsRouter(Value):
    """log softmax of a noise-conditional classifier's logits over the experts; build it with
    `classifier_router` or `logits_router`.

    Attributes:
      logits_fn: `logits_fn(x_t, t) -> (B, K)`, a value (`rewards.ClassifierLogits`, its parameters
        leaves) or an `arrays.Static` function (pytree).
      num_experts: K, or None when unknown (static).
    """

    logits_fn: Callable
    num_experts: int | None = struct.field(pytree_node=False, default=None)

    @property
    def schedule(self):
        """The schedule of the router's network, if it has one (None otherwise)."""
        return getattr(self.logits_fn, "schedule", None)

    def __call__(self, x, t):
        return _normalise(self.logits_fn(x, jnp.asarray(t)).astype(x.dtype))


@struct.dataclass(eq=False)
class Ensemble(Value):
    """A router-weighted mixture of expert denoisers; build it with `ensemble`.

    Attributes:
      experts: the K expert denoisers, each called as `expert(x, t, cond)` (pytree).
      router: `router(x, t) -> (B, K)` log-weights log gamma (pytree).
      cond: the experts' condition, set by `sample(cond=...)` (pytree; the router does not see it).
      top_k: keep only the k largest router weights per sample, renormalised, or None for all
        (static).
    """

    experts: tuple
    router: Any
    cond: Any = None
    top_k: int | None = struct.field(pytree_node=False, default=None)

    @property
    def schedule(self):
        """The experts' shared schedule."""
        return self.experts[0].schedule

    @property
    def num_experts(self) -> int:
        """The number of experts."""
        return len(self.experts)

    def log_weights(self, x, t) -> jax.Array:
        """log gamma_k(x, t) (B, K) as the ensemble mixes with them: the router's, normalised (NaN as
        -inf, rows without a finite weight uniform) and cut to top_k."""
        log_w = _normalise(jnp.broadcast_to(self.router(x, t), x.shape[:1] + (self.num_experts,)))
        if self.top_k is None or self.top_k == self.num_experts:
            return log_w
        kth = jax.lax.top_k(log_w, self.top_k)[0][..., -1:]
        return _normalise(jnp.where(log_w >= kth, log_w, -jnp.inf))

    def expert_predictions(self, x, t, cond=None) -> Prediction:
        """Every expert's prediction at (x, t), each view stacked as (B, K, *event)."""
        cond = self.cond if cond is None else cond
        preds = [expert(x, t, cond) for expert in self.experts]
        return Prediction(*(jnp.stack(views, axis=1) for views in zip(*preds)))

    def __call__(self, x, t, cond=None) -> Prediction:
        t = jnp.asarray(t)
        gamma = jnp.exp(self.log_weights(x, t))
        gamma = gamma.reshape(gamma.shape + (1,) * (x.ndim - 1))
        preds = self.expert_predictions(x, t, cond)
        return Prediction(*(jnp.sum(gamma * view, axis=1).astype(x.dtype) for view in preds))


def _check_mixtures(mixtures) -> tuple:
    if isinstance(mixtures, GaussianMixture) or not isinstance(mixtures, Sequence) or len(mixtures) < 2:
        raise ValueError(f"mixtures must be a sequence of >= 2 GaussianMixture experts, got {mixtures!r}")
    for k, m in enumerate(mixtures):
        if not isinstance(m, GaussianMixture):
            raise ValueError(f"mixtures[{k}] must be a GaussianMixture, got {m!r}")
        if m.dim != mixtures[0].dim:
            raise ValueError(f"mixtures[{k}] has dimension {m.dim}, mixtures[0] has {mixtures[0].dim}")
    return tuple(mixtures)


def _check_weights(weights, num: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64) if not isinstance(weights, (str, bytes)) else None
    if w is None or w.shape != (num,) or not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise ValueError(f"weights must be {num} finite positive numbers (one per expert), got {weights!r}")
    return w / w.sum()


def exact_router(mixtures: Sequence[GaussianMixture], weights, schedule: Schedule) -> ExactRouter:
    """The exact router p(k | x_t) of `GaussianMixture` experts with data shares `weights`.

    Args:
      mixtures: K >= 2 `GaussianMixture`s of one dimension, the experts' data distributions.
      weights: K finite positive data shares w_k (normalised here).
      schedule: the forward process.

    Returns:
      An `ExactRouter`: log gamma_k = log w_k + log p_{k,t}(x) - logsumexp_j (log w_j + log p_{j,t}(x)).

    Raises:
      ValueError: if `mixtures` is not >= 2 mixtures of one dimension, `weights` is not K finite
        positive numbers or `schedule` is not a diffjax schedule.
    """
    mixtures = _check_mixtures(mixtures)
    w = _check_weights(weights, len(mixtures))
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    return ExactRouter(mixtures, jnp.asarray(np.log(w)), schedule)


def logits_router(logits_fn: Callable, *, num_experts: int | None = None) -> LogitsRouter:
    """A router from any logits `logits_fn(x_t, t) -> (B, K)`: gamma = softmax(logits).

    Args:
      logits_fn: a value (its arrays leaves: new weights do not recompile) or any function (compiled
        once per function object). If it has a `.schedule` (e.g. `rewards.ClassifierLogits`),
        `ensemble` checks it against the experts'.
      num_experts: K, checked against the number of experts by `ensemble`, or None.

    Returns:
      A `LogitsRouter`.

    Raises:
      ValueError: if `logits_fn` is not callable or `num_experts` is not None or an integer >= 2.
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable as logits_fn(x_t, t) -> (B, K), got {logits_fn!r}")
    if num_experts is not None:
        num_experts = _checks.positive_int("num_experts", num_experts, 2)
    return LogitsRouter(as_pytree(logits_fn), num_experts)


def classifier_router(module: nn.Module, params, schedule: Schedule) -> LogitsRouter:
    """The learned router of Decentralized Diffusion Models: a noise-conditional classifier over the
    partition indices (a time-conditioned `models.Classifier`, or any Flax module called as
    `module.apply(params, x_t, time)`), trained by `training.classifier_loss(schedule)` on the union of
    the partitions with label = partition index (`data.digits.dataset(partitions=...)`).

    Args:
      module: the classifier; its `num_classes` (if it has one) is the number of experts.
      params: its variables (leaves: new weights do not recompile).
      schedule: the schedule it was trained on; it is fed (x_t, schedule.model_time(t)).

    Returns:
      A `LogitsRouter` over `rewards.classifier_logits(module, params, schedule=schedule)`.

    Raises:
      ValueError: if `module` is not a Flax module, `params` is None or `schedule` is not a schedule.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    logits = rewards.classifier_logits(module, params, schedule=schedule)
    num = getattr(module, "num_classes", None)
    return LogitsRouter(logits, int(num) if isinstance(num, (int, np.integer)) else None)


def ensemble(experts: Sequence, router, *, top_k: int | None = None) -> Ensemble:
    """Decentralized Diffusion Models' ensemble (McAllister et al. 2025): every view of the prediction is
    sum_k gamma_k(x, t) view_k(x, t), gamma = softmax of the router's log-weights (module docstring).

    Args:
      experts: K >= 2 denoisers (`Denoiser`s or any values callable as `expert(x, t, cond)` with a
        `.schedule`), all on one schedule.
      router: `router(x, t) -> (B, K)` log-weights: `exact_router`, `classifier_router`,
        `logits_router`, or any callable (wrapped as `arrays.Static`).
      top_k: None (the full ensemble: the exact mixture for exact experts and router) or an integer
        1 <= top_k <= K: keep only the top_k router weights per sample, renormalised (the paper's sparse
        routing; every expert is still evaluated).

    Returns:
      An `Ensemble` denoiser (a value: equal experts and routers share one compiled sampler, new
      weights do not recompile), with `.schedule`, `log_weights(x, t)` and `expert_predictions`.

    Raises:
      ValueError: if there are fewer than 2 experts, an expert is not callable with a `.schedule`, the
        experts' schedules differ (naming the first that differs from experts[0]'s), the router is not
        callable, its number of experts or its schedule does not match, or `top_k` is out of range.
    """
    if not isinstance(experts, Sequence) or isinstance(experts, (str, bytes)) or len(experts) < 2:
        raise ValueError(f"experts must be a sequence of >= 2 denoisers, got {experts!r}")
    for k, expert in enumerate(experts):
        if not callable(expert) or not isinstance(getattr(expert, "schedule", None), Schedule):
            raise ValueError(f"experts[{k}] must be callable as expert(x, t, cond) with a .schedule, got {expert!r}")
        if not same_schedule(expert.schedule, experts[0].schedule):
            raise ValueError(f"experts[{k}].schedule must equal experts[0].schedule (one forward process), got "
                             f"{expert.schedule!r} and {experts[0].schedule!r}")  # fmt: skip
    if not callable(router):
        raise ValueError(f"router must be callable as router(x, t) -> (B, K) log-weights, got {router!r}")
    num = getattr(router, "num_experts", None)
    if num is not None and num != len(experts):
        raise ValueError(f"router routes over {num} experts, but {len(experts)} experts were given")
    sched = getattr(router, "schedule", None)
    if sched is not None and not same_schedule(sched, experts[0].schedule):
        raise ValueError(f"router.schedule must equal the experts' schedule, got {sched!r} and "
                         f"{experts[0].schedule!r}")  # fmt: skip
    if top_k is not None:
        top_k = _checks.positive_int("top_k", top_k)
        if top_k > len(experts):
            raise ValueError(f"top_k must be None or at most the number of experts {len(experts)}, got {top_k}")
    return Ensemble(tuple(experts), as_pytree(router), None, top_k)


def partition_mixture(mixture: GaussianMixture, groups: Sequence[Sequence[int]]):
    """Split a mixture's components into disjoint groups: the experts' data and their shares.

    Args:
      mixture: sum_j w_j N(m_j, diag(s_j^2)).
      groups: K >= 2 disjoint non-empty sequences of component indices covering all components.

    Returns:
      (mixtures, weights): K `GaussianMixture`s (group k's components, weights renormalised) and the
      (K,) shares W_k = sum_{j in group k} w_j, so that mixture = sum_k W_k mixtures[k].

    Raises:
      ValueError: if `groups` is not a partition of range(len(mixture.weights)) into >= 2 groups.
    """
    n = int(mixture.weights.shape[0])
    try:
        flat = sorted(int(j) for group in groups for j in group)
        ok = len(groups) >= 2 and all(len(group) for group in groups) and flat == list(range(n))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"groups must split the component indices 0..{n - 1} into >= 2 disjoint non-empty groups, "
                         f"got {groups!r}")  # fmt: skip
    w, means, scales = (np.asarray(a) for a in (mixture.weights, mixture.means, mixture.scales))
    parts = tuple(GaussianMixture(w[list(g)] / w[list(g)].sum(), means[list(g)], scales[list(g)]) for g in groups)
    return parts, np.array([w[list(g)].sum() for g in groups])


def exact_ensemble(mixture: GaussianMixture, groups: Sequence[Sequence[int]], schedule: Schedule, *,
                   top_k: int | None = None) -> Ensemble:  # fmt: skip
    """The exact decentralized ensemble of a partitioned mixture: the exact denoisers of
    `partition_mixture(mixture, groups)` with their `exact_router`. With top_k None it equals
    `mixture.denoiser(schedule)` pointwise (up to rounding).

    Args:
      mixture: the full data distribution.
      groups: the partition of its components (`partition_mixture`).
      schedule: the forward process.
      top_k: as for `ensemble`.

    Returns:
      An `Ensemble`.

    Raises:
      ValueError: as `partition_mixture`, `exact_router` and `ensemble`.
    """
    parts, weights = partition_mixture(mixture, groups)
    return ensemble([m.denoiser(schedule) for m in parts], exact_router(parts, weights, schedule), top_k=top_k)
