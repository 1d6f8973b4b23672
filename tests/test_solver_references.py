"""Compiled samplers equal plain Python loops written from their papers' algorithms, same keys."""

import jax
import numpy as np

import diffjax as dj
from diffjax.solvers.base import noise_like
from helpers import mixture

S = dj.solvers


def _ve_denoiser(gmm, sched):
    """D(x_bar; s): the exact denoiser in EDM's variables x_bar = x/alpha, s = sigma/alpha."""

    def D(x_bar, s):
        t = sched.t_from_ve_sigma(s)
        return gmm.x0_mean(x_bar * sched.alpha(t), sched, t)

    return D


def test_heun_equals_edm_algorithm_2():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.karras(sched, 12)
    x_T = gmm.sample(jax.random.key(0), 16, sched, ts[0])
    churn = dict(s_churn=30.0, s_min=0.05, s_max=20.0, s_noise=1.003)
    got, info = dj.sample(S.heun(**churn), gmm.denoiser(sched), ts, jax.random.key(1), x_T)

    D, keys = _ve_denoiser(gmm, sched), jax.random.split(jax.random.key(1), 12)
    sig = [float(sched.ve_sigma(t)) for t in ts]
    x_next = x_T / sched.alpha(ts[0])
    for i in range(12):
        t_cur, t_next, x_cur = sig[i], sig[i + 1], x_next
        gamma = min(churn["s_churn"] / 12, np.sqrt(2) - 1) if churn["s_min"] <= t_cur <= churn["s_max"] else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + np.sqrt(t_hat**2 - t_cur**2) * churn["s_noise"] * noise_like(keys[i], x_T)
        d_cur = (x_hat - D(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < 11:
            d_prime = (x_next - D(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    np.testing.assert_allclose(got, x_next * sched.alpha(ts[-1]), rtol=1e-10, atol=1e-10)
    assert int(info.nfe) == 2 * 12 - 1


def test_euler_ancestral_equals_k_diffusion():
    gmm, sched = mixture(), dj.schedules.edm()
    ts = dj.timesteps.karras(sched, 15)
    x = gmm.sample(jax.random.key(2), 16, sched, ts[0])
    got, _ = dj.sample(S.euler_ancestral(eta=0.8), gmm.denoiser(sched), ts, jax.random.key(3), x)
    keys = jax.random.split(jax.random.key(3), 15)
    for i in range(15):
        s, s_to = float(ts[i]), float(ts[i + 1])
        sigma_up = min(s_to, 0.8 * (s_to**2 * (s**2 - s_to**2) / s**2) ** 0.5)
        sigma_down = (s_to**2 - sigma_up**2) ** 0.5
        x = x + (x - gmm.x0_mean(x, sched, s)) / s * (sigma_down - s)
        if s_to > 0:
            x = x + noise_like(keys[i], x) * sigma_up
    np.testing.assert_allclose(got, x, rtol=1e-11, atol=1e-11)


def test_ddpm_with_beta_variance_equals_ho_et_al_algorithm_2():
    # Every training step of a 50-step DDPM, in its discrete notation.
    sched = dj.schedules.discrete(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)
    betas = 1 - np.asarray(sched.alphas_cumprod) / np.concatenate([[1.0], np.asarray(sched.alphas_cumprod)[:-1]])
    abar = np.asarray(sched.alphas_cumprod)
    gmm = mixture()
    ts = dj.timesteps.diffusers(sched, 50)
    x = jax.random.normal(jax.random.key(4), (16, 3))
    got, _ = dj.sample(S.ddpm("beta"), gmm.denoiser(sched), ts, jax.random.key(5), x)
    keys = jax.random.split(jax.random.key(5), 50)
    for k, i in enumerate(range(49, -1, -1)):
        eps = (x - np.sqrt(abar[i]) * gmm.x0_mean(x, sched, (i + 1) / 50)) / np.sqrt(1 - abar[i])
        z = noise_like(keys[k], x) if i > 0 else 0.0
        x = (x - betas[i] / np.sqrt(1 - abar[i]) * eps) / np.sqrt(1 - betas[i]) + np.sqrt(betas[i]) * z
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-10)


def _vp_beta(t):
    return 0.1 + t * (20.0 - 0.1)


def test_euler_maruyama_equals_score_sde_loop():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 40)
    x = jax.random.normal(jax.random.key(6), (16, 3))
    got, _ = dj.sample(S.euler_maruyama(), gmm.denoiser(sched), ts, jax.random.key(7), x)
    keys = jax.random.split(jax.random.key(7), 40)
    for i in range(40):
        t, dt = float(ts[i]), float(ts[i + 1] - ts[i])
        drift = -0.5 * _vp_beta(t) * x - _vp_beta(t) * gmm.score(x, sched, t)
        x_mean = x + drift * dt
        x = x_mean + np.sqrt(_vp_beta(t)) * np.sqrt(-dt) * noise_like(keys[i], x)
    np.testing.assert_allclose(got, x_mean, rtol=1e-10, atol=1e-10)  # the last step returns its mean


def test_predictor_corrector_equals_score_sde_loop():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 20)
    x = jax.random.normal(jax.random.key(8), (16, 3))
    got, info = dj.sample(S.predictor_corrector(snr=0.1, n_steps=2), gmm.denoiser(sched), ts, jax.random.key(9), x)
    keys = jax.random.split(jax.random.key(9), 20)
    norm = lambda a: np.mean(np.linalg.norm(np.asarray(a).reshape(a.shape[0], -1), axis=-1))
    for i in range(20):
        t, t_next = float(ts[i]), float(ts[i + 1])
        key_c, key_p = jax.random.split(keys[i])
        ratio = float(sched.alpha(t) / sched.alpha(t_next)) ** 2
        for k in jax.random.split(key_c, 2):  # Langevin corrector at t
            grad = gmm.score(x, sched, t)
            z = noise_like(k, x)
            step = (0.1 * norm(z) / norm(grad)) ** 2 * 2 * ratio
            x = x + step * grad + np.sqrt(2 * step) * z
        dt = t_next - t  # Euler-Maruyama predictor from t to t'
        x_mean = x + (-0.5 * _vp_beta(t) * x - _vp_beta(t) * gmm.score(x, sched, t)) * dt
        x = x_mean + np.sqrt(_vp_beta(t) * -dt) * noise_like(key_p, x)
    np.testing.assert_allclose(got, x_mean, rtol=1e-10, atol=1e-10)
    assert int(info.nfe) == 20 * 3
