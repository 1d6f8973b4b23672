"""Resamplers against their defining property E[count_i] = K w_i, and the edge cases of log-weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.steering import resampling

SCHEMES = sorted(resampling.RESAMPLERS)
K = 8
# weights with a zero, a tiny one and unequal others; log-weights shifted by 1e4 to test log space
WEIGHTS = np.array([0.30, 0.0, 0.05, 0.2, 1e-4, 0.15, 0.1999, 0.1])
LOG_WEIGHTS = np.log(np.where(WEIGHTS > 0, WEIGHTS, 1.0)) + np.where(WEIGHTS > 0, 0.0, -np.inf) + 1e4


def counts(scheme, log_weights, num_keys):
    keys = jax.random.split(jax.random.key(0), num_keys)
    indices = jax.vmap(lambda key: resampling.RESAMPLERS[scheme](key, jnp.asarray(log_weights)))(keys)
    return np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=len(log_weights)))(indices))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_expected_counts_are_k_times_the_weights(scheme):
    # z-test over 10^4 keys: each mean count within 5 Monte Carlo standard errors of K w_i
    c = counts(scheme, LOG_WEIGHTS, 10_000)
    expected = K * WEIGHTS / WEIGHTS.sum()
    se = c.std(0, ddof=1) / np.sqrt(len(c))
    np.testing.assert_array_less(np.abs(c.mean(0) - expected), 5 * se + 1e-12)
    assert np.all(c[:, 1] == 0)  # the zero-weight particle is never chosen
    assert np.all(c.sum(1) == K)


def test_residual_keeps_the_floor_and_low_variance_schemes_stay_within_one_of_it():
    floor = np.floor(K * WEIGHTS / WEIGHTS.sum())
    assert np.all(counts("residual", LOG_WEIGHTS, 2000) >= floor)
    for scheme in ("systematic", "stratified"):  # their counts differ from K w_i by less than 1 (systematic) or 2
        c = counts(scheme, LOG_WEIGHTS, 2000)
        assert np.all(np.abs(c - K * WEIGHTS / WEIGHTS.sum()) < (1 if scheme == "systematic" else 2))


def test_uniform_weights_give_each_particle_once_under_systematic_and_residual():
    for scheme in ("systematic", "residual"):
        for seed in range(20):
            idx = resampling.RESAMPLERS[scheme](jax.random.key(seed), jnp.zeros(K))
            np.testing.assert_array_equal(np.sort(idx), np.arange(K))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_hot_all_minus_inf_nan_and_shifts(scheme):
    resample = resampling.RESAMPLERS[scheme]
    one_hot = jnp.full(K, -jnp.inf).at[5].set(3.0)
    assert np.all(resample(jax.random.key(1), one_hot) == 5)
    assert np.all(resample(jax.random.key(1), jnp.full(K, -1e4).at[5].set(1e4)) == 5)
    with_nan = one_hot.at[2].set(jnp.nan)
    assert np.all(resample(jax.random.key(1), with_nan) == 5)  # NaN counts as -inf
    dead = resample(jax.random.key(2), jnp.full(K, -jnp.inf))  # all -inf: uniform, still valid indices
    assert dead.shape == (K,) and np.all((dead >= 0) & (dead < K))
    shifted = [resample(jax.random.key(3), jnp.asarray(LOG_WEIGHTS) + s) for s in (0.0, -2e4, 123.4)]
    np.testing.assert_array_equal(shifted[0], shifted[1])
    np.testing.assert_array_equal(shifted[0], shifted[2])


def test_normalise_and_ess():
    np.testing.assert_allclose(resampling.ess(jnp.zeros(K)), K, rtol=1e-12)
    np.testing.assert_allclose(resampling.ess(jnp.full(K, -jnp.inf).at[3].set(0.0)), 1.0, rtol=1e-12)
    w = WEIGHTS / WEIGHTS.sum()
    np.testing.assert_allclose(resampling.ess(jnp.asarray(LOG_WEIGHTS)), 1 / np.sum(w**2), rtol=1e-10)
    np.testing.assert_allclose(resampling.ess(jnp.asarray(LOG_WEIGHTS) - 5e3), 1 / np.sum(w**2), rtol=1e-10)
    n = resampling.normalise(jnp.full(K, -jnp.inf))
    assert bool(n.degenerate) and np.allclose(np.exp(n.log_weights), 1 / K)
    n = resampling.normalise(jnp.asarray(LOG_WEIGHTS))
    assert not bool(n.degenerate)
    np.testing.assert_allclose(np.exp(n.log_weights), w, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(n.log_total, 1e4 + np.log(WEIGHTS.sum()), rtol=1e-14)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_vmap_over_populations_equals_a_loop(scheme):
    resample = resampling.RESAMPLERS[scheme]
    log_weights = jax.random.normal(jax.random.key(4), (5, K)) * 3
    keys = jax.random.split(jax.random.key(5), 5)
    batched = jax.vmap(resample)(keys, log_weights)
    for b in range(5):
        np.testing.assert_array_equal(batched[b], resample(keys[b], log_weights[b]))


def test_maybe_resample_carries_weights_when_it_does_not_resample():
    log_weights = jnp.asarray(LOG_WEIGHTS)
    skipped = resampling.maybe_resample(jax.random.key(0), log_weights, False, None)
    np.testing.assert_array_equal(skipped.ancestors, np.arange(K))
    np.testing.assert_array_equal(skipped.log_weights, log_weights)
    assert skipped.log_z_increment == 0 and not bool(skipped.resampled)
    done = resampling.maybe_resample(jax.random.key(0), log_weights, True, None)
    np.testing.assert_array_equal(done.ancestors, resampling.systematic(jax.random.key(0), log_weights))
    np.testing.assert_array_equal(done.log_weights, np.zeros(K))
    np.testing.assert_allclose(done.log_z_increment, 1e4 + np.log(WEIGHTS.sum() / K), rtol=1e-14)
    # ESS-adaptive: ESS/K = 0.61 here, so threshold 0.5 skips and 0.7 resamples
    assert not bool(resampling.maybe_resample(jax.random.key(0), log_weights, True, 0.5).resampled)
    assert bool(resampling.maybe_resample(jax.random.key(0), log_weights, True, 0.7).resampled)


def test_schedule():
    s = resampling.resampling_schedule(10, start=2, end=7, interval=2)
    np.testing.assert_array_equal(np.flatnonzero(s.steps), [2, 4, 6])
    assert s.threshold is None
    s = resampling.resampling_schedule(10, threshold=0.5, final=True)
    np.testing.assert_array_equal(np.flatnonzero(s.steps), np.arange(10))
    np.testing.assert_array_equal(np.flatnonzero(resampling.resampling_schedule(10).steps), np.arange(9))
    with pytest.raises(ValueError, match="interval"):
        resampling.resampling_schedule(10, interval=0)
    with pytest.raises(ValueError, match="threshold"):
        resampling.resampling_schedule(10, threshold=1.5)
    with pytest.raises(ValueError, match="end"):
        resampling.resampling_schedule(10, end=10)


def test_normalise_keeps_float32_precision_far_from_zero():
    # near -2e6 the spacing of float32 is 0.25: subtracting the log-sum-exp directly loses whole
    # tenths (the weights summed to 0.9974); after subtracting the maximum (exact, Sterbenz) the
    # weights sum to 1 within float32 rounding and equal the float64 softmax of the same float32
    # inputs (themselves on the 0.25 grid) to 1e-5
    log_w = jnp.asarray(-2e6 + np.arange(16) * 0.37, jnp.float32)
    offsets = np.asarray(log_w, np.float64) + 2e6
    normalised = resampling.normalise(log_w)
    weights = np.exp(np.asarray(normalised.log_weights, np.float64))
    assert abs(weights.sum() - 1.0) < 1e-6
    exact = np.exp(offsets - np.logaddexp.reduce(offsets))
    np.testing.assert_allclose(weights, exact, rtol=1e-5)
    np.testing.assert_allclose(float(resampling.ess(log_w)), 1 / np.sum(exact**2), rtol=1e-5)


def test_the_fk_paper_schedule_resamples_every_fifth_of_the_grid():
    assert np.flatnonzero(resampling.fk_paper_schedule(100).steps).tolist() == [20, 40, 60, 80]
    assert np.flatnonzero(resampling.fk_paper_schedule(16).steps).tolist() == [3, 6, 9, 12]
    assert np.flatnonzero(resampling.fk_paper_schedule(2).steps).tolist() == [0]
