"""The exact output laws of the masked-diffusion samplers (T-MD 3 of references/anchors-inverse-discrete.md §9).

Exact claims are float64 rounding (1e-12): fixture M-1's one-step law is the product of the chain's
marginals (q1(0, 0, 1) = 0.114125, TV(q1, p) = 0.47075), a prompt's one-step law the product of the
posterior marginals ((.9, .1), (.83, .17) given (0, m, m)), a chain with independent positions is
reproduced exactly at every T, and the first-hitting law is p exactly (T-MD 4). The ancestral law is
not p at any finite T for a correlated chain: on a random K = 3, L = 4 chain TV(law_T, p) =
0.4222, 0.1135, 0.0290, 0.00729 for T = 1, 4, 16, 64 (measured), T TV -> 0.467, so TV ~ 1/T.
That the DP is the sampler's law is a chi-square test of 20000 draws of `samplers.sample` over all
sequences (p-value > 1e-3 at a fixed seed), with noise removal doing real work (grid ending at
t = 0.3), for a time-conditioned network with temperature and top-p, and for the first-hitting
sampler at temperature 2; the same draws reject p (and q1, or the law without the reshaping:
p-value < 1e-6), so the test has power.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax.discrete as dd
from diffjax.discrete import exact
from diffjax.discrete.markov import all_sequences, brute_force_probs, sequence_index

M1 = dd.markov_chain([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], 3)
SCHED = dd.log_linear(0.0)  # alpha(0) = 1, alpha(1) = 0: a grid from 1 to 0 unmasks everything
ONE_STEP = jnp.array([1.0, 0.0])


def random_chain(seed=0, vocab=3, length=4):
    rng = np.random.default_rng(seed)
    return dd.markov_chain(rng.dirichlet(np.ones(vocab)), rng.dirichlet(np.ones(vocab), size=vocab), length)


CHAIN = random_chain()
P_CHAIN = brute_force_probs(CHAIN)


def tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def product_of(marginals):
    """The product law over all_sequences(V, L) of per-position probabilities (L, V)."""
    marginals = np.asarray(marginals)
    length, vocab = marginals.shape
    return np.prod(marginals[np.arange(length), all_sequences(vocab, length)], axis=1)


def pvalue(samples, probs, vocab):
    counts = np.bincount(sequence_index(samples, vocab), minlength=len(probs))
    if np.any(counts[probs == 0]):
        return 0.0
    keep = probs > 0
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


def test_states_are_every_sequence_with_masks_in_base_v_plus_one():
    states = exact.all_states(2, 3)
    assert states.shape == (27, 3) and states.dtype == np.int32
    np.testing.assert_array_equal(exact.state_index(states, 2), np.arange(27))
    assert len({tuple(s) for s in states}) == 27 and states.max() == 2  # the mask id 2 is a digit
    law = jnp.zeros(27).at[exact.state_index(jnp.array([0, 2, 1]), 2)].set(1.0)  # (0, m, 1): not clean
    assert float(exact.mask_free(law, 2, 3).sum()) == 0.0
    law = law.at[exact.state_index(jnp.array([1, 0, 1]), 2)].set(2.0)
    np.testing.assert_array_equal(exact.mask_free(law, 2, 3), 2.0 * (sequence_index(all_sequences(2, 3), 2) == 5))


def test_one_step_law_is_the_product_of_marginals_on_m1():
    law = exact.ancestral_law(M1.denoiser(SCHED), ONE_STEP, dd.all_masked(1, 3, 2))
    np.testing.assert_allclose(float(law.sum()), 1.0, atol=1e-12)
    q1 = exact.mask_free(law, 2, 3)
    np.testing.assert_allclose(float(q1.sum()), 1.0, atol=1e-12)  # nothing left masked
    np.testing.assert_allclose(q1, product_of(M1.marginals()), atol=1e-12)
    np.testing.assert_allclose(q1[sequence_index(np.array([[0, 0, 1]]), 2)], [0.114125], atol=1e-12)
    np.testing.assert_allclose(tv(q1, brute_force_probs(M1)), 0.47075, atol=1e-12)
    # a prompt is kept; the free positions get the posterior marginals given it
    prompt = exact.mask_free(exact.ancestral_law(M1.denoiser(SCHED), ONE_STEP, jnp.array([[0, 2, 2]])), 2, 3)
    np.testing.assert_allclose(prompt, product_of([[1.0, 0.0], [0.9, 0.1], [0.83, 0.17]]), atol=1e-12)


def test_the_law_approaches_p_like_one_over_t_but_reaches_it_only_for_independent_positions():
    tvs = []
    for num_steps in (1, 4, 16, 64):
        law = exact.ancestral_law(CHAIN.denoiser(SCHED), dd.uniform_grid(num_steps, t_end=0.0), dd.all_masked(1, 4, 3))
        np.testing.assert_allclose(float(exact.mask_free(law, 3, 4).sum()), 1.0, atol=1e-12)
        tvs.append(tv(exact.mask_free(law, 3, 4), P_CHAIN))
    tvs = np.array(tvs)
    assert np.all(np.diff(tvs) < 0) and tvs[-1] < 7.3e-3, tvs  # measured 0.4222, 0.1135, 0.0290, 0.00729
    np.testing.assert_allclose(tvs * [1, 4, 16, 64], 0.45, atol=0.03)  # T TV = 0.422 .. 0.466: TV ~ 1/T, never 0
    # independent positions (every row of P is pi): one product step is already p, so is any T
    pi = np.array([0.2, 0.5, 0.3])
    independent = dd.markov_chain(pi, np.tile(pi, (3, 1)), 4)
    for ts in (ONE_STEP, dd.cosine_grid(5)):
        law = exact.ancestral_law(independent.denoiser(dd.md4_cosine(0.0)), ts, dd.all_masked(1, 4, 3))
        np.testing.assert_allclose(exact.mask_free(law, 3, 4), brute_force_probs(independent), atol=1e-12)
    # the first-hitting (one token per call) law is p exactly (T-MD 4)
    hit = exact.first_hitting_law(CHAIN.denoiser(SCHED), dd.all_masked(1, 4, 3))
    np.testing.assert_allclose(exact.mask_free(hit, 3, 4), P_CHAIN, atol=1e-12)
    hit = exact.first_hitting_law(M1.denoiser(SCHED), jnp.array([[0, 2, 2]]))
    cond = brute_force_probs(M1) * (all_sequences(2, 3)[:, 0] == 0)
    np.testing.assert_allclose(exact.mask_free(hit, 2, 3), cond / cond.sum(), atol=1e-12)


def test_noise_removal_moves_the_masks_left_at_the_last_time():
    ts = dd.uniform_grid(4, t_end=0.3)  # alpha(0.3) = 0.7: masks remain after the last step
    kept = exact.ancestral_law(CHAIN.denoiser(SCHED), ts, dd.all_masked(1, 4, 3), noise_removal=False)
    removed = exact.ancestral_law(CHAIN.denoiser(SCHED), ts, dd.all_masked(1, 4, 3))
    np.testing.assert_allclose([float(kept.sum()), float(removed.sum())], 1.0, atol=1e-12)
    # every token is still masked w.p. 1 - alpha(0.3) = 0.3, independently: 0.7^4 of the mass is clean
    np.testing.assert_allclose(float(exact.mask_free(kept, 3, 4).sum()), 0.7**4, atol=1e-12)
    np.testing.assert_allclose(float(exact.mask_free(removed, 3, 4).sum()), 1.0, atol=1e-12)
    assert np.all(np.asarray(exact.mask_free(removed, 3, 4)) >= np.asarray(exact.mask_free(kept, 3, 4)))


def test_the_law_is_the_law_of_the_sampler():
    ts = dd.uniform_grid(4, t_end=0.3)
    law = exact.mask_free(exact.ancestral_law(CHAIN.denoiser(SCHED), ts, dd.all_masked(1, 4, 3)), 3, 4)
    x, _ = dd.sample(dd.ancestral(), CHAIN.denoiser(SCHED), ts, jax.random.key(0), dd.all_masked(20000, 4, 3))
    x = np.asarray(x)
    assert pvalue(x, np.asarray(law), 3) > 1e-3
    assert pvalue(x, P_CHAIN, 3) < 1e-6 and tv(law, P_CHAIN) > 0.1  # power: the data law is rejected
    one_step = exact.ancestral_law(CHAIN.denoiser(SCHED), ONE_STEP, dd.all_masked(1, 4, 3))
    assert pvalue(x, np.asarray(exact.mask_free(one_step, 3, 4)), 3) < 1e-6
    # the first-hitting law with a reshaped mu (temperature 2: no longer p) is that sampler's law
    hit = exact.mask_free(exact.first_hitting_law(CHAIN.denoiser(SCHED), dd.all_masked(1, 4, 3), temperature=2.0), 3, 4)
    y, _ = dd.sample_first_hitting(
        dd.first_hitting(temperature=2.0), CHAIN.denoiser(SCHED), jax.random.key(1), dd.all_masked(20000, 4, 3)
    )
    assert pvalue(np.asarray(y), np.asarray(hit), 3) > 1e-3 and pvalue(np.asarray(y), P_CHAIN, 3) < 1e-6


def network(params, z, time, cond):
    """A small time-conditioned token network: logits (B, L, V) linear in one_hot(z) and t."""
    del cond
    features = jax.nn.one_hot(z, 4).reshape(z.shape[0], -1)
    return (features @ params["w"]).reshape(z.shape + (3,)) + time[:, None, None] * params["c"]


def test_the_law_of_a_time_conditioned_network_with_temperature_and_top_p():
    params = {"w": 0.5 * jax.random.normal(jax.random.key(1), (16, 12)), "c": jnp.array([2.0, -1.0, 0.0])}
    den = dd.masked_denoiser(network, params, dd.md4_linear(), 3, time_conditioned=True)
    z = jnp.array([[3, 1, 3, 3]])  # a prompt token; 27 free completions
    options = {"temperature": 1.5, "top_p": 0.95}
    ts = dd.cosine_grid(3)
    law = np.asarray(exact.mask_free(exact.ancestral_law(den, ts, z, **options), 3, 4))
    np.testing.assert_allclose(law.sum(), 1.0, atol=1e-12)
    assert np.all(law[all_sequences(3, 4)[:, 1] != 1] == 0)  # the prompt is kept
    x, _ = dd.sample(dd.ancestral(**options), den, ts, jax.random.key(2), jnp.tile(z, (20000, 1)))
    assert pvalue(np.asarray(x), law, 3) > 1e-3
    plain = np.asarray(exact.mask_free(exact.ancestral_law(den, ts, z), 3, 4))
    assert pvalue(np.asarray(x), plain, 3) < 1e-6  # the reshaping changed the law, and the test sees it


def test_reshaping_flows_through_at_one_step():
    marginals = np.asarray(CHAIN.marginals())
    top1 = exact.mask_free(exact.ancestral_law(CHAIN.denoiser(SCHED), ONE_STEP, dd.all_masked(1, 4, 3), top_k=1), 3, 4)
    argmax = sequence_index(np.argmax(marginals, axis=1)[None], 3)[0]
    np.testing.assert_allclose(top1, np.arange(81) == argmax, atol=1e-12)  # all mass on the argmax of the marginals
    cold = exact.ancestral_law(CHAIN.denoiser(SCHED), ONE_STEP, dd.all_masked(1, 4, 3), temperature=0.5)
    squared = marginals**2 / np.sum(marginals**2, axis=1, keepdims=True)  # mu^(1/0.5), renormalised
    np.testing.assert_allclose(exact.mask_free(cold, 3, 4), product_of(squared), atol=1e-12)


def test_bad_inputs_raise_naming_the_argument():
    den = M1.denoiser(SCHED)
    with pytest.raises(ValueError, match=r"z must hold one start sequence"):
        exact.ancestral_law(den, ONE_STEP, dd.all_masked(2, 3, 2))
    with pytest.raises(ValueError, match=r"z must hold token ids in \[0, 2\]"):
        exact.ancestral_law(den, ONE_STEP, jnp.array([[0, 3, 2]]))
    with pytest.raises(ValueError, match="timesteps"):
        exact.ancestral_law(den, jnp.array([0.0, 1.0]), dd.all_masked(1, 3, 2))
    with pytest.raises(ValueError, match="top_p"):
        exact.ancestral_law(den, ONE_STEP, dd.all_masked(1, 3, 2), top_p=1.5)
    with pytest.raises(ValueError, match=r"\(vocab_size \+ 1\)\*\*length <= 4096.*length=13"):
        exact.ancestral_law(den, ONE_STEP, dd.all_masked(1, 13, 2))
    with pytest.raises(ValueError, match="denoiser"):
        exact.ancestral_law(lambda z, t: z, ONE_STEP, dd.all_masked(1, 3, 2))
    timed = dd.masked_denoiser(network, {}, dd.md4_linear(), 3, time_conditioned=True)
    with pytest.raises(ValueError, match="time-agnostic"):
        exact.first_hitting_law(timed, dd.all_masked(1, 3, 3))
    with pytest.raises(ValueError, match="law must have shape"):
        exact.mask_free(jnp.ones(8), 2, 3)
