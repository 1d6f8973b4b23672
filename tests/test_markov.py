"""The exact Markov-chain oracle of masked diffusion, and the NELBO identities it makes exact.

Exact claims are checked at float64 rounding (1e-12 to 1e-15): forward-backward against brute-force
enumeration, fixture M-1 (references/anchors-inverse-discrete.md §9: p(x) = 0.045, marginals,
posterior given (0, m, m), tilted Z = 8.1870999734 and p~), the continuous NELBO of the exact
denoiser = -log p(x) for every x when alpha(0) = 1 and alpha(1) = 0, the one-step NELBO =
-log q1(x) (q1 the product of marginals, 0.114125 on M-1), and the discrete-T NELBO averaged over
x ~ p at least the entropy H(p) and non-increasing on nested grids. FFBS draws are checked by a
chi-square test over all V^L sequences (p-value > 1e-4 at a fixed seed; the same test rejects the
product of marginals, so it has power).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax.discrete as dd
from diffjax.discrete.markov import all_sequences, brute_force_posterior_marginals, brute_force_probs, sequence_index

M1 = dd.markov_chain([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], 3)


def random_chain(seed=0, vocab=3, length=4):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(vocab))
    trans = rng.dirichlet(np.ones(vocab), size=vocab)
    return dd.markov_chain(pi, trans, length)


def chi_square_pvalue(samples, probs, vocab):
    counts = np.bincount(sequence_index(samples, vocab), minlength=len(probs))
    keep = probs > 0
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


def test_forward_backward_equals_brute_force():
    chain = random_chain()
    rng = np.random.default_rng(1)
    z = rng.integers(0, 4, size=(16, 4)).astype(np.int32)  # ids 0..2 visible, 3 = mask
    z[0] = 3  # fully masked
    got = np.exp(np.asarray(chain.posterior_marginals(jnp.asarray(z))))
    np.testing.assert_allclose(got, brute_force_posterior_marginals(chain, z), atol=1e-15, rtol=0)


def test_log_prob_is_normalised_and_matches_enumeration():
    chain = random_chain()
    xs = all_sequences(3, 4)
    p = np.exp(np.asarray(chain.log_prob(jnp.asarray(xs))))
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-14)
    np.testing.assert_allclose(p, brute_force_probs(chain), atol=1e-15)


def test_fixture_m1_numbers():
    x = jnp.array([[0, 0, 1]])
    np.testing.assert_allclose(np.exp(M1.log_prob(x)), [0.045], rtol=1e-14)
    np.testing.assert_allclose(M1.marginals()[1:], [[0.55, 0.45], [0.585, 0.415]], rtol=1e-14)
    post = np.exp(M1.posterior_marginals(jnp.array([[0, 2, 2]])))[0]
    np.testing.assert_allclose(post, [[1.0, 0.0], [0.9, 0.1], [0.83, 0.17]], atol=1e-15)
    q1 = np.prod(np.asarray(M1.marginals())[[0, 1, 2], [0, 0, 1]])
    np.testing.assert_allclose(q1, 0.114125, rtol=1e-14)


def test_fixture_m1_tilted_by_the_number_of_ones():
    tilted = M1.tilted(jnp.array([0.0, 1.0]), 1.0)
    np.testing.assert_allclose(np.exp(tilted.log_z()), 8.1870999734, rtol=1e-10)
    p = np.exp(tilted.log_prob(jnp.array([[0, 0, 1], [1, 1, 1]])))
    np.testing.assert_allclose(p, [0.0149409, 0.7850609], atol=5e-8)  # the reference's 7 digits
    np.testing.assert_allclose(brute_force_probs(tilted)[[1, 7]], p, rtol=1e-13)
    # the exact twist log E[e^r | z] is a difference of evidences; with nothing visible it is log Z
    z = jnp.array([[2, 2, 2], [0, 2, 2]])
    twist = tilted.log_evidence(z) - M1.log_evidence(z)
    np.testing.assert_allclose(twist[0], tilted.log_z(), rtol=1e-14)
    e_given_0 = np.exp(np.asarray(M1.log_prob(jnp.asarray(all_sequences(2, 3)))))[:4]
    ones = all_sequences(2, 3)[:4].sum(axis=1)
    np.testing.assert_allclose(np.exp(twist[1]), (e_given_0 * np.exp(ones)).sum() / e_given_0.sum(), rtol=1e-13)


def test_ffbs_draws_the_joint_posterior():
    chain = random_chain(2)
    z = jnp.full((6000, 4), 3, jnp.int32).at[:, 1].set(2)
    x = np.asarray(chain.posterior_sample(jax.random.key(0), z))
    assert np.all(x[:, 1] == 2)
    probs = brute_force_probs(chain) * (all_sequences(3, 4)[:, 1] == 2)
    probs = probs / probs.sum()
    assert chi_square_pvalue(x, probs, 3) > 1e-4
    marg = np.asarray(jnp.exp(chain.posterior_marginals(z[:1])))[0]
    product = np.prod(marg[np.arange(4), all_sequences(3, 4)], axis=1)  # the wrong law must be rejected
    assert chi_square_pvalue(x, product, 3) < 1e-6


def test_tilted_sampler_draws_the_tilted_law():
    tilted = M1.tilted(jnp.array([0.0, 1.0]), 1.0)
    x = np.asarray(tilted.sample(jax.random.key(3), 5000))
    assert chi_square_pvalue(x, brute_force_probs(tilted), 2) > 1e-4


@pytest.mark.parametrize("schedule", [dd.log_linear(0.0), dd.mdlm_cosine(0.0), dd.md4_linear(0.0)], ids=str)
def test_continuous_nelbo_of_the_exact_denoiser_is_minus_log_p_for_every_x(schedule):
    chain = random_chain()
    xs = jnp.asarray(all_sequences(3, 4))
    nelbo = dd.exact_continuous_nelbo(chain.denoiser(schedule), xs)
    np.testing.assert_allclose(nelbo, -chain.log_prob(xs), rtol=1e-12)


def test_continuous_nelbo_identity_by_quadrature_over_t():
    """The schedule-free Beta formula against Gauss-Legendre over t of w(t) E[CE] (a polynomial in
    u = 1 - alpha for log-linear with eps = 0, so 8 nodes are exact)."""
    sched = dd.log_linear(0.0)
    chain = random_chain(4, 2, 3)
    den = chain.denoiser(sched)
    x = jnp.array([[0, 1, 1]])
    nodes, weights = np.polynomial.legendre.leggauss(8)
    ts = 0.5 * (nodes + 1.0)
    integral = sum(
        0.5 * w * sched.weight(t) * dd.loss.exact_masked_cross_entropy(den, x, sched.alpha(t))
        for t, w in zip(ts, weights)
    )
    np.testing.assert_allclose(integral, -chain.log_prob(x), rtol=1e-12)


def test_one_step_nelbo_is_minus_log_product_of_marginals():
    den = M1.denoiser(dd.log_linear(0.0))
    got = dd.exact_discrete_nelbo(den, jnp.array([[0, 0, 1]]), jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(got, [-np.log(0.114125)], rtol=1e-13)


def test_discrete_nelbo_bounds_the_entropy_and_decreases_with_steps():
    chain = random_chain(5, 2, 4)
    den = chain.denoiser(dd.log_linear(0.0))
    xs = jnp.asarray(all_sequences(2, 4))
    p = brute_force_probs(chain)
    entropy = -np.sum(p * np.log(p))
    means = [
        float(p @ np.asarray(dd.exact_discrete_nelbo(den, xs, jnp.linspace(1.0, 0.0, n + 1)))) for n in (1, 2, 4, 8)
    ]
    continuous = float(p @ np.asarray(dd.exact_continuous_nelbo(den, xs)))
    np.testing.assert_allclose(continuous, entropy, rtol=1e-12)
    assert all(m >= entropy - 1e-12 for m in means)
    assert all(a >= b - 1e-12 for a, b in zip(means, means[1:])), means  # nested grids
    assert means[0] - entropy > 1e-3  # the chain is correlated: one step is strictly worse


def test_chain_is_a_value_and_bad_inputs_raise():
    assert random_chain(0) == random_chain(0)
    assert hash(random_chain(0)) == hash(random_chain(0))
    assert random_chain(0) != random_chain(1)
    with pytest.raises(ValueError, match="pi"):
        dd.markov_chain([0.5, 0.6], [[1.0, 0.0], [0.0, 1.0]], 2)
    with pytest.raises(ValueError, match="trans"):
        dd.markov_chain([0.5, 0.5], [[1.0, 0.1], [0.0, 1.0]], 2)
    with pytest.raises(ValueError, match="length"):
        dd.markov_chain([0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]], 0)
    with pytest.raises(ValueError, match="c must have shape"):
        M1.tilted(jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="schedule"):
        M1.denoiser("log_linear")
