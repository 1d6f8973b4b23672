r"""Verifiers for inference-time search (Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps"): a verifier scores samples, `verifier(x, cond) -> (N,)`, higher is
better, exactly like a steering reward, so every builder in `rewards` is a verifier too
(`rewards.class_log_prob` for a classifier's supervised score, `rewards.colour_fraction` for an
attribute check, `rewards.linear` / `rewards.quadratic` for analytic tests). Added here:

- `feature_similarity`: the self-supervised verifier, cosine similarity of a feature extractor's
  features to a target's (a fixed vector, or per sample through the condition);
- `ensemble`: several verifiers made comparable through a reference sample (for example unsteered
  samples), by the mean of their reference ranks (empirical CDFs) or of their z-scores. Both are
  per-sample functions, so a sample's score does not depend on the batch it is scored in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from diffjax import _checks

ENSEMBLE_MODES = ("rank", "zscore")


def feature_similarity(features_fn: Callable, target=None) -> Callable:
    """cos(features_fn(x), target): `target` a feature vector (F,), or None to take each sample's
    target features from the condition (cond (N, F))."""
    if not callable(features_fn):
        raise ValueError(f"features_fn must be callable as features_fn(x) -> (N, F), got {features_fn!r}")
    fixed = None if target is None else np.asarray(target, dtype=np.float64)
    if fixed is not None and (fixed.ndim != 1 or not np.all(np.isfinite(fixed)) or not np.any(fixed)):
        raise ValueError(f"target must be a finite, non-zero feature vector (F,), got {target!r}")

    def verifier(x, cond=None):
        f = features_fn(x).astype(x.dtype)
        t = jnp.asarray(fixed if fixed is not None else cond, f.dtype)
        if t is None:
            raise ValueError("feature_similarity without a target needs cond = target features (N, F)")
        t = jnp.broadcast_to(t, f.shape)
        unit = lambda a: a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        return jnp.sum(unit(f) * unit(t), axis=-1)

    return verifier


def ensemble(verifiers: Sequence[Callable], reference, *, mode: str = "rank", reference_cond=None) -> Callable:
    """The mean over `verifiers` of each one's score made comparable on `reference` (N_ref, *event):
    "rank" maps a score s to the fraction of reference scores below it (0..1), "zscore" to
    (s - mean) / sd of the reference scores. Ma et al.'s ensemble averages ranks."""
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

    def verifier(x, cond=None):
        total = 0.0
        for v, ref in zip(verifiers, stats):
            s = v(x, cond)
            if mode == "rank":
                total = total + jnp.searchsorted(jnp.asarray(ref, s.dtype), s, side="left") / ref.size
            else:
                total = total + (s - ref.mean()) / ref.std()
        return jnp.asarray(total) / len(verifiers)

    return verifier


def constant(value: float = 0.0) -> Callable:
    """Every sample scores `value`: search with it must sample as plain sampling does."""
    value = _checks.finite("value", value)

    def verifier(x, cond=None):
        del cond
        return jnp.full(x.shape[:1], value, x.dtype)

    return verifier
