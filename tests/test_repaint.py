"""RePaint (T-RP of anchors-inverse-discrete.md §6): its schedule, its identities and exact laws.

With a Gaussian prior and the exact Gaussian reverse kernel every RePaint operation is affine in
the state with Gaussian noise (the replacement, the forward jump, the kernel step), so the law of
the output is a Gaussian that `repaint_law` propagates exactly; Monte Carlo (2048 samples) is
compared with it at 5 standard errors, and the exact errors against the true conditional give the
error-versus-r figures without Monte Carlo error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import gaussian
from diffjax.arrays import noise_like
from diffjax.guidance.repaint import repaint, repaint_schedule
from diffjax.solvers.base import State, StepInfo, single_step_init
from helpers import mixture

N = 2048


COUNTS = [(250, 10, 10, 2410, 2160), (20, 5, 3, 50, 30), (10, 3, 2, 19, 9)]  # anchors §6: (T, j, r, calls, levels)


@pytest.mark.parametrize("steps, j, r, calls, levels", COUNTS)
def test_schedule_reproduces_the_official_counts(steps, j, r, calls, levels):
    indices, jumps = repaint_schedule(steps, j, r)
    assert len(indices) == calls and j * int(jumps.sum()) == levels
    # every entry is one down step; after a jump the walk resumes j grid steps higher
    assert indices[0] == 0 and indices[-1] == steps - 1 and not jumps[0]
    np.testing.assert_array_equal(np.diff(indices)[~jumps[1:]], 1)
    np.testing.assert_array_equal(indices[1:][jumps[1:]], indices[:-1][jumps[1:]] + 1 - j)


def test_schedule_by_hand():
    indices, jumps = repaint_schedule(10, 3, 2)  # jump points at levels 6, 3, 0 = grid indices 3, 6, 9
    np.testing.assert_array_equal(indices, [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9])
    np.testing.assert_array_equal(np.flatnonzero(jumps), [3, 9, 15])
    indices, jumps = repaint_schedule(10, 3, 1)
    np.testing.assert_array_equal(indices, np.arange(10))
    assert not jumps.any()


@pytest.mark.parametrize("solver", [dj.solvers.ddpm(), dj.solvers.ddim(), dj.solvers.dpmpp_2m()], ids=str)
def test_zero_mask_without_jumps_is_plain_sampling_bit_for_bit(solver):
    g, sched = mixture(3), dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 12)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (5, 3))
    expected, _ = dj.sample(solver, g.denoiser(sched), ts, jax.random.key(3), x_T)
    x, info = repaint(g.denoiser(sched), ts, jax.random.key(3), x_T, jnp.ones((5, 3)), np.zeros(3), solver=solver,
                      jump_length=4, jump_n_sample=1)  # fmt: skip
    np.testing.assert_array_equal(x, expected)
    assert int(info.nfe) == 12 and int(info.jumps) == 0


def test_full_mask_returns_y():
    g, sched = mixture(3), dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 10)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (4, 3))
    y = jax.random.normal(jax.random.key(1), (4, 3))
    x, info = repaint(g.denoiser(sched), ts, jax.random.key(2), x_T, y, np.ones(3), jump_length=3, jump_n_sample=2)
    np.testing.assert_array_equal(x, y)
    assert int(info.nfe) == 19 and int(info.jumps) == 3
    # without pasting the output is the model's last sample, near y but not y (the official code's output)
    raw, _ = repaint(g.denoiser(sched), ts, jax.random.key(2), x_T, y, np.ones(3), jump_length=3, jump_n_sample=2,
                     paste=False)  # fmt: skip
    assert bool(jnp.all(jnp.isfinite(raw))) and not np.array_equal(raw, y)


def _stay(state, key, t, t_next, denoise):
    del key, t, t_next, denoise
    return state, StepInfo(jnp.int32(1), state.x)


STAY = dj.solvers.custom(single_step_init, _stay)  # a step that keeps x: only the jumps move it


def test_jumps_draw_the_exact_forward_kernel():
    # the forward kernel q(x_{t_i} | x_{t_{i+j}}): mean ratio alpha_i / alpha_{i+j}, variance
    # sigma_i^2 - ratio^2 sigma_{i+j}^2, which j one-level kernels (the official undo steps) compose to
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 10)
    alpha, sigma = np.asarray(sched.alpha(ts)), np.asarray(sched.sigma(ts))
    for i in range(7):
        ratio, var = 1.0, 0.0
        for u in range(i + 2, i - 1, -1):  # one level at a time: from index i + 3 up to index i
            rho = alpha[u] / alpha[u + 1]
            ratio, var = rho * ratio, rho**2 * var + sigma[u] ** 2 - rho**2 * sigma[u + 1] ** 2
        np.testing.assert_allclose(ratio, alpha[i] / alpha[i + 3], rtol=1e-13)
        np.testing.assert_allclose(var, sigma[i] ** 2 - ratio**2 * sigma[i + 3] ** 2, rtol=1e-12)
    # the sampler's jumps are that kernel, with the noise of fold_in(key_k, 2)
    x_T = jax.random.normal(jax.random.key(0), (3, 2))
    key = jax.random.key(4)
    x, info = repaint(mixture(2).denoiser(sched), ts, key, x_T, jnp.zeros((3, 2)), np.zeros(2), solver=STAY,
                      jump_length=3, jump_n_sample=2)  # fmt: skip
    indices, jumps = repaint_schedule(10, 3, 2)
    keys = jax.random.split(key, len(indices))
    expected = np.asarray(x_T)
    for k in np.flatnonzero(jumps):
        i = indices[k]
        rho = alpha[i] / alpha[i + 3]
        z = np.asarray(noise_like(jax.random.fold_in(keys[k], 2), x_T))
        expected = rho * expected + np.sqrt(sigma[i] ** 2 - rho**2 * sigma[i + 3] ** 2) * z
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-14)
    assert int(info.jumps) == 3 and int(info.nfe) == 19


def test_factorised_prior_leaves_the_unknown_coordinates_at_the_prior():
    # one diagonal Gaussian and its exact reverse kernel: the free coordinates never see the known ones
    g = dj.data.GaussianMixture([1.0], [[0.5, -1.0, 0.3, 2.0]], [[0.7, 1.3, 0.4, 0.9]])
    sched = dj.schedules.vp_linear()
    ts = jnp.linspace(1.0, 0.0, 21)
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    y = jnp.broadcast_to(jnp.array([3.0, 0.0, -2.0, 0.0]), (N, 4))
    x_T = g.sample(jax.random.key(0), N, sched, ts[0])
    x, _ = repaint(g.denoiser(sched), ts, jax.random.key(1), x_T, y, mask, solver=g.exact_solver(sched),
                   jump_length=5, jump_n_sample=3)  # fmt: skip
    np.testing.assert_array_equal(x[:, mask > 0], y[:, mask > 0])
    free = np.asarray(x[:, mask == 0])
    mean, var = np.asarray(g.means[0, mask == 0]), np.asarray(g.scales[0, mask == 0]) ** 2
    np.testing.assert_allclose(free.mean(0), mean, atol=5 * np.sqrt(var / N).max())
    np.testing.assert_allclose(free.var(0), var, atol=5 * var.max() * np.sqrt(2 / N))


# --- F-b: prior N(0, [[1, .8], [.8, 1]]), x0 = 1 known exactly, so x1 | y ~ N(0.8, 0.36) ----------

COV = np.array([[1.0, 0.8], [0.8, 1.0]])
FB = dj.data.LinearGaussian(np.zeros(2), COV)
FB_SCHED = dj.schedules.vp_linear()
FB_GRID = jnp.concatenate([dj.timesteps.logsnr_uniform(FB_SCHED, 30)[:-1], jnp.zeros(1)])  # 30 steps, to t = 0


def _kernel(t, t_next):
    """The exact reverse kernel p(x_s | x_t) of the Gaussian prior: x_s = K x_t + L z."""
    a, s = FB_SCHED.alpha(t), FB_SCHED.sigma(t)
    s_t = a**2 * COV + s**2 * np.eye(2)
    gain = a * COV @ jnp.linalg.inv(s_t)  # E[x0 | x_t] = gain x_t
    c = gaussian.posterior_coefficients(FB_SCHED, t, t_next)
    c1 = c.x0_coef - c.eps_coef * a / s
    return c1 * gain + c.eps_coef / s * jnp.eye(2), c.std**2 * jnp.eye(2) + c1**2 * s**2 * COV @ jnp.linalg.inv(s_t)


def _exact_step(state, key, t, t_next, denoise):
    del denoise
    k, q = _kernel(t, t_next)
    x = state.x @ k.T + jax.random.normal(key, state.x.shape, state.x.dtype) @ jnp.linalg.cholesky(q).T
    return State(x), StepInfo(jnp.int32(1), state.x)


EXACT = dj.solvers.custom(single_step_init, _exact_step, stochastic=True)


def repaint_law(j, r, y0=1.0):
    """The exact Gaussian law (mean, covariance) of RePaint's output on F-b with the exact kernel."""
    ts = np.asarray(FB_GRID)
    alpha, sigma = np.asarray(FB_SCHED.alpha(ts)), np.asarray(FB_SCHED.sigma(ts))
    mean, cov = np.zeros(2), alpha[0] ** 2 * COV + sigma[0] ** 2 * np.eye(2)  # x_T ~ p_{t_0}
    for i, jump in zip(*repaint_schedule(len(ts) - 1, j, r)):
        if jump:
            rho = alpha[i] / alpha[i + j]
            mean, cov = rho * mean, rho**2 * cov + (sigma[i] ** 2 - rho**2 * sigma[i + j] ** 2) * np.eye(2)
        mean = np.array([alpha[i] * y0, mean[1]])
        cov = np.array([[sigma[i] ** 2, 0.0], [0.0, cov[1, 1]]])
        k, q = (np.asarray(m) for m in _kernel(ts[i], ts[i + 1]))
        mean, cov = k @ mean, k @ cov @ k.T + q
    return mean[1], cov[1, 1]


def test_jumping_brings_fb_closer_to_the_posterior():
    x_T = FB.sample(jax.random.key(0), N, FB_SCHED, FB_GRID[0])
    y = jnp.broadcast_to(jnp.array([1.0, 0.0]), (N, 2))
    errors = []
    for r in (1, 2, 5):
        x, info = repaint(FB.denoiser(FB_SCHED), FB_GRID, jax.random.key(r), x_T, y, np.array([1.0, 0.0]),
                          solver=EXACT, jump_length=5, jump_n_sample=r)  # fmt: skip
        mean, var = repaint_law(5, r)
        assert int(info.nfe) == 30 + 5 * (r - 1) * 5
        np.testing.assert_array_equal(x[:, 0], 1.0)
        np.testing.assert_allclose(x[:, 1].mean(), mean, atol=5 * np.sqrt(var / N))
        np.testing.assert_allclose(x[:, 1].var(), var, atol=5 * var * np.sqrt(2 / N))
        errors.append((abs(mean - 0.8), abs(var - 0.36), abs(x[:, 1].mean() - 0.8), np.sqrt(var / N)))
    # exact errors (r = 1, 2, 5; 10 gives 0.070, 0.036): E[x1] 0.346, 0.241, 0.132; Var 0.177, 0.116, 0.054.
    # Both shrink; the Monte Carlo error of E[x1] resolves it too, each step by > 3 SE of the difference.
    for (m1, v1, mc1, se1), (m2, v2, mc2, se2) in zip(errors, errors[1:]):
        assert m1 - m2 > 0.1 and v1 - v2 > 0.05
        assert mc1 - mc2 > 3 * np.hypot(se1, se2)


def test_per_sample():
    g, sched = mixture(3), dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 10)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (5, 3))
    y = jax.random.normal(jax.random.key(1), (5, 3))
    mask = np.array([1.0, 0.0, 1.0])
    run = lambda x_T, y: repaint(g.denoiser(sched), ts, jax.random.key(2), x_T, y, mask, jump_length=3,
                                 jump_n_sample=2)[0]  # fmt: skip
    x = run(x_T, y)
    x2 = run(x_T.at[1:].set(2.0), y.at[1:].multiply(-3.0))  # the other samples change, sample 0 must not
    np.testing.assert_allclose(x2[0], x[0], rtol=1e-13, atol=1e-13)
    assert not np.allclose(x2[1:], x[1:])


def test_invalid_arguments_raise():
    g, sched = mixture(3), dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 10)
    den, key, x_T, y = g.denoiser(sched), jax.random.key(0), jnp.zeros((2, 3)), jnp.zeros((2, 3))
    mask = np.array([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mask"):
        repaint(den, ts, key, x_T, y, np.array([1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="mask"):
        repaint(den, ts, key, x_T, y, np.ones(2))
    with pytest.raises(ValueError, match="y must"):
        repaint(den, ts, key, x_T, jnp.zeros((3, 3)), mask)
    with pytest.raises(ValueError, match="jump_length"):
        repaint(den, ts, key, x_T, y, mask, jump_length=10)
    with pytest.raises(ValueError, match="jump_length"):
        repaint(den, ts, key, x_T, y, mask, jump_length=0)
    with pytest.raises(ValueError, match="jump_n_sample"):
        repaint(den, ts, key, x_T, y, mask, jump_n_sample=0)
    with pytest.raises(ValueError, match="head or tail"):
        repaint(den, ts, key, x_T, y, mask, solver=dj.solvers.denoise_to_zero(dj.solvers.ddpm()))
    with pytest.raises(ValueError, match="solver"):
        repaint(den, ts, key, x_T, y, mask, solver="ddpm")
    with pytest.raises(ValueError, match="paste"):
        repaint(den, ts, key, x_T, y, mask, paste=1)
    with pytest.raises(ValueError, match="key"):
        repaint(den, ts, 0, x_T, y, mask)
