"""Masked diffusion: schedules, the forward process, SUBS, the Monte Carlo NELBO and the samplers,
all against the exact Markov-chain oracle (tests T-MD of references/anchors-inverse-discrete.md §9).

Tolerances: schedule identities are float64 rounding (1e-12; derivatives against autodiff);
Monte Carlo NELBOs must lie within 5 standard errors of -log p(x) (the eps of each schedule adds a
bias below 1e-2 nats, under one standard error here); sampler laws are chi-square tests over all
V^L sequences with p-value > 1e-4 at fixed seeds, and each such test is shown to reject a wrong
law (so it has power); the caching call count is within 5 standard errors of the exact expectation
E[calls] = 1 + (T - 1)[1 - (1 - (1 - t_end)/T)^{BL}].
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax.discrete as dd
from diffjax.discrete.markov import all_sequences, brute_force_probs, sequence_index

M1 = dd.markov_chain([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], 3)
P_M1 = brute_force_probs(M1)
Q1_M1 = np.prod(np.asarray(M1.marginals())[np.arange(3), all_sequences(2, 3)], axis=1)  # product of marginals
EXACT = M1.denoiser(dd.log_linear(0.0))

SCHEDULES = [
    dd.log_linear(),
    dd.mdlm_cosine(),
    dd.mdlm_linear(),
    dd.md4_linear(),
    dd.md4_cosine(),
    dd.md4_poly(2.0),
]


def pvalue(samples, probs, vocab=2):
    counts = np.bincount(sequence_index(samples, vocab), minlength=len(probs))
    if np.any(counts[probs == 0]):
        return 0.0
    keep = probs > 0
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_schedule_derivative_weight_and_inverse(schedule):
    t = jnp.linspace(0.02, 0.98, 13)
    np.testing.assert_allclose(schedule.dalpha(t), jax.vmap(jax.grad(schedule.alpha))(t), rtol=1e-12)
    np.testing.assert_allclose(schedule.weight(t), -schedule.dalpha(t) / (1 - schedule.alpha(t)), rtol=1e-12)
    np.testing.assert_allclose(schedule.t_from_alpha(schedule.alpha(t)), t, rtol=1e-10)
    assert np.all(np.diff(schedule.alpha(t)) < 0)


def test_schedule_table_values():
    t = jnp.array([0.3])
    np.testing.assert_allclose(dd.log_linear(1e-3).weight(t), 1 / 0.3, rtol=1e-14)  # eps cancels
    np.testing.assert_allclose(dd.mdlm_cosine(0.0).alpha(t), np.cos(0.15 * np.pi), rtol=1e-14)
    np.testing.assert_allclose(dd.md4_cosine(0.0).alpha(t), 1 - np.sin(0.15 * np.pi), rtol=1e-14)  # not MDLM's
    np.testing.assert_allclose(dd.mdlm_linear().alpha(t), np.exp(-(1e-3 + 0.3 * (7 - 1e-3))), rtol=1e-14)
    np.testing.assert_allclose(dd.md4_linear().alpha(jnp.array([0.0, 1.0])), [1 - 1e-4, 1e-4], rtol=1e-14)
    np.testing.assert_allclose(dd.md4_poly(3.0, 0.0).alpha(t), 1 - 0.3**3, rtol=1e-14)
    assert dd.log_linear() == dd.log_linear() and hash(dd.md4_poly(2.0)) == hash(dd.md4_poly(2.0))


def test_forward_masks_at_rate_one_minus_alpha_and_never_changes_tokens():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 5, size=(400, 50)), jnp.int32)
    z = dd.forward(jax.random.key(0), x, 0.3, dd.log_linear(0.0), 5)
    rate = float(jnp.mean(z == 5))
    assert abs(rate - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)
    assert bool(jnp.all((z == x) | (z == 5)))


def test_subs_invariants():
    logits = jax.random.normal(jax.random.key(1), (2, 4, 3))
    z = jnp.array([[3, 0, 3, 2], [1, 3, 3, 3]])
    lp = dd.subs(logits, z)
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-14)
    visible = z < 3
    assert bool(jnp.all(jnp.where(visible, jnp.argmax(lp, -1) == z, True)))
    np.testing.assert_array_equal(jnp.exp(lp)[visible].max(-1), 1.0)
    np.testing.assert_allclose(lp[~visible], jax.nn.log_softmax(logits)[~visible], rtol=1e-14)
    assert lp.shape[-1] == 3  # the mask has no entry: probability exactly 0


@pytest.mark.parametrize("schedule", [dd.log_linear(), dd.mdlm_cosine(), dd.md4_linear()], ids=str)
def test_monte_carlo_nelbo_converges_to_minus_log_p(schedule):
    x = jnp.tile(jnp.array([[0, 0, 1]]), (4000, 1))
    est, t = dd.continuous_nelbo(M1.denoiser(schedule), x, jax.random.key(7))
    mean, se = float(jnp.mean(est)), float(jnp.std(est) / np.sqrt(est.size))
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    assert abs(mean - (-np.log(0.045))) < 5 * se, (mean, se)


def test_discrete_nelbo_estimate_matches_its_exact_value():
    ts = jnp.linspace(1.0, 0.0, 5)
    x = jnp.tile(jnp.array([[0, 0, 1]]), (4000, 1))
    est = dd.discrete_nelbo(EXACT, x, jax.random.key(2), ts)
    exact = float(dd.exact_discrete_nelbo(EXACT, x[:1], ts)[0])
    assert abs(float(jnp.mean(est)) - exact) < 5 * float(jnp.std(est)) / np.sqrt(est.size)
    # per x, L_T may fall below -log p(x) (here 2.952 < 3.101); only its mean over x ~ p bounds H(p) (test_markov)
    np.testing.assert_allclose(dd.bits_per_token(exact, 3), exact / (3 * np.log(2)), rtol=1e-15)


def test_nelbo_loss_has_the_training_signature():
    def apply(params, z, time, cond):
        del time, cond
        return jnp.broadcast_to(params, z.shape + (2,))

    loss = dd.masked_nelbo(dd.log_linear(), 2)
    x = jnp.tile(jnp.array([[0, 1, 1, 0]]), (64, 1))
    value, aux = jax.jit(loss, static_argnums=1)(jnp.zeros(2), apply, x, jax.random.key(0))
    assert aux.per_example.shape == (64,) and aux.t.shape == (64,)
    np.testing.assert_allclose(value, jnp.mean(aux.per_example) / 4, rtol=1e-14)
    # uniform logits: the exact NELBO is L log 2 nats (every masked token costs log 2, weights integrate to 1)
    assert abs(float(value) - np.log(2)) < 0.1
    grad = jax.grad(lambda p: loss(p, apply, x, jax.random.key(0))[0])(jnp.zeros(2))
    assert np.all(np.isfinite(grad))


def test_one_step_ancestral_is_the_product_of_marginals():
    x = np.asarray(
        dd.sample(dd.ancestral(), EXACT, jnp.array([1.0, 0.0]), jax.random.key(0), dd.all_masked(8000, 3, 2))[0]
    )
    assert pvalue(x, Q1_M1) > 1e-4
    assert pvalue(x, P_M1) < 1e-6  # TV(q1, p) = 0.47075: the data law is rejected
    np.testing.assert_allclose(0.5 * np.abs(Q1_M1 - P_M1).sum(), 0.47075, rtol=1e-12)


def test_many_step_ancestral_and_first_hitting_reproduce_p():
    z = dd.all_masked(8000, 3, 2)
    x, info = dd.sample(dd.ancestral(), EXACT, dd.uniform_grid(64, t_end=0.0), jax.random.key(1), z)
    assert pvalue(np.asarray(x), P_M1) > 1e-4 and int(info.nfe) == 65
    y, info = dd.sample_first_hitting(dd.first_hitting(), EXACT, jax.random.key(2), z)
    assert pvalue(np.asarray(y), P_M1) > 1e-4 and pvalue(np.asarray(y), Q1_M1) < 1e-6
    assert int(info.nfe) == 3  # exactly L calls
    assert bool(jnp.all(y < 2))


def test_first_hitting_with_a_time_dependent_schedule_and_a_prompt():
    z = jnp.tile(jnp.array([[0, 2, 2]]), (6000, 1))
    y, info = dd.sample_first_hitting(dd.first_hitting(), M1.denoiser(dd.md4_cosine()), jax.random.key(3), z)
    y = np.asarray(y)
    assert np.all(y[:, 0] == 0) and int(info.nfe) == 2
    cond = P_M1 * (all_sequences(2, 3)[:, 0] == 0)
    assert pvalue(y, cond / cond.sum()) > 1e-4


def test_caching_is_bit_identical_and_counts_calls():
    ts = dd.uniform_grid(64)
    den = M1.denoiser(dd.log_linear(0.0))
    for b in (1, 3):
        z = dd.all_masked(b, 3, 2)
        x0, i0 = dd.sample(dd.ancestral(), den, ts, jax.random.key(5), z)
        x1, i1 = dd.sample(dd.ancestral(caching=True), den, ts, jax.random.key(5), z)
        np.testing.assert_array_equal(x0, x1)
        assert int(i0.nfe) == 65 and int(i1.nfe) < 65

    @jax.jit
    def calls(keys):
        one = lambda k: dd.samplers._sample(dd.ancestral(caching=True), den, ts, k, dd.all_masked(1, 3, 2), False)  # noqa: E731
        return jax.vmap(lambda k: one(k)[1].nfe)(keys)

    n = np.asarray(calls(jax.random.split(jax.random.key(6), 2000)))
    expected = 1 + 63 * (1 - (1 - (1 - 1e-5) / 64) ** 3)
    assert abs(n.mean() - expected) < 5 * n.std() / np.sqrt(n.size), (n.mean(), expected)


def test_unmasked_tokens_never_change_and_no_mask_is_left():
    chain = dd.markov_chain([0.2, 0.3, 0.5], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], 4)
    z = jnp.array([[1, 3, 3, 0], [3, 2, 3, 3]] * 50, jnp.int32)
    for sampler in (dd.ancestral(), dd.ancestral(temperature=0.5, top_k=2), dd.ancestral(top_p=0.9)):
        x, _ = dd.sample(sampler, chain.denoiser(dd.md4_linear()), dd.cosine_grid(8), jax.random.key(0), z)
        assert bool(jnp.all(jnp.where(z < 3, x == z, True))) and bool(jnp.all(x < 3))


def test_top_k_one_is_argmax():
    lp = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (5, 7)))
    out = dd.samplers.reshape_probs(lp, top_k=1)
    np.testing.assert_array_equal(jnp.argmax(out, -1), jnp.argmax(lp, -1))
    np.testing.assert_allclose(jnp.exp(out).max(-1), 1.0)
    nucleus = jnp.exp(dd.samplers.reshape_probs(lp, top_p=0.5))
    kept = jnp.sum(jnp.where(nucleus > 0, jnp.exp(lp), 0.0), -1)
    assert bool(jnp.all(kept >= 0.5))


def test_masked_denoiser_wraps_a_network():
    def apply(params, z, time, cond):
        return params["w"][z] + time[:, None, None]

    params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
    den = dd.masked_denoiser(apply, params, dd.log_linear(), 3)
    z = jnp.array([[3, 1, 3]])
    np.testing.assert_array_equal(den(z, 0.2), den(z, 0.9))  # time-agnostic: fed zeros
    assert den.time_agnostic
    timed = dd.masked_denoiser(apply, params, dd.log_linear(), 3, time_conditioned=True)
    assert not timed.time_agnostic
    with pytest.raises(ValueError, match="time-agnostic"):
        dd.sample(dd.ancestral(caching=True), timed, dd.uniform_grid(4), jax.random.key(0), z)
    x, _ = dd.sample(dd.ancestral(caching=True), den, dd.uniform_grid(4), jax.random.key(0), z)
    assert x[0, 1] == 1
    assert dd.masked_denoiser(apply, params, dd.log_linear(), 3) == den


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="eps"):
        dd.log_linear(1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        dd.mdlm_linear(7.0, 1.0)
    with pytest.raises(ValueError, match="k must"):
        dd.md4_poly(-1.0)
    with pytest.raises(ValueError, match="temperature"):
        dd.ancestral(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        dd.ancestral(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        dd.ancestral(top_k=-2)
    with pytest.raises(ValueError, match="mask token may not appear"):
        dd.check_tokens("x", jnp.array([[0, 2]]), 2)
    with pytest.raises(ValueError, match=r"z must hold token ids in \[0, 2\]"):
        dd.sample(dd.ancestral(), EXACT, dd.uniform_grid(2), jax.random.key(0), jnp.array([[0, 0, 3]]))
    with pytest.raises(ValueError, match="length 3"):
        dd.check_tokens("x", jnp.array([[0, 1]]), 2, length=3)
    with pytest.raises(ValueError, match="integer"):
        dd.check_tokens("x", jnp.array([[0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="key"):
        dd.sample(dd.ancestral(), EXACT, dd.uniform_grid(2), 0, dd.all_masked(1, 3, 2))
    with pytest.raises(ValueError, match="timesteps"):
        dd.sample(dd.ancestral(), EXACT, jnp.array([0.0, 1.0]), jax.random.key(0), dd.all_masked(1, 3, 2))
    with pytest.raises(ValueError, match="t_min"):
        dd.masked_nelbo(dd.log_linear(), 2, t_min=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        dd.masked_denoiser(lambda *a: None, {}, dd.log_linear(), 0)
