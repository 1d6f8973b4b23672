"""FK steering, importance sampling and the searches on token sequences (masked diffusion).

The oracle is fixture M-1 of references/anchors-inverse-discrete.md §9: the Markov chain
pi = (.5, .5), P = [[.9, .1], [.2, .8]], L = 3, with its exact (time-agnostic) SUBS denoiser. A T-step
ancestral sampler with that denoiser does not sample the chain exactly (several tokens unmask per
step from a product of marginals), so the target of steering is the sampler's own law q_T, computed
exactly by dynamic programming over its (V + 1)^L states (in numpy here), tilted: q~(x) = q_T(x) e^{lambda r(x)} / Z.

T-MD 7, in the unbiased form SMC guarantees for every K: over B independent populations, the mean
of Z-hat is Z and the mean of Z-hat sum_k w_k 1[x_k = s] is q_T(s) e^{lambda r(s)}, within 5 standard
errors (the SE from the B population values). As K grows 16 -> 256 the self-normalised weighted
law of one population approaches q~ (its TV falls). Scoring with exact joint posterior draws (FFBS)
gives a higher ESS than FK's product-of-marginals draws for a reward that depends on the joint
(r = 3 [x = (1, 1, 1)]: its joint probability 0.32 against 0.093 from the marginals).

The noise-driven generator: its inverse-CDF step has the categorical's law (on a stratified grid of
u the frequencies are the probabilities within 1/n), and random search with it returns the best
candidate among the ones it generated, with NFE = candidates x (T + 1).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import discrete as dd
from diffjax.discrete import markov, samplers

CHAIN = dd.markov_chain([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], 3)
SCHED = dd.log_linear()
DEN = CHAIN.denoiser(SCHED)
TS = dd.uniform_grid(4, t_end=0.0)  # alpha(0) = 1: every mask is resolved at the last step
SEQS = markov.all_sequences(2, 3)  # the 8 sequences, in sequence_index order


def ones(x, cond=None):
    return jnp.sum(x == 1, axis=-1).astype(jnp.result_type(float))


def all_ones(x, cond=None):
    return 3.0 * jnp.all(x == 1, axis=-1).astype(jnp.result_type(float))


def _law(den, ts, length=3, vocab=2):
    """q_T over the V^L sequences (sequence_index order): the ancestral sampler's exact output law by
    dynamic programming over the (V + 1)^L states, in numpy (an oracle independent of the sampler)."""
    states = np.array(list(itertools.product(range(vocab + 1), repeat=length)))
    mu = np.exp(np.asarray(den(jnp.asarray(states, jnp.int32), 0.0)))  # time-agnostic: (S, L, V)
    mass = np.zeros(len(states))
    mass[-1] = 1.0  # all masked
    alpha = np.asarray(den.schedule.alpha(ts))
    for a_t, a_s in zip(alpha[:-1], alpha[1:]):
        stay, move = (1 - a_s) / (1 - a_t), (a_s - a_t) / (1 - a_t)
        # per position: the probability of going from value i (V = mask) to value j
        step = np.zeros((len(states), length, vocab + 1, vocab + 1))
        step[:, :, np.arange(vocab), np.arange(vocab)] = 1.0
        step[:, :, vocab, :vocab] = move * mu
        step[:, :, vocab, vocab] = stay
        new = np.zeros_like(mass)
        for i in np.nonzero(mass)[0]:
            new += mass[i] * np.prod(step[i][np.arange(length)[None, :], states[i][None, :], states], axis=1)
        mass = new
    free = np.all(states < vocab, axis=1)
    np.testing.assert_allclose(mass[~free].sum(), 0.0, atol=1e-14)  # alpha(0) = 1: no mask survives
    np.testing.assert_allclose(mass.sum(), 1.0, rtol=1e-12)
    return mass[free]  # product order over {0..V-1}^L is sequence_index order


Q = _law(DEN, TS)
R_ONES = SEQS.sum(1).astype(float)


def _populations(particles, vocab=2, length=3):
    """Per population b: Z-hat_b and the weighted law sum_k w_k 1[x_k = s], (B,) and (B, V^L)."""
    b, k = particles.x.shape[:2]
    idx = np.asarray(markov.sequence_index(particles.x.reshape(-1, length), vocab)).reshape(b, k)
    w = np.exp(np.asarray(particles.log_weights))
    law = np.stack([(w * (idx == s)).sum(1) for s in range(vocab**length)], 1)
    return np.exp(np.asarray(particles.log_z)), law


def _start(b, k, length=3, vocab=2):
    return jnp.full((b, k, length), vocab, jnp.int32)


@pytest.mark.parametrize(
    "kwargs",
    [dict(reward_on="x0"), dict(reward_on="many"), dict(reward_on="many", x0_sampler=dd.joint_draws(CHAIN)),
     dict(reward_on="xt")],
    ids=["x0", "many_marginals", "many_ffbs", "xt"],
)  # fmt: skip
def test_fk_on_tokens_is_unbiased_for_the_tilted_sampler_law(kwargs):
    b, k = 2048, 8
    particles = dj.steering.fk_steer(
        dd.ancestral(), DEN, TS, jax.random.key(0), _start(b, k), ones, lmbda=1.0, **kwargs
    )
    assert particles.x.dtype == jnp.int32 and bool(jnp.all(particles.x < 2))
    z_hat, law = _populations(particles)
    target = Q * np.exp(R_ONES)  # q_T(s) e^{r(s)}; its sum is Z
    se = z_hat.std(ddof=1) / np.sqrt(b)
    assert abs(z_hat.mean() - target.sum()) < 5 * se, (z_hat.mean(), target.sum(), se)
    joint = z_hat[:, None] * law
    se = joint.std(0, ddof=1) / np.sqrt(b)
    np.testing.assert_array_less(np.abs(joint.mean(0) - target), 5 * se + 1e-12)


def test_more_particles_bring_the_weighted_law_to_the_tilted_target():
    q_tilde = Q * np.exp(R_ONES) / np.sum(Q * np.exp(R_ONES))
    tvs = []
    for k in (16, 256):
        particles = dj.steering.fk_steer(dd.ancestral(), DEN, TS, jax.random.key(1), _start(16, k), ones, lmbda=1.0)
        _, law = _populations(particles)
        tvs.append(0.5 * np.abs(law - q_tilde).sum(1).mean())  # mean TV of one population's weighted law
    # measured 0.31 -> 0.073; at K = 256 the TV of 256 weighted draws over 8 values is mostly Monte Carlo noise
    assert tvs[1] < 0.4 * tvs[0] and tvs[1] < 0.1, tvs


def test_joint_posterior_scoring_keeps_more_effective_particles_than_marginals():
    ts = dd.uniform_grid(16, t_end=0.0)
    ess = {}
    for name, sampler in (("marginals", None), ("ffbs", dd.joint_draws(CHAIN))):
        particles = dj.steering.fk_steer(dd.ancestral(), DEN, ts, jax.random.key(2), _start(256, 16), all_ones,
                                         lmbda=1.0, reward_on="many", num_x0_samples=32,
                                         x0_sampler=sampler)  # fmt: skip
        ess[name] = float(np.asarray(particles.ess).min(0).mean())  # the worst step, averaged over populations
    # measured: 6.9 (marginals) and 11.6 (FFBS) of 16
    assert ess["ffbs"] > 1.3 * ess["marginals"], ess


def test_importance_sampling_and_best_of_n_on_tokens():
    b, k = 4, 32
    particles = dj.steering.importance_sample(dd.ancestral(), DEN, TS, jax.random.key(3), _start(b, k), ones, lmbda=2.0)
    assert not bool(jnp.any(particles.resampled))
    r = ones(particles.x.reshape(-1, 3)).reshape(b, k)
    np.testing.assert_allclose(particles.log_weights, jax.nn.log_softmax(2.0 * r, axis=1), atol=1e-12)
    best = dj.steering.best_of(particles)
    np.testing.assert_array_equal(ones(best), r.max(1))


def test_inverse_cdf_step_has_the_categorical_law():
    n = 20000
    log_mu = jnp.log(jnp.array([[[0.2, 0.5, 0.3]]]))
    alpha_t, alpha_s = 0.3, 0.6
    probs = np.exp(np.asarray(samplers.reverse_log_weights(log_mu, alpha_t, alpha_s)))[0, 0]  # 3 tokens + the mask
    np.testing.assert_allclose(probs, [0.2 * 3 / 7, 0.5 * 3 / 7, 0.3 * 3 / 7, 4 / 7], rtol=1e-12)
    u = (jnp.arange(n) + 0.5) / n  # a stratified grid on [0, 1)
    z = jnp.full((n, 1), 3, jnp.int32)
    draws = samplers.ancestral_update_from_uniforms(
        u[:, None], z, jnp.broadcast_to(log_mu, (n, 1, 3)), alpha_t, alpha_s
    )
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=4) / n
    np.testing.assert_allclose(freq, probs, atol=1.0 / n)
    visible = samplers.ancestral_update_from_uniforms(u[:2, None], jnp.array([[1], [2]]), log_mu[:1].repeat(2, 0),
                                                      alpha_t, alpha_s)  # fmt: skip
    np.testing.assert_array_equal(visible, [[1], [2]])  # unmasked tokens are copied


def test_random_search_over_token_noise_returns_its_best_candidate():
    gen = dd.generator(dd.ancestral(), DEN, TS)
    shape = (3, TS.shape[0] - 1, 3)  # B conditions, noise (T, L) per candidate
    result = dj.steering.random_search(gen, all_ones, jax.random.key(4), shape, num_candidates=8, rounds=2)
    assert result.x.shape == (3, 3) and result.x.dtype == jnp.int32
    assert int(result.nfe) == 2 * 8 * (TS.shape[0] - 1 + 1)
    np.testing.assert_array_equal(gen.fn(result.noise, None)[0], result.x)  # the noise reproduces the sample
    np.testing.assert_allclose(all_ones(result.x), result.score)
    # the best of the 16 candidates of each condition, regenerated from the same keys
    noise = jnp.concatenate([jax.random.normal(jax.random.fold_in(jax.random.key(4), r), (3, 8) + shape[1:])
                             for r in range(2)], axis=1)  # fmt: skip
    x = gen.fn(noise.reshape((-1,) + shape[1:]), None)[0]
    np.testing.assert_allclose(result.score, all_ones(x).reshape(3, 16).max(1))


def test_the_generator_samples_the_ancestral_law():
    gen = dd.generator(dd.ancestral(), DEN, TS)
    n = 20000
    x, _ = jax.jit(gen.fn)(jax.random.normal(jax.random.key(5), (n, TS.shape[0] - 1, 3)), None)
    counts = np.bincount(np.asarray(markov.sequence_index(x, 2)), minlength=8)
    chi2 = np.sum((counts - n * Q) ** 2 / (n * Q))
    assert chi2 < 24.3, chi2  # chi-square, 7 degrees of freedom, p = 0.001


def test_bad_token_steering_inputs_raise():
    with pytest.raises(ValueError, match="denoiser"):
        dj.steering.fk_steer(dd.ancestral(), lambda z, t: z, TS, jax.random.key(0), _start(1, 2), ones, lmbda=1.0)
    with pytest.raises(ValueError, match="x0_sampler"):
        dj.steering.fk_steer(dd.ancestral(), DEN, TS, jax.random.key(0), _start(1, 2), ones, lmbda=1.0,
                             reward_on="many", x0_sampler=3)  # fmt: skip
    with pytest.raises(ValueError, match="vocab_size"):
        dj.steering.fk_steer(dd.ancestral(caching=True), DEN, TS, jax.random.key(0), _start(1, 2), ones, lmbda=1.0)
    with pytest.raises(ValueError, match="sampler"):
        dd.generator(dd.first_hitting(), DEN, TS)


def test_word_presence_counts_words_and_masks_never_match():
    from diffjax.data import text

    reward = dd.word_presence(("the", "def"), text.encode)
    x = jnp.stack([jnp.asarray(text.encode(s)) for s in ("in the def fn", "then? no, de ")])
    np.testing.assert_array_equal(reward(x), [2.0, 1.0])  # "then" contains "the"; "de " is not "def"
    masked = x.at[0, 3].set(text.MASK_ID)  # the "t" of "the"
    np.testing.assert_array_equal(reward(masked), [1.0, 1.0])
    np.testing.assert_array_equal(dd.word_presence(("the",), text.encode, absent=True)(x), [-1.0, -1.0])
    with pytest.raises(ValueError, match="words"):
        dd.word_presence("the", text.encode)


def test_diversity_measures_on_hand_counted_sets():
    x = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 1, 1]])
    # pairs differ at 1, 3 and 3 of 4 positions
    np.testing.assert_allclose(dd.diversity.mean_hamming(x), (1 + 3 + 3) / 12)
    # bigrams 01 12 23 | 01 12 20 | 11 11 11: the distinct ones are 01 12 23 20 11, 5 of 9
    np.testing.assert_allclose(dd.diversity.distinct_ngrams(x, 2), 5 / 9)
