"""Twisted SMC (TDS) and SMCDiff against closed forms.

A Gaussian prior N(mu0, diag s0^2) has, at every t, the exact posterior x0 | x_t ~ N(m_t(x_t), C_t)
(m_t is the oracle denoiser, C_t = s0^2 sigma^2 / (alpha^2 s0^2 + sigma^2)), hence the exact reverse
kernel p(x_s | x_t) = N(c1 m_t + c2 x_t, c1^2 C_t + beta~): the DDPM kernel's mean with its variance
inflated by c1^2 C_t. Used as the model's kernel it makes the chain exact at any number of steps,
so what the tests see is the SMC bookkeeping and Monte Carlo error only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.steering import resampling, twisted

MU0, S0 = np.array([0.5, -1.0]), np.array([0.8, 1.2])
A, SIGMA_Y, Y = np.array([1.0, 0.5]), 0.3, np.array([0.8, -0.4])
STEPS = 20


def prior_parts():
    sched = dj.schedules.vp_linear()
    prior = dj.data.GaussianMixture([1.0], MU0[None], S0[None])
    return sched, prior, jnp.linspace(1.0, 0.0, STEPS + 1)


def posterior_var(sched, t):
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    return S0**2 * sigma**2 / (alpha**2 * S0**2 + sigma**2)


def exact_kernel(schedule, x_t, x0, eps, t, s):
    ddpm = twisted.ddpm_kernel(schedule, x_t, x0, eps, t, s)
    gap = -jnp.expm1(schedule.logsnr(t) - schedule.logsnr(s))
    c1 = schedule.alpha(s) - schedule.sigma(s) * jnp.sqrt(1 - gap) * schedule.alpha(t) / schedule.sigma(t)
    return twisted.Gaussian(ddpm.mean, jnp.sqrt(ddpm.std**2 + c1**2 * posterior_var(schedule, t)))


@dj.solvers.solver_value
class ExactPosteriorKernel(dj.solvers.GaussianSolver):
    """The prior's exact reverse kernel as the model's Gaussian transition (a solver value)."""

    def transition(self, state, pred, t, t_next, schedule):
        return exact_kernel(schedule, state.x, pred.x0, pred.eps, t, t_next)

    @property
    def stochastic(self):
        return True

    @property
    def order(self):
        return float("inf")


def exact_twist(x_t, x0, t, y):
    """log p_t(y | x_t) = log N(y; A m_t, A^2 C_t + sigma_y^2) for the linear-Gaussian measurement."""
    var = A**2 * posterior_var(dj.schedules.vp_linear(), t) + SIGMA_Y**2
    return jnp.sum(-0.5 * (y - A * x0) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var), axis=-1)


def locally_optimal(schedule, x_t, x0, eps, grad, t, s):
    """p(x_s | x_t) p_s(y | x_s) normalised: a Gaussian, since m_s(x_s) = mu0 + g_s (x_s - alpha_s mu0)."""
    p = exact_kernel(schedule, x_t, x0, eps, t, s)
    alpha_s, sigma_s = schedule.alpha(s), schedule.sigma(s)
    g = alpha_s * S0**2 / (alpha_s**2 * S0**2 + sigma_s**2)
    h, r = A * g, A**2 * posterior_var(schedule, s) + SIGMA_Y**2
    y = jnp.asarray(Y) - A * (MU0 - g * alpha_s * MU0)
    precision = 1 / p.std**2 + h**2 / r
    return twisted.Gaussian((p.mean / p.std**2 + h * y / r) / precision, 1 / jnp.sqrt(precision))


def test_locally_optimal_proposal_with_the_exact_twist_gives_equal_weights():
    # with the exact twist the step's weight p(x_s|x_t) h_s(x_s) / (h_t(x_t) q(x_s|x_t)) is 1 for
    # the locally optimal q: after the first resampling every ESS is K, and log Z-hat is exactly
    # the log-mean of the starting twists (all later increments are log 1 = 0)
    sched, prior, ts = prior_parts()
    b, k = 4, 64
    x_T = prior.sample(jax.random.key(0), b * k, sched, ts[0]).reshape(b, k, 2)
    particles = dj.steering.tds(prior.denoiser(sched), ts, jax.random.key(1), x_T, exact_twist, y=jnp.tile(Y, (b, 1)),
                                solver=ExactPosteriorKernel(), proposal=locally_optimal)  # fmt: skip
    np.testing.assert_allclose(np.asarray(particles.ess[1:]), k, rtol=1e-10)
    np.testing.assert_allclose(np.exp(np.asarray(particles.log_weights)), 1 / k, rtol=1e-10)
    m_T = prior.x0_mean(x_T.reshape(b * k, 2), sched, ts[0])
    start = exact_twist(None, m_T, ts[0], jnp.asarray(Y)).reshape(b, k)
    expected = jax.nn.logsumexp(start, axis=1) - np.log(k)
    np.testing.assert_allclose(np.asarray(particles.log_z), np.asarray(expected), rtol=1e-10)


def exact_posterior():
    """x0 | y for y = A x0 + sigma_y e, per coordinate."""
    var = 1 / (1 / S0**2 + A**2 / SIGMA_Y**2)
    return var * (MU0 / S0**2 + A * Y / SIGMA_Y**2), var


def run(proposal, seed, b=512, k=16, twist=exact_twist):
    sched, prior, ts = prior_parts()
    x_T = prior.sample(jax.random.key(seed), b * k, sched, ts[0]).reshape(b, k, 2)
    particles = dj.steering.tds(prior.denoiser(sched), ts, jax.random.key(seed + 1), x_T, twist,
                                y=jnp.tile(Y, (b, 1)), solver=ExactPosteriorKernel(), proposal=proposal)  # fmt: skip
    return particles, np.asarray(dj.steering.resampled(jax.random.key(seed + 2), particles))


def untwisted(schedule, x_t, x0, eps, grad, t, s):
    return exact_kernel(schedule, x_t, x0, eps, t, s)


def approximate_twist(x_t, x0, t, y):
    """TDS's twist: the likelihood at x0-hat with the variance inflated by sigma^2/alpha^2."""
    sched = dj.schedules.vp_linear()
    var = SIGMA_Y**2 + A**2 * (sched.sigma(t) / sched.alpha(t)) ** 2
    return jnp.sum(-0.5 * (y - A * x0) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var), axis=-1)


@pytest.mark.parametrize("twist", [exact_twist, approximate_twist])
def test_twisted_proposal_targets_the_exact_posterior_and_beats_the_untwisted_one(twist):
    # TDS's own proposal (kernel at the guided prediction) with either twist: one resampled particle
    # per run matches N(m_post, C_post) within 5 standard errors over 512 runs; the gradient step
    # keeps the weights more even than proposing from the kernel alone (ESS lost, K - ESS, halved)
    mean, var = exact_posterior()
    particles, x = run(None, seed=0, twist=twist)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / len(x)))
    np.testing.assert_array_less(np.abs(x.var(0) - var), 5 * var * np.sqrt(2 / len(x)))
    plain, _ = run(untwisted, seed=0, twist=twist)
    lost = lambda p: float(np.mean(16 - np.asarray(p.ess)))  # noqa: E731
    assert lost(particles) < 0.5 * lost(plain), (lost(particles), lost(plain))


def test_inpainting_twist_and_non_finite_twists():
    # the inpainting twist (observed entry 0 only, sigma_y) with TDS's inflation reaches the
    # likelihood at t = 0; a twist that is NaN where x_t,0 > 1 (about 20% of the posterior) never
    # yields NaN samples
    sched, prior, ts = prior_parts()
    twist = dj.steering.inpainting_twist(sched, np.array([1.0, 0.0]), sigma_y=SIGMA_Y)
    x0 = jnp.array([[0.1, 5.0], [0.9, -3.0]])
    expected = -0.5 * (Y[0] - np.asarray(x0[:, 0])) ** 2 / SIGMA_Y**2 - 0.5 * np.log(2 * np.pi * SIGMA_Y**2)
    np.testing.assert_allclose(twist(None, x0, 0.0, jnp.tile(Y, (2, 1))), expected, rtol=1e-12)

    def flaky(x_t, x0, t, y):
        return jnp.where(x_t[:, 0] > 1.0, jnp.nan, twist(x_t, x0, t, y))

    b, k = 8, 16
    x_T = prior.sample(jax.random.key(3), b * k, sched, ts[0]).reshape(b, k, 2)
    particles = dj.steering.tds(prior.denoiser(sched), ts, jax.random.key(4), x_T, flaky, y=jnp.tile(Y, (b, 1)))
    assert np.all(np.isfinite(np.asarray(particles.x)))
    # a particle entering x_0 > 1 gets log-weight -inf and is resampled away; none is NaN
    assert np.all(np.asarray(particles.x[..., 0]) <= 1.0)
    assert np.all(np.asarray(particles.degenerate) == 0)


def test_measurement_twist_is_the_inpainting_twist_and_the_exact_likelihood_of_a_unit_prior():
    # the SVD form of log N(y; A x0-hat, sigma_y^2 + tau^2 A A^T) for a mask is the inpainting twist;
    # with inflation "pigdm" and tausq = 1 (tau^2 = Cov(x0 | x_t) of a N(mu, I) prior) it is the exact
    # p_t(y | x_t) = N(y; A E[x0 | x_t], A C_t A^T + sigma_y^2 I): float64 closed forms on both sides
    sched = dj.schedules.vp_cosine()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)))
    mask = np.array([1.0, 0.0, 1.0])
    y = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3))) * mask
    t = jnp.array([0.2, 0.5, 0.8])
    by_mask = dj.steering.inpainting_twist(sched, mask, sigma_y=0.3)(None, x0, t, y)
    by_operator = dj.steering.measurement_twist(sched, dj.guidance.operators.inpainting(mask), sigma_y=0.3)
    np.testing.assert_allclose(by_operator(None, x0, t, y), by_mask, rtol=1e-12)

    prior = dj.data.LinearGaussian(np.array([0.3, -0.2, 0.5]), np.eye(3))
    a = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5]])
    x_t = prior.sample(jax.random.key(0), 3, sched, 0.5)
    x0_hat = prior.x0_mean(x_t, sched, t)
    ys = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2)))
    twist = dj.steering.measurement_twist(sched, dj.guidance.operators.matrix(a, (3,)), sigma_y=0.3,
                                          inflation="pigdm", tausq=1.0)  # fmt: skip
    c_t = np.asarray(prior.x0_covariance(x_t, sched, t))
    exact = [jax.scipy.stats.multivariate_normal.logpdf(ys[i], a @ x0_hat[i], a @ c_t[i] @ a.T + 0.09 * np.eye(2))
             for i in range(3)]  # fmt: skip
    np.testing.assert_allclose(twist(x_t, x0_hat, t, ys), exact, rtol=1e-10)


def test_chunked_twist_and_class_twist_on_labels():
    # twist_chunk gives the same run; the classifier twist with an exact "classifier" (the mixture's
    # component posterior) steers every condition to its own component
    gmm = dj.data.GaussianMixture([0.8, 0.2], [[-2.0, 0.0], [2.0, 0.0]], [[0.4, 0.4], [0.4, 0.4]])
    sched = dj.schedules.vp_linear()
    ts = jnp.linspace(1.0, 0.0, 31)
    logits = lambda x, t: jnp.log(gmm.posterior(x, sched, t))  # noqa: E731
    twist = dj.steering.classifier_twist(logits, noisy=True)
    b, k = 64, 8
    labels = jnp.arange(b) % 2
    x_T = gmm.sample(jax.random.key(5), b * k, sched, ts[0]).reshape(b, k, 2)
    run = lambda chunk: dj.steering.tds(gmm.denoiser(sched), ts, jax.random.key(6), x_T, twist, y=labels,  # noqa: E731
                                        twist_chunk=chunk)  # fmt: skip
    whole, chunked = run(None), run(128)
    np.testing.assert_allclose(np.asarray(whole.x), np.asarray(chunked.x), atol=1e-12)
    x = dj.steering.resampled(jax.random.key(7), whole)
    assert np.mean(np.sign(np.asarray(x[:, 0])) == 2 * np.asarray(labels) - 1) > 0.95


def test_smcdiff_keeps_observed_entries_and_samples_the_conditional():
    # two modes couple the coordinates: observing x0_0 = 0.5 makes the free x0_1 the mixture
    # sum_k gamma_k N(mu_k1, s_k1^2), gamma_k propto w_k N(0.5; mu_k0, s_k0^2). The DDPM kernel needs
    # small logSNR steps (its variance misses c1^2 Cov[x0 | x_t]) and SMCDiff needs many particles
    # (path degeneracy: K = 16 is biased); K = 128 on 50 logSNR-uniform steps matches within 5 SE,
    # while replacement alone (K = 1, no weighting) does not
    weights, means, scales = np.array([0.5, 0.5]), np.array([[-1.0, -1.5], [1.0, 1.5]]), np.full((2, 2), 0.6)
    gmm, sched = dj.data.GaussianMixture(weights, means, scales), dj.schedules.vp_linear()
    ts = dj.timesteps.logsnr_uniform(sched, 50, t_min=1e-3)
    b, k, y0 = 256, 128, 0.5
    log_gamma = np.log(weights) - 0.5 * ((y0 - means[:, 0]) / scales[:, 0]) ** 2
    gamma = np.exp(log_gamma - np.logaddexp.reduce(log_gamma))
    mean = gamma @ means[:, 1]
    sd = np.sqrt(gamma @ (scales[:, 1] ** 2 + means[:, 1] ** 2) - mean**2)

    def free_entries(b, k):
        y = jnp.tile(jnp.array([y0, 0.0]), (b, 1))
        x_T = jax.random.normal(jax.random.key(8), (b, k, 2), jnp.float64)
        particles = dj.steering.smcdiff(gmm.denoiser(sched), ts, jax.random.key(9), x_T, y, np.array([1.0, 0.0]))
        np.testing.assert_array_equal(np.asarray(particles.x[..., 0]), y0)
        return np.asarray(dj.steering.resampled(jax.random.key(10), particles)[:, 1])

    free = free_entries(b, k)
    assert abs(free.mean() - mean) < 5 * sd / np.sqrt(b), (free.mean(), mean)
    assert abs(np.mean(free > 0) - gamma[1]) < 5 * np.sqrt(gamma[1] * gamma[0] / b)
    replaced = free_entries(4096, 1)
    assert abs(replaced.mean() - mean) > 5 * sd / np.sqrt(4096), replaced.mean()


def test_bad_arguments_raise_before_tracing():
    sched, prior, ts = prior_parts()
    den, x_T = prior.denoiser(sched), jnp.zeros((2, 4, 2))
    with pytest.raises(ValueError, match="log_twist"):
        dj.steering.tds(den, ts, jax.random.key(0), x_T, "reward")
    with pytest.raises(ValueError, match="twist_chunk"):
        dj.steering.tds(den, ts, jax.random.key(0), x_T, exact_twist, twist_chunk=3)
    with pytest.raises(ValueError, match="schedule"):
        dj.steering.tds(den, ts, jax.random.key(0), x_T, exact_twist, schedule=resampling.resampling_schedule(3))
    with pytest.raises(ValueError, match="mask"):
        dj.steering.smcdiff(den, ts, jax.random.key(0), x_T, jnp.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="y must"):
        dj.steering.smcdiff(den, ts, jax.random.key(0), x_T, jnp.zeros((3, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="inflation"):
        dj.steering.inpainting_twist(sched, np.ones(2), sigma_y=0.1, inflation="dps")


S = dj.solvers
GAUSSIAN = {
    "ddpm": S.ddpm(),
    "ddpm_beta": S.ddpm("beta"),
    "ddim_half": S.ddim(eta=0.5),
    "euler_ancestral": S.euler_ancestral(),
    "dpmpp_2m_sde": S.dpmpp_2m_sde(),
    "euler_maruyama": S.euler_maruyama(),
}


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_tds_with_every_gaussian_solver_targets_the_exact_posterior(name):
    # the solver's own transition is the model's kernel and, at the twisted prediction, the proposal;
    # on 200 logSNR-uniform steps its own law is exact within the Monte Carlo error of 512 runs, and
    # one resampled particle per run matches N(m_post, C_post) within 5 standard errors
    sched, prior, _ = prior_parts()
    ts = dj.timesteps.logsnr_uniform(sched, 200, t_min=1e-3)
    b, k = 512, 16
    x_T = prior.sample(jax.random.key(0), b * k, sched, ts[0]).reshape(b, k, 2)
    particles = dj.steering.tds(prior.denoiser(sched), ts, jax.random.key(1), x_T, approximate_twist,
                                y=jnp.tile(Y, (b, 1)), solver=GAUSSIAN[name])  # fmt: skip
    x = np.asarray(dj.steering.resampled(jax.random.key(2), particles))
    mean, var = exact_posterior()
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / len(x)))
    np.testing.assert_array_less(np.abs(x.var(0) - var), 5 * var * np.sqrt(2 / len(x)))


def test_a_solver_without_a_gaussian_transition_is_refused_by_name():
    sched, prior, ts = prior_parts()
    den, x_T = prior.denoiser(sched), jnp.zeros((2, 4, 2))
    for solver in (S.ddim(), S.heun(s_churn=10.0), S.dpmpp_2m()):
        with pytest.raises(ValueError, match="solver must be a stochastic solver"):
            dj.steering.tds(den, ts, jax.random.key(0), x_T, exact_twist, solver=solver)
        with pytest.raises(ValueError, match="solver must be a stochastic solver"):
            dj.steering.smcdiff(den, ts, jax.random.key(0), x_T, jnp.zeros((2, 2)), np.array([1.0, 0.0]),
                                solver=solver)  # fmt: skip


def test_the_deprecated_kernel_argument_still_runs_and_warns():
    sched, prior, ts = prior_parts()
    x_T = prior.sample(jax.random.key(0), 2 * 4, sched, ts[0]).reshape(2, 4, 2)
    args = (prior.denoiser(sched), ts, jax.random.key(1), x_T, exact_twist)
    with pytest.warns(DeprecationWarning, match="solver="):
        old = dj.steering.tds(*args, y=jnp.tile(Y, (2, 1)), kernel=exact_kernel)
    new = dj.steering.tds(*args, y=jnp.tile(Y, (2, 1)), solver=ExactPosteriorKernel())
    np.testing.assert_array_equal(old.x, new.x)
