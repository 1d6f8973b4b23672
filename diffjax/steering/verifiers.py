r"""Verifiers for inference-time search (Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps"): a verifier scores samples, `verifier(x, cond) -> (N,)`, higher is
better, exactly like a steering reward, so every builder in `rewards` is a verifier too
(`rewards.classifier_reward` for a classifier's supervised score, `rewards.colour_fraction` for an
attribute check, `rewards.linear` / `rewards.quadratic` for analytic tests). Added here:

- `feature_similarity`: the self-supervised verifier, cosine similarity of a feature extractor's
  features (e.g. `rewards.classifier_features`) to a target's (a fixed vector, or per sample
  through the condition);
- `ensemble`: several verifiers made comparable through a reference sample (for example unsteered
  samples), by the mean of their reference ranks (empirical CDFs) or of their z-scores. Both are
  per-sample functions, so a sample's score does not depend on the batch it is scored in;
- `constant`: the verifier that prefers nothing.

Like the rewards, each builder returns a `rewards.Value`: a pytree whose arrays (target features,
reference statistics, a feature extractor's parameters) are leaves and whose options are static,
so a jitted search compiles once for all verifiers of one kind and shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import as_pytree
from diffjax.steering.rewards import Value

ENSEMBLE_MODES = ("rank", "zscore")


def _unit(a):
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


@struct.dataclass(eq=False)
class FeatureSimilarity(Value):
    """cos(features_fn(x), target), the target fixed or each sample's condition (N, F).

    Attributes:
      features_fn: `features_fn(x) -> (N, F)`, a value (`rewards.classifier_features`) or an
        `arrays.Static` function (pytree).
      target: the target feature vector (F,), or None to read targets from the condition (leaf).
    """

    features_fn: Callable
    target: jax.Array | None = None

    def __call__(self, x, cond=None):
        f = self.features_fn(x).astype(x.dtype)
        target = self.target if self.target is not None else cond
        if target is None:
            raise ValueError("feature_similarity without a target needs cond = target features (N, F)")
        t = jnp.broadcast_to(jnp.asarray(target, f.dtype), f.shape)
        return jnp.sum(_unit(f) * _unit(t), axis=-1)


def feature_similarity(features_fn: Callable, target=None) -> FeatureSimilarity:
    """The self-supervised verifier of Ma et al.: cosine similarity of samples' features to a
    target's.

    Args:
      features_fn: `features_fn(x) -> (N, F)`, a value (`rewards.classifier_features`: parameters
        traced, not compiled in) or any function.
      target: a finite, non-zero feature vector (F,), or None to take each sample's target features
        from the condition (cond (N, F)).

    Returns:
      A `FeatureSimilarity` verifier `verifier(x, cond=None) -> (N,)` in [-1, 1].

    Raises:
      ValueError: if `features_fn` is not callable or `target` is not a finite non-zero vector;
        when called without a target and without cond.
    """
    if not callable(features_fn):
        raise ValueError(f"features_fn must be callable as features_fn(x) -> (N, F), got {features_fn!r}")
    fixed = None
    if target is not None:
        fixed = np.asarray(target, dtype=np.float64)
        if fixed.ndim != 1 or not np.all(np.isfinite(fixed)) or not np.any(fixed):
            raise ValueError(f"target must be a finite, non-zero feature vector (F,), got {target!r}")
        fixed = jnp.asarray(fixed)
    return FeatureSimilarity(as_pytree(features_fn), fixed)


@struct.dataclass(eq=False)
class Ensemble(Value):
    """The mean over `verifiers` of each one's score made comparable on a reference sample.

    Attributes:
      verifiers: the verifiers, a tuple of values or `arrays.Static` functions (pytree).
      scores: per verifier, its sorted reference scores (N_ref,) (leaves).
      means: the reference scores' means (V,) (leaf).
      stds: the reference scores' standard deviations (V,) (leaf).
      mode: "rank" or "zscore" (static).
    """

    verifiers: tuple
    scores: tuple
    means: jax.Array
    stds: jax.Array
    mode: str = struct.field(pytree_node=False, default="rank")

    def __call__(self, x, cond=None):
        total = 0.0
        for i, (v, ref) in enumerate(zip(self.verifiers, self.scores)):
            s = v(x, cond)
            if self.mode == "rank":
                below = jnp.searchsorted(jnp.asarray(ref, s.dtype), s, side="left")
                total = total + below.astype(s.dtype) / ref.shape[0]
            else:
                total = total + (s - self.means[i].astype(s.dtype)) / self.stds[i].astype(s.dtype)
        return jnp.asarray(total) / len(self.verifiers)


def ensemble(verifiers: Sequence[Callable], reference, *, mode: str = "rank", reference_cond=None) -> Ensemble:
    """Several verifiers made comparable on a reference sample and averaged (Ma et al.'s ensemble
    averages ranks).

    "rank" maps a verifier's score s to the fraction of its reference scores below s (0..1),
    "zscore" to (s - mean) / sd of its reference scores. The verifiers are evaluated on the
    reference once, here, on the host.

    Args:
      verifiers: a non-empty sequence of verifiers `verifier(x, cond) -> (N,)` (values or functions).
      reference: a reference sample (N_ref, *event), N_ref >= 2, for example unsteered samples.
      mode: "rank" or "zscore".
      reference_cond: the condition passed with the reference, or None.

    Returns:
      An `Ensemble` verifier `verifier(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `verifiers` is empty or holds a non-callable, `mode` is not one of
        `ENSEMBLE_MODES`, a verifier's reference scores are fewer than 2 or not finite, or (for
        "zscore") constant.
    """
    if not verifiers or not all(callable(v) for v in verifiers):
        raise ValueError(f"verifiers must be a non-empty sequence of callables, got {verifiers!r}")
    _checks.one_of("mode", mode, ENSEMBLE_MODES)
    stats = []
    for v in verifiers:
        scores = np.sort(np.asarray(v(jnp.asarray(reference), reference_cond), dtype=np.float64))
        if scores.size < 2 or not np.all(np.isfinite(scores)):
            raise ValueError("every verifier must give finite scores on at least 2 reference samples")
        if mode == "zscore" and scores.std() == 0:
            raise ValueError("a verifier is constant on the reference: its z-score is undefined")
        stats.append(scores)
    return Ensemble(
        tuple(as_pytree(v) for v in verifiers),
        tuple(jnp.asarray(s) for s in stats),
        jnp.asarray([s.mean() for s in stats]),
        jnp.asarray([s.std() for s in stats]),
        mode,
    )


@struct.dataclass(eq=False)
class Constant(Value):
    """Every sample scores `value`.

    Attributes:
      value: the score (leaf).
    """

    value: float

    def __call__(self, x, cond=None):
        del cond
        return jnp.full(x.shape[:1], self.value, x.dtype)


def constant(value: float = 0.0) -> Constant:
    """The verifier that prefers nothing: search with it must sample as plain sampling does.

    Args:
      value: the finite score of every sample.

    Returns:
      A `Constant` verifier `verifier(x, cond=None) -> (N,)`.

    Raises:
      ValueError: if `value` is not finite.
    """
    return Constant(_checks.finite("value", value))
