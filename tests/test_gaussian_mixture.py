"""The Gaussian-mixture oracle is exact: score, denoiser, density, samples and reverse kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj
from helpers import mixture

SCHEDULES = {
    "vp_linear": dj.schedules.vp_linear(),
    "edm": dj.schedules.edm(),
    "rectified_flow": dj.schedules.rectified_flow(),
    "discrete": dj.schedules.discrete(),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t_frac", [0.0, 0.1, 0.6])
def test_score_is_the_gradient_of_log_prob_and_tweedie_gives_the_denoiser(name, t_frac):
    sched = SCHEDULES[name]
    t = sched.t_min + t_frac * (sched.t_max - sched.t_min)
    if float(sched.sigma(t)) == 0.0:
        t = 0.5 * sched.t_min + 1e-3  # the score needs sigma > 0
    gmm = mixture()
    x = gmm.sample(jax.random.key(0), 50, sched, t)
    grad = jax.vmap(jax.grad(lambda xi: gmm.log_prob(xi[None], sched, t)[0]))(x)
    np.testing.assert_allclose(gmm.score(x, sched, t), grad, rtol=1e-10, atol=1e-10)
    # Tweedie: E[x0 | x_t] = (x + sigma^2 score) / alpha.
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    np.testing.assert_allclose(gmm.x0_mean(x, sched, t), (x + sigma**2 * grad) / alpha, rtol=1e-9, atol=1e-9)


def test_posterior_is_bayes_rule_over_single_component_densities():
    gmm, sched, t = mixture(), dj.schedules.vp_cosine(), 0.3
    x = gmm.sample(jax.random.key(1), 20, sched, t)
    joint = jnp.stack(
        [
            jnp.log(w) + dj.data.GaussianMixture([1.0], m[None], s[None]).log_prob(x, sched, t)
            for w, m, s in zip(gmm.weights, gmm.means, gmm.scales)
        ],
        axis=-1,
    )
    np.testing.assert_allclose(gmm.posterior(x, sched, t), jax.nn.softmax(joint, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(gmm.log_prob(x, sched, t), jax.nn.logsumexp(joint, axis=-1), rtol=1e-12)


def test_samples_of_p_t_match_log_prob_in_one_dimension():
    # The CDF comes from integrating exp(log_prob) numerically, so the test ties samples to the density.
    gmm = dj.data.GaussianMixture([0.25, 0.75], [[-2.0], [1.0]], [[0.3], [0.8]])
    sched, t = dj.schedules.vp_linear(), 0.2
    x = np.asarray(gmm.sample(jax.random.key(2), 20_000, sched, t))[:, 0]
    grid = np.linspace(-8, 8, 40_001)
    pdf = np.exp(np.asarray(gmm.log_prob(grid[:, None], sched, t)))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    assert abs(cdf[-1] - 1.0) < 1e-8
    assert stats.kstest(x, lambda q: np.interp(q, grid, cdf)).pvalue > 1e-3


def test_log_prob_is_normalised_in_three_dimensions():
    # E_q[p_t / q] = 1 for any proposal q covering p_t; q = N(0, 2.5^2 I), 200k draws.
    gmm, sched, t = mixture(), dj.schedules.vp_linear(), 0.15
    z = 2.5 * jax.random.normal(jax.random.key(3), (200_000, 3))
    log_q = stats.norm.logpdf(np.asarray(z), scale=2.5).sum(-1)
    ratio = np.exp(np.asarray(gmm.log_prob(z, sched, t)) - log_q)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std() / np.sqrt(ratio.size)


def _mode_statistics(gmm, x):
    """Mode weights and within-mode means/stds, assigning each sample to its likeliest component."""
    comp = np.asarray(jnp.argmax(gmm.posterior(x, dj.schedules.edm(), 1e-9), axis=-1))
    x = np.asarray(x)
    weights = np.bincount(comp, minlength=3) / len(comp)
    means = np.stack([x[comp == k].mean(0) for k in range(3)])
    stds = np.stack([x[comp == k].std(0) for k in range(3)])
    return weights, means, stds


def test_exact_reverse_kernel_chain_from_p_T_reproduces_p_0_and_ddpm_with_ten_steps_does_not():
    gmm, sched = mixture(dim=2), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 10, t_min=0.0)
    n = 40_000
    x_T = gmm.sample(jax.random.key(4), n, sched, ts[0])
    exact, info = dj.sample(gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(5), x_T)
    ddpm, _ = dj.sample(dj.solvers.ddim(eta=1.0), gmm.denoiser(sched), ts, jax.random.key(5), x_T)
    assert int(info.nfe) == 0
    w, m, s = _mode_statistics(gmm, exact)
    # 5 standard errors: weights sqrt(w(1-w)/n), means s/sqrt(n w), stds s/sqrt(2 n w).
    true_w, true_m, true_s = map(np.asarray, (gmm.weights, gmm.means, gmm.scales))
    nk = n * true_w[:, None]
    assert np.all(np.abs(w - true_w) < 5 * np.sqrt(true_w * (1 - true_w) / n))
    assert np.all(np.abs(m - true_m) < 5 * true_s / np.sqrt(nk))
    assert np.all(np.abs(s - true_s) < 5 * true_s / np.sqrt(2 * nk))
    # KS on a projection against the exact projected mixture.
    u = np.array([0.6, 0.8])
    proj_cdf = lambda q: sum(
        wk * stats.norm.cdf(q, mk @ u, np.sqrt(sk**2 @ u**2)) for wk, mk, sk in zip(true_w, true_m, true_s)
    )
    assert stats.kstest(np.asarray(exact) @ u, proj_cdf).pvalue > 1e-3
    # The same statistics catch DDPM's discretisation error at ten steps.
    _, _, s_ddpm = _mode_statistics(gmm, ddpm)
    assert np.max(np.abs(s_ddpm - true_s) / (true_s / np.sqrt(2 * nk))) > 20


def test_pf_ode_reference_matches_the_closed_form_gaussian_flow():
    # For one Gaussian N(m, s^2): x_bar(s') = m + sqrt((s_k^2 + s'^2) / (s_k^2 + s^2)) (x_bar(s) - m).
    g = dj.data.GaussianMixture([1.0], [[0.5, -1.0, 2.0]], [[0.05, 0.7, 2.0]])
    sched = dj.schedules.vp_cosine()
    t0, t1 = 0.9, 0.01
    x = g.sample(jax.random.key(6), 16, sched, t0)
    s0, s1 = sched.ve_sigma(t0), sched.ve_sigma(t1)
    m, sk = g.means[0], g.scales[0]
    want = sched.alpha(t1) * (m + jnp.sqrt((sk**2 + s1**2) / (sk**2 + s0**2)) * (x / sched.alpha(t0) - m))
    np.testing.assert_allclose(g.pf_ode(x, sched, t0, t1), want, rtol=1e-9, atol=1e-9)
