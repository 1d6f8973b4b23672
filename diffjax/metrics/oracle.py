"""Scores of samples against the exact marginal of a `GaussianMixture` at a known time."""

import jax.numpy as jnp
import numpy as np


def mixture_scores(gmm, x, schedule, t) -> dict:
    """Exact-oracle scores of samples x of p_t:

    - mean_log_p: mean exact log p_t(x) (compare with the same mean over exact samples);
    - mode_tv: total variation between the mode weights (each sample assigned to its likeliest
      component) and the true weights;
    - std_rel_err: worst relative error of a within-mode, per-dimension standard deviation
      against sqrt(alpha^2 s_k^2 + sigma^2).
    """
    comp = np.asarray(jnp.argmax(gmm.posterior(x, schedule, t), axis=-1))
    x = np.asarray(x)
    k = len(gmm.weights)
    weights = np.bincount(comp, minlength=k) / len(comp)
    mode_std = np.sqrt(float(schedule.alpha(t)) ** 2 * np.asarray(gmm.scales) ** 2 + float(schedule.sigma(t)) ** 2)
    std_err = max(
        (float(np.max(np.abs(x[comp == j].std(0) / mode_std[j] - 1.0))) for j in range(k) if np.sum(comp == j) > 1),
        default=float("inf"),
    )
    return {
        "mean_log_p": float(jnp.mean(gmm.log_prob(x, schedule, t))),
        "mode_tv": float(0.5 * np.abs(weights - np.asarray(gmm.weights)).sum()),
        "std_rel_err": std_err,
    }
