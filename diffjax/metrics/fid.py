r"""Feature-space sample quality: Fréchet distance (FID-style) and kernel inception distance (KID-style).

Features are whatever the caller extracts, (N, D) per set. diffjax ships no Inception network:
the project trains its own classifiers on digits and shapes, so numbers computed with their
features are "digits-FID" / "shapes-KID", comparable only with numbers from the same feature
extractor, never with published Inception FID. Everything runs on the host in float64 numpy.

- Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a
  local Nash equilibrium", NeurIPS; Dowson & Landau 1982 for the Gaussian formula).
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs", ICLR): unbiased MMD^2 with the cubic
  polynomial kernel, averaged over random subsets.
"""

import jax
import numpy as np

from diffjax import _checks
from diffjax.metrics.distances import unbiased_mmd2


def _features(name: str, features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2 or not np.all(np.isfinite(features)):
        raise ValueError(f"{name} must be finite (N, D) features with N >= 2, got shape {features.shape}")
    return features


def _feature_pair(features_x, features_y):
    fx, fy = _features("features_x", features_x), _features("features_y", features_y)
    if fx.shape[1] != fy.shape[1]:
        raise ValueError(f"features_x and features_y must have the same width, got {fx.shape[1]} and {fy.shape[1]}")
    return fx, fy


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64."""
    features = _features("features", features)
    return features.mean(0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root by eigendecomposition (eigenvalues below 0 from rounding -> 0)."""
    eigenvalues, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance_gaussians(mean_x, cov_x, mean_y, cov_y) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between N(mean_x, cov_x) and N(mean_y, cov_y):

    |mean_x - mean_y|^2 + tr(cov_x) + tr(cov_y) - 2 tr((cov_x^{1/2} cov_y cov_x^{1/2})^{1/2}).

    The trace term is tr((cov_x cov_y)^{1/2}) written with the symmetric PSD matrix
    cov_x^{1/2} cov_y cov_x^{1/2}, whose eigenvalues are real and >= 0 (rounding is clipped), so no
    complex ``sqrtm`` and no regularising epsilon are needed. Well-conditioned inputs give about
    1e-12 relative accuracy; near a singular covariance the trace term is only Hölder-1/2 in the
    inputs, so their rounding (1e-16) can move it by about 1e-8.
    """
    mean_x, mean_y = (np.asarray(m, np.float64) for m in (mean_x, mean_y))
    cov_x, cov_y = (np.asarray(c, np.float64) for c in (cov_x, cov_y))
    d = mean_x.shape[0]
    if mean_x.shape != (d,) or mean_y.shape != (d,) or cov_x.shape != (d, d) or cov_y.shape != (d, d):
        raise ValueError(
            f"means must be (D,) and covariances (D, D) with one D, got shapes "
            f"{mean_x.shape}, {cov_x.shape}, {mean_y.shape}, {cov_y.shape}"
        )
    root_x = _sqrt_psd(cov_x)
    product = root_x @ cov_y @ root_x
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (product + product.T)), 0.0, None)).sum()
    return float(np.sum((mean_x - mean_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * cross)


def frechet_distance(features_x, features_y) -> float:
    """FID-style score: `frechet_distance_gaussians` between Gaussians fitted to two (N, D) feature sets."""
    fx, fy = _feature_pair(features_x, features_y)
    return frechet_distance_gaussians(*gaussian_stats(fx), *gaussian_stats(fy))


def _subsets(key, n: int, size: int, count: int) -> np.ndarray:
    """(count, size) row indices, each row drawn from range(n) without replacement."""
    draw = lambda k: jax.random.choice(k, n, (size,), replace=False)
    return np.asarray(jax.vmap(draw)(jax.random.split(key, count)))


def kid(key, features_x, features_y, *, num_subsets: int = 100, subset_size: int | None = None) -> float:
    r"""KID-style score: the mean over ``num_subsets`` random subsets of the unbiased MMD^2
    (`unbiased_mmd2`) with the kernel k(a, b) = (a.b / D + 1)^3.

    Each subset takes ``subset_size`` rows of each set without replacement (default
    min(1000, N_x, N_y), as in Bińkowski et al.), chosen with keys split from ``key``. The estimate
    is unbiased for each subset, so it is about 0 (either sign) when the two laws agree.
    """
    _checks.typed_key("key", key)
    _checks.positive_int("num_subsets", num_subsets)
    fx, fy = _feature_pair(features_x, features_y)
    smaller = min(len(fx), len(fy))
    size = min(1000, smaller) if subset_size is None else _checks.positive_int("subset_size", subset_size, 2)
    if size > smaller:
        raise ValueError(f"subset_size must be <= the smaller set's size {smaller}, got {size}")
    kernel = lambda a, b: (a @ b.T / fx.shape[1] + 1.0) ** 3
    key_x, key_y = jax.random.split(key)
    scores = [
        unbiased_mmd2(kernel(fx[ix], fx[ix]), kernel(fy[iy], fy[iy]), kernel(fx[ix], fy[iy]))
        for ix, iy in zip(_subsets(key_x, len(fx), size, num_subsets), _subsets(key_y, len(fy), size, num_subsets))
    ]
    return float(np.mean(scores))
