"""Two-sample distances and feature-space scores against closed forms for Gaussians.

Monte-Carlo checks average an estimator over R independent draws and allow 4 standard errors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj

M = dj.metrics


def _draws(estimator, *, repeats, n, dim, shift):
    """estimator(x, y) for R independent pairs x ~ N(0, I), y ~ N(shift, I), each (n, dim)."""

    def one(key):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (n, dim), jnp.float64)
        return estimator(x, jax.random.normal(ky, (n, dim), jnp.float64) + shift)

    return np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(0), repeats)))


def _assert_mean_within_mc_error(values, expected):
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - expected) < 4 * se, (values.mean(), expected, se)


# --- MMD^2 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_mmd2_is_unbiased_for_the_closed_form_between_gaussians(shift):
    # With h = 1, X ~ N(0, I_2), Y ~ N(mu, I_2): E k(X, X') = E k(Y, Y') = (h^2 / (h^2 + 2))^(d/2) = 1/3 and
    # E k(X, Y) = (1/3) exp(-|mu|^2 / (2 (h^2 + 2))), so MMD^2 = (2/3) (1 - exp(-|mu|^2 / 6)).
    mu = jnp.array([shift, 0.0])
    values = _draws(lambda x, y: M.mmd2(x, y, bandwidth=1.0), repeats=400, n=50, dim=2, shift=mu)
    expected = (2 / 3) * (1 - math.exp(-(shift**2) / 6))
    _assert_mean_within_mc_error(values, expected)
    # The biased (V-statistic) version would sit 2 (1 - 1/3) / 50 = 0.027 higher, far outside that error.
    assert 4 * values.std(ddof=1) / math.sqrt(len(values)) < 0.01


def test_mmd2_median_heuristic():
    x, y = jnp.array([[0.0], [1.0]]), jnp.array([[3.0], [7.0]])
    assert float(M.median_bandwidth(x, y)) == 3.5  # pooled distances 1, 2, 3, 4, 6, 7
    key_x, key_y = jax.random.split(jax.random.key(1))
    x, y = jax.random.normal(key_x, (300, 3)), jax.random.normal(key_y, (300, 3)) + 1.0
    h = float(M.median_bandwidth(x, y))
    np.testing.assert_allclose(M.mmd2(x, y), M.mmd2(x, y, bandwidth=h), rtol=1e-12)
    assert float(M.mmd2(x, y)) > 0.1


# --- sliced W_2 ------------------------------------------------------------------------------------


def test_sliced_w2_in_one_dimension_is_the_sorted_w2_and_a_shift_gives_m_squared():
    n, m = 20_000, 1.5
    key_x, key_y = jax.random.split(jax.random.key(2))
    x = np.asarray(jax.random.normal(key_x, (n, 1), jnp.float64))
    y = np.asarray(jax.random.normal(key_y, (n, 1), jnp.float64)) + m
    value = float(M.sliced_w2_squared(jax.random.key(3), x, y, num_projections=4))
    np.testing.assert_allclose(value, np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2), rtol=1e-12)
    # W_2^2 = m^2 - 2 m mean(x - y + m) + W_2^2(x, y - m): the middle term has std 2 m sqrt(2 / n) and the
    # last, the W_2^2 between two samples of one law, is O(log log n / n), well below 0.01 here.
    assert abs(value - m**2) < 4 * 2 * m * math.sqrt(2 / n) + 0.01


def test_sliced_w2_of_an_exact_shift_averages_the_squared_projected_shift():
    # y = x + mu exactly, so each direction theta gives W_2^2 = (theta . mu)^2, whose mean over the sphere
    # in 3-D is |mu|^2 / 3 and whose variance is |mu|^4 (1/5 - 1/9) (theta . e ~ U[-1, 1] in 3-D).
    x = jax.random.normal(jax.random.key(4), (500, 3), jnp.float64)
    mu = jnp.array([1.0, -2.0, 0.5])
    p = 4000
    value = float(M.sliced_w2_squared(jax.random.key(5), x, x + mu, num_projections=p))
    norm2 = float(mu @ mu)
    assert abs(value - norm2 / 3) < 4 * norm2 * math.sqrt(4 / 45) / math.sqrt(p)
    assert float(M.sliced_w2_squared(jax.random.key(5), x, x)) == 0.0  # the same sorted projections


# --- energy distance -------------------------------------------------------------------------------


def _mean_abs_normal(mean, std):
    """E|Z| for Z ~ N(mean, std^2)."""
    return std * math.sqrt(2 / math.pi) * math.exp(-(mean**2) / (2 * std**2)) + mean * (
        1 - 2 * stats.norm.cdf(-mean / std)
    )


def test_energy_distance_is_zero_for_identical_samples_and_matches_scipy():
    x = np.asarray(jax.random.normal(jax.random.key(6), (400, 1), jnp.float64))
    y = np.asarray(jax.random.normal(jax.random.key(7), (300, 1), jnp.float64)) + 0.7
    assert abs(float(M.energy_distance(x, x))) < 1e-14  # zero up to the rounding of the three means
    np.testing.assert_allclose(M.energy_distance(x, y), stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rtol=1e-9)


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_energy_distance_matches_its_closed_form_for_two_gaussians(shift):
    # D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| with X - Y ~ N(-m, 2) and X - X' ~ N(0, 2). The V-statistic
    # counts the n zero diagonal pairs, so its mean is D^2 + (E|X - X'| + E|Y - Y'|) / n.
    n = 200
    values = _draws(M.energy_distance, repeats=200, n=n, dim=1, shift=shift)
    within = _mean_abs_normal(0.0, math.sqrt(2))
    expected = 2 * _mean_abs_normal(shift, math.sqrt(2)) - 2 * within + 2 * within / n
    _assert_mean_within_mc_error(values, expected)


def test_energy_distance_grows_with_the_shift():
    x = jax.random.normal(jax.random.key(8), (500, 2), jnp.float64)
    y = jax.random.normal(jax.random.key(9), (500, 2), jnp.float64)
    values = [float(M.energy_distance(x, y + jnp.array([s, 0.0]))) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] < 0.01


# --- Fréchet distance ------------------------------------------------------------------------------


def test_frechet_distance_is_exact_for_diagonal_and_two_by_two_gaussians():
    rng = np.random.default_rng(0)
    mean_x, mean_y = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.1, 3.0, 4), rng.uniform(0.1, 3.0, 4)
    expected = np.sum((mean_x - mean_y) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(M.frechet_distance_gaussians(mean_x, np.diag(a), mean_y, np.diag(b)), expected, 1e-12)
    # 2 x 2, not commuting: tr((C1 C2)^(1/2)) = sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2)).
    c1, c2 = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[0.5, -0.3], [-0.3, 1.5]])
    cross = math.sqrt(np.trace(c1 @ c2) + 2 * math.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = np.trace(c1) + np.trace(c2) - 2 * cross + 1.0
    got = M.frechet_distance_gaussians([1.0, 0.0], c1, [0.0, 0.0], c2)
    assert abs(got - expected) < 1e-12
    assert abs(M.frechet_distance_gaussians([0.0, 0.0], c2, [1.0, 0.0], c1) - expected) < 1e-12


def test_frechet_distance_is_stable_for_singular_and_scaled_covariances():
    assert M.frechet_distance_gaussians(np.zeros(3), np.diag([1.0, 0, 0]), np.zeros(3), np.diag([0, 1.0, 0])) == 2.0
    rng = np.random.default_rng(1)
    low_rank = rng.normal(size=(6, 2))
    c1, c2 = low_rank @ low_rank.T, np.cov(rng.normal(size=(50, 6)), rowvar=False)
    forward = M.frechet_distance_gaussians(np.zeros(6), c1, np.zeros(6), c2)
    backward = M.frechet_distance_gaussians(np.zeros(6), c2, np.zeros(6), c1)
    # At a singular covariance the trace term is only Hölder-1/2 in C: rounding of 1e-16 in C1's null
    # space moves it by about 1e-8, so the two orders agree to 1e-7, not 1e-12.
    assert abs(forward - backward) < 1e-7
    # C1 = s I: tr((s C2)^(1/2)) = sqrt(s) sum sqrt(eig(C2)).
    expected = 6 * 2.5 + np.trace(c2) - 2 * math.sqrt(2.5) * np.sqrt(np.linalg.eigvalsh(c2)).sum()
    assert abs(M.frechet_distance_gaussians(np.zeros(6), 2.5 * np.eye(6), np.zeros(6), c2) - expected) < 1e-8


def test_frechet_distance_of_features_fits_gaussians():
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(400, 5)), rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    mean, cov = M.gaussian_stats(g)
    np.testing.assert_allclose(cov, np.cov(g, rowvar=False), rtol=1e-12)
    expected = M.frechet_distance_gaussians(*M.gaussian_stats(f), mean, cov)
    assert M.frechet_distance(f, g) == expected and expected > 1.0
    assert abs(M.frechet_distance(f, f)) < 1e-10


# --- KID -------------------------------------------------------------------------------------------


def test_kid_with_one_full_subset_is_the_unbiased_cubic_mmd2():
    rng = np.random.default_rng(3)
    f, g = rng.normal(size=(120, 6)), rng.normal(size=(120, 6)) + 0.2
    kernel = lambda a, b: (a @ b.T / 6 + 1) ** 3
    expected = M.unbiased_mmd2(kernel(f, f), kernel(g, g), kernel(f, g))
    got = M.kid(jax.random.key(0), f, g, num_subsets=1, subset_size=120)
    assert abs(got - expected) < 1e-12 * abs(expected)


def test_kid_is_about_zero_for_one_law_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    draw = lambda shift=0.0: (rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + shift)
    same = [M.kid(jax.random.key(i), *draw(), num_subsets=5) for i in range(40)]
    _assert_mean_within_mc_error(np.asarray(same), 0.0)
    shifted = M.kid(jax.random.key(0), *draw(0.5), num_subsets=5)
    assert shifted > 10 * np.std(same)


# --- errors ----------------------------------------------------------------------------------------

X2, Y3 = np.zeros((4, 2)), np.zeros((3, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.mmd2(X2, Y3), "x and y"),
        (lambda: M.mmd2(X2[:1], X2), "at least 2"),
        (lambda: M.mmd2(X2, X2, bandwidth=0.0), "bandwidth"),
        (lambda: M.sliced_w2_squared(jax.random.key(0), X2, X2[:3]), "same number"),
        (lambda: M.sliced_w2_squared(0, X2, X2), "key"),
        (lambda: M.sliced_w2_squared(jax.random.key(0), X2, X2, num_projections=0), "num_projections"),
        (lambda: M.energy_distance(X2, Y3), "x and y"),
        (lambda: M.frechet_distance(X2, Y3), "width"),
        (lambda: M.frechet_distance(X2[:1], X2), "features_x"),
        (lambda: M.frechet_distance_gaussians(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), "covariances"),
        (lambda: M.kid(jax.random.key(0), X2, X2, subset_size=5), "subset_size"),
        (lambda: M.kid(jax.random.key(0), X2, X2 + np.nan), "features_y"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
