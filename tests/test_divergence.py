"""Trace estimators on explicit matrices, f(x) = x A^T per sample (Jacobian A), where tr A is known.

T-HPP (Meyer et al. 2021): Hutch++ with m matvecs is exact for rank A <= ceil(m/3) for every key
(1e-10: float64 rounding of a QR and a few products) with Gaussian sketches (a Rademacher sketch S of
a rank-r matrix has a singular V^T S with positive probability, about 2^-(d-1) per pair of equal or
opposite columns: seen once in 400 keys at d = 12, r = 2, where the estimate is then only unbiased).
On diag(1/i^2), d = 100, its variance is well below Hutchinson's at the same m with Gaussian probes
(Rademacher ones are exact on any diagonal matrix; Gaussian Hutchinson's variance is 2 sum_i
lambda_i^2 / m, and Hutch++ removes the top eigenvalues from it: asserted as a factor of 5). It is
unbiased for a nonsymmetric A (the mean over 400 keys within 5 standard errors). Hutchinson: the
mean over many probe sets within 5 SE of tr A, and its sample variance within 5 SE of the exact
variance 2 ||S||_F^2 / K (Gaussian probes) or 2 (||S||_F^2 - sum_i S_ii^2) / K (Rademacher), S the
symmetric part of A, at K = 1 and K = 8 (the SE of a sample variance from the sample's fourth
central moment, sqrt((m4 - s^4) / n): the estimates are far from normal, so normal-theory F bounds
on a variance ratio are too narrow). Every test draws its matrix from its own seed, so the result
does not depend on which tests an xdist worker ran before it.
The exact divergence is checked to rounding against tr A.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax.likelihood as lik

N_KEYS = 400


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape)


def _linear(a):
    a = jnp.asarray(a)
    return lambda x: x @ a.T


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _estimates(estimator, a, num, dist="rademacher", seed=0, **kwargs):
    """The estimator's value on N_KEYS probe draws (one sample, batch 1)."""
    x = jnp.ones((1, a.shape[0]))
    f = _linear(a)

    @jax.jit
    def one(key):
        return estimator(f, x, lik.probes(key, num, x, dist), **kwargs)[1][0]

    return np.asarray(jax.vmap(one)(_keys(N_KEYS, seed)))


def test_exact_divergence_is_the_trace_per_sample():
    a = jnp.asarray(_normal(0, 2, 5, 5))  # a different matrix for each of two samples
    x = jnp.asarray(_normal(1, 2, 5))
    fx, div = lik.exact(lambda y: jnp.einsum("bij,bj->bi", a, y) + jnp.sin(y), x)
    np.testing.assert_allclose(div, jnp.trace(a, axis1=1, axis2=2) + jnp.cos(x).sum(1), rtol=1e-12)
    fx_img, div_img = lik.exact(lambda y: y**2, x.reshape(2, 5, 1))  # any event shape
    np.testing.assert_allclose(div_img, 2 * x.sum(1), rtol=1e-12)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_exact_variance_over_k(dist):
    a = _normal(2, 6, 6)
    sym = (a + a.T) / 2
    var_one = 2 * (np.sum(sym**2) - (np.sum(np.diag(sym) ** 2) if dist == "rademacher" else 0.0))
    for k, seed in ((1, 0), (8, 1)):
        est = _estimates(lik.hutchinson, a, k, dist, seed=seed)
        assert abs(est.mean() - np.trace(a)) < 5 * est.std(ddof=1) / np.sqrt(N_KEYS)
        s2, m4 = est.var(ddof=1), np.mean((est - est.mean()) ** 4)
        assert abs(s2 - var_one / k) < 5 * np.sqrt((m4 - s2**2) / N_KEYS), (k, s2, var_one / k)
    vjp = _estimates(lik.hutchinson, a, 8, dist, seed=1, mode="vjp")
    np.testing.assert_allclose(vjp, est, rtol=1e-10)  # z^T (J z) = (z^T J) z


@pytest.mark.parametrize("m", [3, 6, 9, 10])
def test_hutch_plus_plus_is_exact_for_low_rank_matrices_for_every_key(m):
    d, rank = 12, -(-m // 3)
    a = _normal(3, d, rank) @ _normal(4, rank, d)  # nonsymmetric, rank ceil(m/3)
    est = _estimates(lik.hutch_plus_plus, a, m, "gaussian")
    np.testing.assert_allclose(est, np.trace(a), atol=1e-10, rtol=0)


def test_non_adaptive_hutch_plus_plus_is_exact_for_rank_up_to_m_over_6():
    d, m = 12, 12
    a = _normal(5, d, 2) @ _normal(6, 2, d)  # rank 2 = ceil(12/6), nonsymmetric
    est = _estimates(lik.hutch_plus_plus, a, m, "gaussian", adaptive=False)
    np.testing.assert_allclose(est, np.trace(a), atol=1e-9, rtol=0)


def test_hutch_plus_plus_has_lower_variance_than_hutchinson_on_a_decaying_spectrum():
    d, m = 100, 30
    a = np.diag(1.0 / np.arange(1, d + 1) ** 2)  # trace 1.6349839
    hpp = _estimates(lik.hutch_plus_plus, a, m, "gaussian")  # Rademacher probes are exact on a diagonal matrix
    hutch = _estimates(lik.hutchinson, a, m, "gaussian")
    np.testing.assert_allclose(np.trace(a), 1.6349839, rtol=1e-7)
    for est in (hpp, hutch):
        assert abs(est.mean() - np.trace(a)) < 5 * est.std(ddof=1) / np.sqrt(N_KEYS)
    assert hpp.var() < hutch.var() / 5, (hpp.var(), hutch.var())


@pytest.mark.parametrize("adaptive", [True, False])
def test_hutch_plus_plus_is_unbiased_for_a_nonsymmetric_matrix(adaptive):
    a = _normal(7, 30, 30)
    est = _estimates(lik.hutch_plus_plus, a, 9, adaptive=adaptive)
    se = est.std(ddof=1) / np.sqrt(N_KEYS)
    assert abs(est.mean() - np.trace(a)) < 5 * se, (est.mean(), np.trace(a), se)


def test_too_small_a_hutch_plus_plus_budget_is_refused():
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match="len\\(z\\)"):
        lik.hutch_plus_plus(lambda y: y, x, lik.probes(jax.random.key(0), 2, x))
    with pytest.raises(ValueError, match="mode"):
        lik.hutchinson(lambda y: y, x, lik.probes(jax.random.key(0), 2, x), mode="forward")
