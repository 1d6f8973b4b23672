"""FK steering against exactly tilted Gaussian mixtures.

The proposal is the mixture's exact reverse kernel (zero discretisation error) started from the
exact p_T, so the only error left is Monte Carlo: B independent populations of K particles each
return one resampled particle, and those B draws must match the exact target

    p(x) exp(lambda a.x) / Z  =  sum_k w~_k N(mu_k + lambda Sigma_k a, Sigma_k),
    w~_k  propto  w_k exp(lambda a.mu_k + lambda^2 a.Sigma_k a / 2)

or, for the quadratic reward r = -1/2 sum_d q_d (x_d - c_d)^2, per component and coordinate the
Gaussian product N(mu, s^2) exp(-lambda q (x - c)^2 / 2): precision 1/s^2 + lambda q, mean
(mu/s^2 + lambda q c) / precision, mass (1 + lambda q s^2)^(-1/2) exp(-lambda q (mu - c)^2 / (2 (1 + lambda q s^2)))
(means, covariances and mode weights within 5 Monte Carlo standard errors).
"""

import warnings

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.steering import resampling

WEIGHTS = np.array([0.6, 0.3, 0.1])
MEANS = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]])
SCALES = np.array([[0.4, 0.5], [0.3, 0.6], [0.5, 0.3]])
A = np.array([1.0, 0.5])
CENTER, PRECISION = np.array([0.5, 1.0]), np.array([1.0, 2.0])
LMBDA = 1.5
B, K, STEPS = 512, 32, 16


def tilted(kind="linear"):
    """The exactly tilted mixture and log Z = log E_p[exp(lambda r(x))]."""
    var = SCALES**2
    if kind == "linear":
        log_terms = np.log(WEIGHTS) + LMBDA * MEANS @ A + 0.5 * LMBDA**2 * (var * A**2).sum(1)
        log_z = np.logaddexp.reduce(log_terms)
        return dj.data.GaussianMixture(np.exp(log_terms - log_z), MEANS + LMBDA * var * A, SCALES), log_z
    lq = LMBDA * PRECISION
    post_var = 1 / (1 / var + lq)
    log_mass = -0.5 * np.log1p(lq * var) - 0.5 * lq * (MEANS - CENTER) ** 2 / (1 + lq * var)
    log_terms = np.log(WEIGHTS) + log_mass.sum(1)
    log_z = np.logaddexp.reduce(log_terms)
    means = post_var * (MEANS / var + lq * CENTER)
    return dj.data.GaussianMixture(np.exp(log_terms - log_z), means, np.sqrt(post_var)), log_z


def test_the_oracle_tilts_like_the_closed_forms_here():
    gmm = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES)
    for kind, (mixture, log_z) in [("linear", gmm.tilted_linear(A, LMBDA)),
                                   ("quadratic", gmm.tilted_quadratic(CENTER, PRECISION, LMBDA))]:  # fmt: skip
        target, expected = tilted(kind)
        for got, want in zip(jax.tree.leaves(mixture), jax.tree.leaves(target)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(log_z, expected, rtol=1e-12)


reward = dj.steering.rewards.linear(A)
REWARDS = {"linear": reward, "quadratic": dj.steering.rewards.quadratic(CENTER, PRECISION)}


def steer(potential="diff", schedule=None, drop_weights=False, seed=0, k=K, b=B, kind="linear", **kwargs):
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, STEPS, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(seed), b * k, sched, ts[0]).reshape(b, k, 2)
    return dj.steering.fk_steer(
        gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(seed + 1), x_T, REWARDS[kind], lmbda=LMBDA,
        potential=potential, schedule=schedule, drop_weights=drop_weights, **kwargs,
    ), gmm, sched, ts  # fmt: skip


def assert_matches_target(x, target, sched, t_end):
    """Mean, covariance and mode weights of B draws within 5 Monte Carlo standard errors."""
    x = np.asarray(x)
    exact = np.asarray(target.sample(jax.random.key(99), 400_000, sched, t_end))
    mean, sd = exact.mean(0), exact.std(0)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * sd / np.sqrt(len(x)))
    centred, centred_exact = x - mean, exact - mean
    for i in range(2):
        for j in range(i, 2):
            prod, prod_exact = centred[:, i] * centred[:, j], centred_exact[:, i] * centred_exact[:, j]
            assert abs(prod.mean() - prod_exact.mean()) < 5 * prod_exact.std() / np.sqrt(len(x)), (i, j)
    modes = np.bincount(np.argmax(np.asarray(target.posterior(jnp.asarray(x), sched, t_end)), -1), minlength=3)
    p = np.asarray(target.weights)
    np.testing.assert_array_less(np.abs(modes / len(x) - p), 5 * np.sqrt(p * (1 - p) / len(x)) + 1e-3)


@pytest.mark.parametrize("potential,sparse,kind,reward_on", [
    ("diff", False, "linear", "x0"), ("diff", True, "linear", "x0"), ("max", True, "linear", "x0"),
    ("sum", True, "linear", "x0"), ("rt", True, "linear", "x0"), ("diff", False, "quadratic", "x0"),
    ("max", True, "quadratic", "x0"), ("diff", False, "quadratic", "many"),
])  # fmt: skip
def test_resampled_output_is_the_exactly_tilted_mixture(potential, sparse, kind, reward_on):
    # every step, or FK's sparse schedule (rewards and resampling at steps 3, 7, 11): "sum" counts
    # early rewards once per later scheduled step, and at every one of 16 steps its weights degenerate.
    # The intermediate reward on Tweedie's x0-hat or the many-sample estimate only steers: the final
    # correction makes every choice exact
    schedule = resampling.resampling_schedule(STEPS, start=3, interval=4) if sparse else None
    particles, _, sched, ts = steer(potential, schedule=schedule, kind=kind, reward_on=reward_on)
    target, _ = tilted(kind)
    x = dj.steering.resampled(jax.random.key(7), particles)
    assert_matches_target(x, target, sched, ts[-1])


def test_ess_adaptive_with_weight_carry_hits_the_target_and_dropping_weights_does_not():
    # rare resampling (ESS < 0.2 K): correct only if the weights are carried between resamplings
    schedule = resampling.resampling_schedule(STEPS, threshold=0.2)
    target, _ = tilted()
    particles, _, sched, ts = steer(schedule=schedule)
    assert 0 < np.mean(particles.resampled) < 0.5  # it did skip scheduled steps
    assert_matches_target(dj.steering.resampled(jax.random.key(7), particles), target, sched, ts[-1])
    dropped, *_ = steer(schedule=schedule, drop_weights=True)
    with pytest.raises(AssertionError):
        assert_matches_target(dj.steering.resampled(jax.random.key(7), dropped), target, sched, ts[-1])


def test_z_hat_is_unbiased_and_log_z_hat_converges():
    # E[Z-hat / Z] = 1 for every K; log Z-hat -> log Z as K grows (its bias and spread shrink)
    _, log_z = tilted()
    spreads = []
    for k in (4, 64):
        particles, *_ = steer(k=k, b=256, seed=3)
        ratio = np.exp(np.asarray(particles.log_z) - log_z)
        assert abs(ratio.mean() - 1) < 5 * ratio.std() / np.sqrt(len(ratio)), (k, ratio.mean())
        spreads.append(np.abs(np.asarray(particles.log_z) - log_z).mean())
    assert spreads[1] < 0.5 * spreads[0], spreads


def test_huge_lambda_and_non_finite_rewards_give_finite_samples():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 4 * 16, sched, ts[0]).reshape(4, 16, 2)

    def wild(x, cond):  # NaN for half the particles, +inf for some, huge elsewhere
        r = 1e3 * x[:, 0]
        r = jnp.where(x[:, 1] > 0.5, jnp.nan, r)
        return jnp.where(x[:, 0] < -2.5, jnp.inf, r)

    for lmbda in (1e4, 1.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = dj.steering.fk_steer(gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(1), x_T, wild,
                                     lmbda=lmbda)  # fmt: skip
        assert np.all(np.isfinite(p.x)) and np.all(np.isfinite(np.exp(p.log_weights)))
        # a population whose 16 rewards were all NaN at a step fell back to uniform weights (here some do):
        # exactly one RuntimeWarning per call says so, and none without one
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == int(np.any(np.asarray(p.degenerate) > 0)), [str(w.message) for w in runtime]
    # all rewards NaN: every population falls back to uniform weights, and the call says so once
    with pytest.warns(RuntimeWarning, match="fell back to uniform weights"):
        dead = dj.steering.fk_steer(gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(1), x_T,
                                    lambda x, c: jnp.full(x.shape[:1], jnp.nan), lmbda=1.0)  # fmt: skip
    assert np.all(np.isfinite(dead.x)) and np.all(dead.degenerate > 0)
    np.testing.assert_allclose(np.exp(dead.log_weights), 1 / 16)


def test_deterministic_solver_warns_and_outputs_are_named_for_what_they_are():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 2 * 8, sched, ts[0]).reshape(2, 8, 2)
    with pytest.warns(UserWarning, match="deterministic"):
        p = dj.steering.fk_steer(dj.solvers.ddim(), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward,
                                 lmbda=5.0)  # fmt: skip
    x, w = dj.steering.weighted(p)
    assert x.shape == (2, 8, 2) and np.allclose(w.sum(1), 1)
    best = dj.steering.best_of(p)
    np.testing.assert_array_equal(best, x[np.arange(2), np.argmax(p.rewards, 1)])
    assert p.nfe == 8 and p.ancestors.shape == (8, 2, 8) and p.ess.shape == (8, 2)
    # a stochastic solver does not warn (the old check warned on any two equal particles, which resampling after
    # a noiseless last step makes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = dj.steering.fk_steer(dj.solvers.ddim(eta=1.0), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward,
                                 lmbda=50.0)  # fmt: skip


def test_rewards_are_evaluated_only_at_scheduled_steps():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 2 * 4, sched, ts[0]).reshape(2, 4, 2)
    seen = []

    def counting(x, cond):
        jax.debug.callback(lambda: seen.append(1))
        return reward(x, cond)

    schedule = resampling.resampling_schedule(8, start=1, interval=3)  # steps 1 and 4
    dj.steering.fk_steer(gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(1), x_T, counting,
                         lmbda=1.0, schedule=schedule)  # fmt: skip
    assert len(seen) == 3  # two scheduled steps and the final correction


def test_vmap_over_keys_equals_a_loop_with_the_same_keys():
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 2 * 8, sched, ts[0]).reshape(2, 8, 2)
    run = lambda key: dj.steering.fk_steer(gmm.exact_solver(sched), gmm.denoiser(sched), ts, key, x_T, reward,
                                           lmbda=2.0).x  # fmt: skip
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.vmap(run)(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], run(keys[i]))


def test_importance_sampling_and_best_of_n_baselines_spend_the_same_nfe():
    # never resampled: the weights are exactly softmax(lambda r(x0)) and best-of-N is the argmax reward
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 3 * 16, sched, ts[0]).reshape(3, 16, 2)
    args = (gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward)
    p = dj.steering.importance_sample(*args, lmbda=LMBDA)
    assert not np.any(p.resampled)
    np.testing.assert_allclose(p.log_weights, jax.nn.log_softmax(LMBDA * p.rewards, axis=1), rtol=1e-12, atol=1e-12)
    best = dj.steering.best_of(p)
    np.testing.assert_allclose(reward(best, None), p.rewards.max(1), rtol=1e-12)
    stochastic = (dj.solvers.ddim(eta=1.0), *args[1:])  # the exact kernel spends no NFE; DDIM one per step
    assert dj.steering.importance_sample(*stochastic, lmbda=LMBDA).nfe == 8
    assert dj.steering.fk_steer(*stochastic, lmbda=LMBDA).nfe == 8


def test_chunked_rewards_give_the_same_run():
    # a reward evaluated 4 particles at a time: the same values, so the same particles and weights
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 3 * 8, sched, ts[0]).reshape(3, 8, 2)
    args = (dj.solvers.ddim(eta=1.0), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward)
    whole = dj.steering.fk_steer(*args, lmbda=LMBDA)
    parts = dj.steering.fk_steer(*args, lmbda=LMBDA, reward_chunk=4)
    np.testing.assert_allclose(parts.x, whole.x, rtol=1e-12)
    np.testing.assert_allclose(parts.log_weights, whole.log_weights, rtol=1e-12, atol=1e-12)
    assert dj.steering.chunked(reward, 4) == dj.steering.chunked(reward, 4)
    with pytest.raises(ValueError, match="reward_chunk"):
        dj.steering.fk_steer(*args, lmbda=LMBDA, reward_chunk=5)


def test_many_sample_reward_is_the_log_mean_exp_over_gaussian_x0_draws():
    # for r = a.x and x0 ~ N(x0-hat, v I): log E exp(a.x0) = a.x0-hat + v |a|^2 / 2; M = 20000
    # draws put the estimate within 5 standard errors of the delta method, sd(exp)/mean/sqrt(M)
    x0, v = jnp.array([[0.3, -0.2], [1.0, 2.0]]), 0.25
    estimate = dj.steering.fk.many_sample_reward(reward, jax.random.key(0), x0, None, np.sqrt(v), 20_000)
    exact = np.asarray(x0) @ A + 0.5 * v * A @ A
    rel_sd = np.sqrt(np.expm1(v * A @ A))
    np.testing.assert_allclose(estimate, exact, atol=5 * rel_sd / np.sqrt(20_000))


@pytest.mark.parametrize("potential", ["max", "sum", "rt"])
def test_each_potential_with_its_default_schedule_is_the_exactly_tilted_mixture(potential):
    # the default schedule of max/sum/rt is the FK paper's sparse one (every fifth of the grid: steps
    # 3, 6, 9, 12 of 16); every step scheduled degenerates them (ESS 7-23 of 256 on this mixture)
    assert np.flatnonzero(dj.steering.default_schedule(potential, STEPS).steps).tolist() == [3, 6, 9, 12]
    particles, _, sched, ts = steer(potential)
    target, _ = tilted()
    assert_matches_target(dj.steering.resampled(jax.random.key(7), particles), target, sched, ts[-1])


S = dj.solvers
# Every registered solver that can draw noise, with the options that make it stochastic, and a grid
# fine enough that its own law is exact within the Monte Carlo error of 512 draws (5 SE).
STOCHASTIC = {
    "ddim": (S.ddim(eta=1.0), 64),
    "ddpm": (S.ddpm(), 64),
    "euler_ancestral": (S.euler_ancestral(), 64),
    "dpmpp_2m_sde": (S.dpmpp_2m_sde(), 64),
    "euler_maruyama": (S.euler_maruyama(), 256),
    "heun": (S.heun(s_churn=20.0), 64),
    "predictor_corrector": (S.predictor_corrector(S.ddpm(), snr=0.05), 128),
}


def test_the_stochastic_table_covers_every_registered_stochastic_solver():
    for name, make in S.REGISTRY.items():
        assert name in STOCHASTIC or not make().stochastic, name
        if name in STOCHASTIC:
            assert STOCHASTIC[name][0].stochastic, name


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_fk_with_every_stochastic_solver_hits_the_tilted_target(name):
    # the proposal is now the solver itself (not the exact kernel): at a step count where its own
    # law is exact within Monte Carlo error, FK's resampled output matches the exactly tilted mixture
    solver, steps = STOCHASTIC[name]
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.logsnr_uniform(sched, steps, t_min=1e-3)
    b, k = 512, 16
    x_T = gmm.sample(jax.random.key(0), b * k, sched, ts[0]).reshape(b, k, 2)
    particles = dj.steering.fk_steer(solver, gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward, lmbda=LMBDA)
    target, _ = tilted()
    assert_matches_target(dj.steering.resampled(jax.random.key(7), particles), target, sched, ts[-1])


def test_a_loop_over_the_kernel_equals_fk_steer_bit_for_bit():
    # fk_steer is the FK kernel driven by sampling.run_steps; the same kernel stepped by hand (a
    # multistep SDE solver, so the history is resampled too) gives the same bits. Both run op by op
    # (jax.disable_jit): compiled, XLA fuses the scanned and the unrolled steps differently, which
    # moves the last bit (4e-16)
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 8, t_min=1e-3)
    b, k = 3, 8
    x_T = gmm.sample(jax.random.key(0), b * k, sched, ts[0]).reshape(b, k, 2)
    solver, den, key = S.dpmpp_2m_sde(), gmm.denoiser(sched), jax.random.key(1)

    def by_hand(x_T, key):
        kernel = dj.steering.fk.fk(solver, reward, lmbda=LMBDA, num_particles=k, num_steps=8, potential="max")
        keys = jax.random.split(key, 8)
        state, infos = kernel.init(x_T.reshape(b * k, 2), ts), []
        for i in range(8):
            state, info = kernel.step(state, keys[i], ts, i, den)
            infos.append(info)
        return kernel.finish(state, None, jax.tree.map(lambda *a: jnp.stack(a), *infos))

    with jax.disable_jit():
        driven = dj.steering.fk_steer(solver, den, ts, key, x_T, reward, lmbda=LMBDA, potential="max")
        loop = by_hand(x_T, key)
    for got, want in zip(jax.tree.leaves(loop), jax.tree.leaves(driven)):
        np.testing.assert_array_equal(got, want)


def test_resampling_hands_each_particle_its_ancestors_time_and_history():
    # time_shift gives each particle its own time (from its variance) and PLMS a history of past
    # eps predictions: after a resampling step every particle carries exactly its ancestor's of both
    sched = dj.schedules.discrete()
    gmm = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES)
    ts = dj.timesteps.diffusers(sched, 10)
    solver = S.time_shift(S.plms(), window=200, cutoff=0)
    kernel = dj.steering.fk.fk(solver, reward, lmbda=5.0, num_particles=8, num_steps=10)
    den = gmm.denoiser(sched)
    state = kernel.init(gmm.sample(jax.random.key(0), 2 * 8, sched, ts[0]), ts)
    for i in range(3):
        before = state
        key = jax.random.key(10 + i)
        state, info = kernel.step(state, key, ts, i, den)
    key_solver = jax.random.split(key, 3)[0]
    moved, _ = solver.step(before.solver, key_solver, ts[2], ts[3], den)  # the step before resampling
    assert bool(jnp.all(info.resampled)) and len(np.unique(np.asarray(moved.t))) > 1
    ancestors = np.asarray(info.ancestors + 8 * jnp.arange(2)[:, None]).reshape(-1)
    assert len(np.unique(ancestors)) < 16  # some particles were copied
    np.testing.assert_array_equal(state.solver.t, np.asarray(moved.t)[ancestors])
    np.testing.assert_array_equal(state.solver.inner.x, np.asarray(moved.inner.x)[ancestors])
    np.testing.assert_array_equal(state.solver.inner.eps.values, np.asarray(moved.inner.eps.values)[:, ancestors])


def test_a_classifier_reward_with_new_parameters_does_not_recompile():
    # rewards are values: a classifier's parameters are pytree leaves, so FK with new weights (and a
    # new lmbda) reuses the compiled program, and the new weights change the result
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 6, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(0), 2 * 4, sched, ts[0]).reshape(2, 4, 2)
    net = flax.linen.Dense(3)
    params = [net.init(jax.random.key(s), jnp.zeros((1, 2))) for s in (0, 1)]
    before = dj.steering.fk._fk_steer._cache_size()
    runs = [dj.steering.fk_steer(S.ddpm(), gmm.denoiser(sched), ts, jax.random.key(1), x_T,
                                 dj.steering.rewards.classifier_reward(net, p, target=1), lmbda=lmbda)
            for p, lmbda in zip(params, (1.0, 3.0))]  # fmt: skip
    assert dj.steering.fk._fk_steer._cache_size() == before + 1
    assert not np.array_equal(runs[0].rewards, runs[1].rewards)
