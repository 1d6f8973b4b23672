"""DEIS (tAB in log rho): the DDIM identity, convergence order on the exact Gaussian PF-ODE, the
compiled sampler against a Python loop written from diffusers' formulas, NFE, dtypes, arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.solvers.deis import deis, moment_weights
from helpers import convergence, gaussian, gaussian_flow, mixture


def karras(sched, n):
    return dj.timesteps.karras(sched, n, sigma_min=0.002, sigma_max=80.0, append_zero=False)


def logsnr(sched, n):
    return dj.timesteps.logsnr_uniform(sched, n, t_min=1e-3)


def edm_mid(sched, n):  # sigma in [0.2, 5]: x0 moves over the first step
    return dj.timesteps.karras(sched, n, sigma_min=0.2, sigma_max=5.0, append_zero=False)


def logsnr_mid(sched, n):  # vp_linear: sigma/alpha in [0.17, 6.1]
    return dj.timesteps.logsnr_uniform(sched, n, t_min=0.05, t_max=0.6)


@pytest.mark.parametrize("sched", [dj.schedules.vp_linear(), dj.schedules.edm()], ids=["vp_linear", "edm"])
def test_order_one_is_ddim(sched):
    ts = dj.timesteps.karras(sched, 25, sigma_min=0.01, sigma_max=50.0, append_zero=False)
    gmm = mixture()
    x_T = gmm.sample(jax.random.key(0), 64, sched, ts[0])
    x_ddim, _ = dj.sample(dj.solvers.ddim(), gmm.denoiser(sched), ts, jax.random.key(1), x_T)
    x_deis, info = dj.sample(deis(order=1), gmm.denoiser(sched), ts, jax.random.key(1), x_T)
    np.testing.assert_allclose(x_deis, x_ddim, rtol=0, atol=1e-12)
    assert int(info.nfe) == 25


def test_moment_weights_solve_the_vandermonde_system_for_each_order():
    nodes, moments = jnp.array([0.3, -0.5, 1.7]), jnp.array([1.0, -2.0, 0.5])
    for k in (0, 1, 2, 3):
        w = moment_weights(nodes, moments, jnp.int32(k))
        want = np.zeros(3)
        if k:
            want[:k] = np.linalg.solve(np.vander(nodes[:k], increasing=True).T, moments[:k])
        np.testing.assert_allclose(w, want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("order", [1, 2])
def test_convergence_order_on_the_exact_gaussian_flow(order):
    solver, sched = deis(order), dj.schedules.vp_linear()  # one solver for both grids: one compile per n
    for grid in (karras, logsnr):
        errors, slopes = convergence(solver, sched, grid, ns=(64, 128, 256, 512))
        assert np.all(np.abs(slopes - solver.order) < 0.15), (grid.__name__, errors, slopes)


def test_order_three_converges_at_three_after_its_first_order_warm_up_step():
    # Multistep DEIS starts with a DDIM step, whose local O(h^2) error is the whole global error on the
    # logSNR grid from n ~ 1000 on (slopes 3.8, 3.5, 2.9, 2.4, 2.1, 2.0 for n = 64 ... 4096); on the
    # Karras grid it hides until n ~ 2048 (its first step sits at sigma = 80). So measure the error
    # against the exact flow from the sampler's own state after that step, which removes the warm-up
    # term: slope 3.0 on Karras; about 4 on the uniform logSNR grid (3.96 - 3.99 up to n = 1024, then
    # falling: the h^3 term is small on this problem), and at least 3 is what theory promises there.
    # The raw Karras slope 3 is pre-asymptotic: deis(3) declares order 2 (`solver.order`), which its
    # warm-up step imposes from n ~ 2048 on here and from n ~ 32 on a grid over sigma in [0.2, 5]
    # (tests/test_dpm_solver.py); with start="singlestep" it declares and measures 3 everywhere.
    g, sched, solver = gaussian(), dj.schedules.vp_linear(), deis(3)
    assert solver.order == 2
    for grid in (karras, logsnr):
        raw, after_warm_up = [], []
        for n in (128, 256, 512, 1024):
            ts = grid(sched, n)
            x_T = g.sample(jax.random.key(0), 32, sched, ts[0])
            x, info = dj.sample(solver, g.denoiser(sched), ts, jax.random.key(1), x_T, return_trajectory=True)
            raw.append(jnp.sqrt(jnp.mean((x - gaussian_flow(g, x_T, sched, ts[0], ts[-1])) ** 2)))
            x1 = info.trajectory[1]
            after_warm_up.append(jnp.sqrt(jnp.mean((x - gaussian_flow(g, x1, sched, ts[1], ts[-1])) ** 2)))
        slopes = np.log2(np.array(after_warm_up[:-1]) / np.array(after_warm_up[1:]))
        if grid is karras:
            raw_slopes = np.log2(np.array(raw[:-1]) / np.array(raw[1:]))
            assert np.all(np.abs(raw_slopes - 3.0) < 0.15), (raw, raw_slopes)
            assert np.all(np.abs(slopes - 3.0) < 0.15), (after_warm_up, slopes)
        else:
            assert np.all(slopes > 3.0 - 0.15), (after_warm_up, slopes)


def test_lower_order_start_caps_order_three_at_two_on_a_mid_range_grid():
    # Over sigma in [0.2, 5] the first-order first step's local O(h^2) error is the global error from
    # n ~ 32 on (slopes 1.95, 1.97, 1.98, 1.99 for n = 32 ... 512): the declared order is 2.
    solver = deis(3)
    errors, slopes = convergence(solver, dj.schedules.edm(), edm_mid, ns=(64, 128, 256, 512))
    assert np.all(np.abs(slopes - solver.order) < 0.15), (errors, slopes)


def test_singlestep_start_reaches_the_declared_order():
    # A singlestep DPM-Solver++-3 first step (local error O(h^4)) makes DEIS-3 third order on every grid.
    # Measured slopes for n = 64 ... 1024: Karras 2.85, 2.94, 2.97, 2.99; EDM [0.2, 5] 2.96, 2.98, 2.99,
    # 2.995; logSNR over t in [0.05, 0.6] 2.99, 2.99, 2.99, 2.995. On the full logSNR grid (t_min = 1e-3)
    # the global h^3 term nearly cancels (x0 is flat at both ends) and the slopes stay near 4 up to
    # n ~ 2000 (3.98, 3.99, 3.95, 3.78, 3.43 for n = 128 ... 4096), so the mid-range logSNR grid is used.
    solver, vp = deis(3, start="singlestep"), dj.schedules.vp_linear()
    assert solver.order == 3
    for sched, grid in ((vp, karras), (dj.schedules.edm(), edm_mid), (vp, logsnr_mid)):
        errors, slopes = convergence(solver, sched, grid, ns=(64, 128, 256, 512, 1024))
        assert np.all(np.abs(slopes[-3:] - solver.order) < 0.15), (grid.__name__, errors, slopes)


def _reference_deis(gmm, sched, ts, x, order, lower_order_final):
    """diffusers' DEISMultistepScheduler.step (algorithm_type="deis"), one Python iteration per step in
    float64 numpy, with its antiderivatives in absolute log rho. Returns the sample and the NFE."""
    ts = [float(t) for t in ts]
    alpha = [float(sched.alpha(t)) for t in ts]
    sigma = [float(sched.sigma(t)) for t in ts]
    rho = [s / a for s, a in zip(sigma, alpha)]
    n, outputs = len(ts) - 1, []

    def ind2(t, b, c):  # integral of (log t - log c)/(log b - log c) dt
        return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))

    def ind3(t, b, c, d):  # integral of (log t - log c)(log t - log d)/((log b - log c)(log b - log d)) dt
        lc, ld, lt = np.log(c), np.log(d), np.log(t)
        return t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2) / ((np.log(b) - lc) * (np.log(b) - ld))

    x = np.asarray(x)
    for i in range(n):
        x0 = np.asarray(gmm.x0_mean(jnp.asarray(x), sched, ts[i]))
        outputs.append((x - alpha[i] * x0) / sigma[i])
        final = lower_order_final and n < 15 and i == n - 1
        second = lower_order_final and n < 15 and i == n - 2
        rt, r0 = rho[i + 1], rho[i]
        if order == 1 or i < 1 or final:
            h = np.log(alpha[i + 1] / sigma[i + 1]) - np.log(alpha[i] / sigma[i])
            x = alpha[i + 1] / alpha[i] * x - sigma[i + 1] * np.expm1(h) * outputs[-1]
        elif order == 2 or i < 2 or second:
            r1 = rho[i - 1]
            c1, c2 = ind2(rt, r0, r1) - ind2(r0, r0, r1), ind2(rt, r1, r0) - ind2(r0, r1, r0)
            x = alpha[i + 1] * (x / alpha[i] + c1 * outputs[-1] + c2 * outputs[-2])
        else:
            r1, r2 = rho[i - 1], rho[i - 2]
            c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2)
            c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0)
            c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1)
            x = alpha[i + 1] * (x / alpha[i] + c1 * outputs[-1] + c2 * outputs[-2] + c3 * outputs[-3])
    return x, len(outputs)


@pytest.mark.parametrize("order, lower_order_final, n", [(3, True, 16), (2, True, 10), (3, True, 10), (3, False, 10)])
def test_compiled_sampler_equals_the_diffusers_loop(order, lower_order_final, n):
    # n = 10 < 15 lowers the last two orders (diffusers' rule); n = 16 does not.
    gmm, sched = mixture(), dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, n, spacing="linspace", family="dpmsolver", final="sigma_min")
    x_T = jax.random.normal(jax.random.key(3), (32, 3))
    got, info = dj.sample(deis(order, lower_order_final), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    want, nfe = _reference_deis(gmm, sched, ts, x_T, order, lower_order_final)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    assert int(info.nfe) == nfe == n


def test_a_step_to_sigma_zero_is_first_order_and_returns_the_denoised_sample():
    gmm, sched = mixture(), dj.schedules.edm()
    ts = dj.timesteps.karras(sched, 20)  # ends at sigma = 0; 20 >= 15 steps, so no lowering by rule
    x_T = gmm.sample(jax.random.key(0), 32, sched, ts[0])
    x, info = dj.sample(deis(3), gmm.denoiser(sched), ts, jax.random.key(1), x_T, return_trajectory=True)
    np.testing.assert_allclose(x, info.x0_trajectory[-1], rtol=0, atol=1e-12)
    assert int(info.nfe) == 20


def test_float32_stays_float32_and_agrees_with_float64():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 10)
    x_T = jax.random.normal(jax.random.key(5), (64, 3))
    solver = deis(3)
    x64, _ = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    x32, _ = dj.sample(solver, gmm.denoiser(sched), ts.astype(jnp.float32), jax.random.key(0), x_T.astype(jnp.float32))
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, x64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(order=4), "order"),
        (dict(order=0), "order"),
        (dict(order=2.0), "order"),
        (dict(lower_order_final=0), "lower"),
        (dict(start="singlestep_3"), "start"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deis(**kwargs)
