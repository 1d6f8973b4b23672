"""DDRM (T-DDRM of anchors-inverse-discrete.md §4) against exact recursions and posteriors.

Under the unit-Gaussian prior N(0, I) every spectral coordinate of every DDRM step is scalar-affine,
c' = A c + B y_bar + std z with x0_bar = x_bar / (1 + sigma_bar^2), so the law of the output is a
Gaussian whose mean and variance `recursion` propagates exactly in NumPy for any grid. Monte Carlo
of the implementation (vmapped over 2048 samples) is compared with it at 5 standard errors (the
exact law's SE: sqrt(v / n) for means, v sqrt(2 / (n - 1)) for variances), a level that a correct
sampler fails with probability ~1e-6 per comparison.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.guidance import operators as ops
from diffjax.guidance.ddrm import ddrm

N = 2048
D = 4


def recursion(schedule, timesteps, s, y_bar, sigma_y, eta, eta_b, project=False):
    """Exact mean and variance of each spectral coordinate of DDRM's output under N(0, I), in the
    alpha-scaled coordinates c = V^T x (module docstring of diffjax.guidance.ddrm)."""
    ts = np.asarray(timesteps)
    alpha, sigma = np.asarray(schedule.alpha(ts)), np.asarray(schedule.sigma(ts))
    s = np.asarray(s, np.float64)
    observed = s > 0
    s_safe = np.where(observed, s, 1.0)
    strong = observed & (s * sigma[0] >= alpha[0] * sigma_y)
    mean = np.where(strong, alpha[0] * y_bar, 0.0)
    var = np.where(strong, sigma[0] ** 2 - (alpha[0] * sigma_y / s_safe) ** 2, sigma[0] ** 2)
    keep, gain = np.sqrt(1 - eta**2), s / (sigma_y if sigma_y > 0 else 1.0)
    for a_t, s_t, a, sg in zip(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]):
        k0 = a_t / (a_t**2 + s_t**2)  # x0_bar = k0 c_t
        ke = (1 - a_t * k0) / s_t  # eps_bar = ke c_t
        missing = (a * k0 + keep * sg * ke, 0.0, eta * sg)
        less_noisy = (a * k0 - keep * sg * gain * k0, keep * sg * gain, eta * sg)
        noisier = (a * (1 - eta_b) * k0, a * eta_b, np.sqrt(np.maximum(sg**2 - (eta_b * a * sigma_y / s_safe) ** 2, 0)))
        below = s * sg < a * sigma_y
        coef, offset, std = (
            np.where(observed, np.where(below, lo, no), mi) for lo, no, mi in zip(less_noisy, noisier, missing)
        )
        mean, var = coef * mean + offset * y_bar, coef**2 * var + std**2
    if project:
        mean, var = np.where(observed, y_bar, mean), np.where(observed, 0.0, var)
    return mean, var


def operator_with(singular_values, rows, seed=0):
    """A `matrix` operator (rows x D) with the given singular values and random orthogonal U, V."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(rows, rows)))[0]
    v = np.linalg.qr(rng.normal(size=(D, D)))[0]
    a = u @ np.diag(singular_values) @ v[:, : len(singular_values)].T
    return ops.matrix(a, (D,)), a


def ddrm_grid():
    """The README's grid on DDRM's linear-beta DDPM schedule: steps 950, 900, ..., 0, then the data."""
    sched = dj.schedules.discrete()
    return sched, jnp.asarray(np.concatenate([(np.arange(950, -1, -50) + 1) / 1000, [0.0]]))


def unit_prior(d=D):
    return dj.data.LinearGaussian(np.zeros(d), np.eye(d))


def run(solver, schedule, timesteps, seed=0, d=D, **kw):
    x_T = dj.prior_sample(jax.random.key(seed), schedule, timesteps, (N, d))
    return dj.sample(solver, unit_prior(d).denoiser(schedule), timesteps, jax.random.key(seed + 1), x_T, **kw)


def assert_law(samples, mean, var, n=N):
    """Per-coordinate mean and variance of `samples` (n, d) match the exact law to 5 SE."""
    np.testing.assert_allclose(samples.mean(0), mean, rtol=0, atol=5 * np.sqrt(var / n).max() + 1e-12)
    np.testing.assert_allclose(samples.var(0, ddof=1), var, rtol=0, atol=5 * var.max() * np.sqrt(2 / (n - 1)) + 1e-12)


def test_recursion_of_a_noiseless_observed_coordinate_is_the_anchor_law():
    # eta_b = 1, sigma_y = 0: every step sets x_bar = y_bar + sigma_bar z, so x0-hat at the last grid
    # point before the data is (y_bar + sigma_bar_1 z) / (1 + sigma_bar_1^2): anchors' mean 0.99990 y_bar,
    # sd 0.0099995 (sigma_bar_1^2 = beta_0 / (1 - beta_0) = 1.0001e-4)
    sched, ts = ddrm_grid()
    mean, var = recursion(sched, ts[:-1], [1.0], np.array([1.0]), 0.0, 0.85, 1.0)
    sb2, alpha = float(sched.ve_sigma(ts[-2]) ** 2), float(sched.alpha(ts[-2]))  # recursion is alpha-scaled
    np.testing.assert_allclose(sb2, 1e-4 / (1 - 1e-4), rtol=1e-12)
    np.testing.assert_allclose(mean / alpha / (1 + sb2), 0.99990, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(var) / alpha / (1 + sb2), 0.0099995, atol=1e-7)


CASES = {
    # missing + less noisy + noisier (every observed coordinate switches branch on the grid)
    "noisy": (0.3, 0.85, 1.0, "vp_linear"),
    # missing + noiseless observed; the grid ends at sigma = 0, where observed coordinates are exact
    "noiseless": (0.0, 0.85, 1.0, "ddrm"),
    # other eta, eta_b; rectified flow starts at alpha = 0 (nothing divides by alpha)
    "flow": (0.1, 0.5, 0.6, "rectified_flow"),
}


def grid(name):
    if name == "ddrm":
        return ddrm_grid()
    if name == "vp_linear":
        sched = dj.schedules.vp_linear()
        return sched, dj.timesteps.uniform(sched, 30)
    sched = dj.schedules.rectified_flow()
    return sched, dj.timesteps.uniform(sched, 25)


@pytest.mark.parametrize("case", sorted(CASES))
def test_monte_carlo_follows_the_exact_recursion(case):
    sigma_y, eta, eta_b, grid_name = CASES[case]
    sched, ts = grid(grid_name)
    op, a = operator_with([2.0, 1.0, 0.4], rows=3)
    x_true = np.array([0.7, -0.5, 1.2, 0.3])
    y = jnp.broadcast_to(jnp.asarray(a @ x_true), (N, 3))
    x, info = run(ddrm(op, y, sigma_y, eta=eta, eta_b=eta_b), sched, ts)
    assert int(info.nfe) == len(ts) - 1  # one network evaluation per step
    s = np.asarray(op.singular_values)
    y_bar = np.where(s > 0, np.asarray(op.measurement_to_spectral(y[0])) / np.where(s > 0, s, 1), 0)
    mean, var = recursion(sched, ts, s, y_bar, sigma_y, eta, eta_b)
    assert_law(np.asarray(op.to_spectral(x)), mean, var)


@pytest.mark.parametrize("kind", ["matrix", "inpainting"])
def test_noiseless_ddrm_on_the_unit_gaussian_has_the_posterior_mean(kind):
    # the claim "DDRM on G0 with its exact SVD matches the posterior mean", on Sigma = I: it
    # holds for sigma_y = 0 (observed coordinates end at y_bar, missing ones have mean 0). For
    # sigma_y > 0 it does not: the less-noisy case is not the posterior (see the report).
    sched, ts = ddrm_grid()
    x_true = np.array([0.7, -0.5, 1.2, 0.3])
    if kind == "matrix":
        op, a = operator_with([2.0, 1.0, 0.4], rows=3, seed=1)
        y_one = a @ x_true
    else:
        mask = np.array([1.0, 0.0, 1.0, 1.0])
        op, a = ops.inpainting(mask), np.diag(mask)[mask > 0]
        y_one = mask * x_true
    x, _ = run(ddrm(op, jnp.broadcast_to(jnp.asarray(y_one), (N, len(y_one))), 0.0), sched, ts, seed=3)
    m, c = unit_prior().posterior(a, a @ x_true, 0.0)
    cov = np.cov(np.asarray(x).T)
    np.testing.assert_allclose(x.mean(0), m, atol=5 * np.sqrt(np.diag(cov).max() / N))
    # the covariance is not the posterior's: the missing direction has variance < 1 (eta = 0.85)
    s = np.asarray(op.singular_values)
    _, var = recursion(sched, ts, s, np.zeros(D), 0.0, 0.85, 1.0)
    assert np.all(var[s == 0] < 0.7)
    np.testing.assert_allclose(np.trace(cov), var.sum(), atol=5 * var.sum() * np.sqrt(2 / N))
    assert np.trace(np.asarray(c)) - var.sum() > 0.3


def test_noiseless_observed_coordinate_with_eta_b_one():
    sched, ts = ddrm_grid()
    mask = np.array([1.0, 1.0, 0.0])
    y = jnp.broadcast_to(jnp.array([1.0, -0.5, 0.0]), (N, 3))
    x, info = run(ddrm(ops.inpainting(mask), y, 0.0), sched, ts, d=3, return_trajectory=True)
    # the boundary s sigma_bar >= sigma_y puts the last step (sigma_bar = 0) in the "noisier" case: A x = y
    np.testing.assert_array_equal(x[:, :2], y[:, :2])
    # the official code returns the last x0-hat: its exact law (anchors): mean y/(1 + sb1^2), sd sb1/(1 + sb1^2)
    sb1 = float(sched.ve_sigma(ts[-2]))
    mean = np.asarray(y[0, :2]) / (1 + sb1**2)
    var = np.full(2, (sb1 / (1 + sb1**2)) ** 2)
    assert_law(np.asarray(info.x0_trajectory[-1][:, :2]), mean, var)
    # project=True on a grid ending at sigma_bar_N > 0 (where x_bar = y_bar + sigma_bar_N z) puts y back exactly
    vp = dj.schedules.vp_linear()
    x, _ = run(ddrm(ops.inpainting(mask), y, 0.0, project=True), vp, dj.timesteps.uniform(vp, 20), d=3)
    np.testing.assert_allclose(x[:, :2], y[:, :2], rtol=0, atol=1e-14)


EVENT = (4, 4, 3)
PIXEL_PRIOR = dj.data.GaussianMixture([0.5, 0.5], [[0.5, -0.3, 0.2], [-0.5, 0.3, -0.2]],
                                      [[0.3, 0.4, 0.5], [0.4, 0.3, 0.2]])  # fmt: skip


OPERATORS = {
    "inpainting": lambda: ops.inpainting(ops.box_mask(EVENT, 1, 1, 2, 2)),
    "downsample": lambda: ops.downsample(EVENT, 2),
    "blur": lambda: ops.blur(ops.gaussian_kernel(3, 1.0), EVENT),  # complex Fourier coordinates
}


def restore(kind, sigma_y, project=False):
    """DDRM on a 4 x 4 x 3 image prior (two components per pixel over the channels, exact denoiser),
    20 cosine steps, B = 4: (A, y, x)."""
    op = OPERATORS[kind]()
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 20)
    x_true = PIXEL_PRIOR.sample(jax.random.key(5), 4 * 16).reshape((4,) + EVENT)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (4,) + EVENT)
    y = op(x_true) + sigma_y * jax.random.normal(jax.random.key(1), (4,) + op.measurement_shape)
    x, _ = dj.sample(ddrm(op, y, sigma_y, project=project), PIXEL_PRIOR.denoiser(sched), ts, jax.random.key(2), x_T)
    assert x.dtype == jnp.float64 and x.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x)))
    return op, y, x


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_image_operators_give_real_consistent_restorations(kind):
    op, y, x = restore(kind, 0.01)
    # 20 coarse steps: the last step (sigma_bar 0.09 -> 0.006) leaves an error ~6 sigma_y (recursion: 0.059)
    assert float(jnp.sqrt(jnp.mean((op(x) - y) ** 2))) < 0.1


def test_projection_makes_the_measurement_exact():
    op, y, x = restore("blur", 0.0, project=True)
    np.testing.assert_allclose(op(x), op(op.pinv(y)), rtol=0, atol=1e-10)  # A x = y on the range of A


def test_per_sample_and_one_compilation_for_new_measurements():
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 10)
    prior = unit_prior()
    den = dj.Denoiser(chex.assert_max_traces(lambda p, x, t, c: p.x0_mean(x, sched, t), n=1), prior,
                      schedule=sched, prediction="x0", time_fn=lambda t: t)  # fmt: skip
    op, _ = operator_with([2.0, 1.0, 0.4], rows=3)
    x_T = jax.random.normal(jax.random.key(0), (5, D))
    y = jax.random.normal(jax.random.key(1), (5, 3))
    x, _ = dj.sample(ddrm(op, y, 0.1), den, ts, jax.random.key(2), x_T)
    # other samples change (new x_T and y for rows 1..4, a new sigma_y leaf traced the same): row 0 does not
    x_T2, y2 = x_T.at[1:].set(3.0), y.at[1:].multiply(-2.0)
    x2, _ = dj.sample(ddrm(op, y2, 0.1), den, ts, jax.random.key(2), x_T2)
    np.testing.assert_allclose(x2[0], x[0], rtol=1e-13, atol=1e-13)
    assert not np.allclose(x2[1:], x[1:])
    dj.sample(ddrm(op, y2, 0.2), den, ts, jax.random.key(2), x_T2)  # new sigma_y: no retrace either


def test_invalid_arguments_raise():
    op, _ = operator_with([2.0, 1.0, 0.4], rows=3)
    y = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="operator"):
        ddrm(ops.linear(lambda x: 2 * x, (D,)), jnp.zeros((2, D)), 0.1)
    with pytest.raises(ValueError, match="operator"):
        ddrm(ops.nonlinear(jnp.sin, (D,), (D,)), jnp.zeros((2, D)), 0.1)
    with pytest.raises(ValueError, match="y must have shape"):
        ddrm(op, jnp.zeros((2, 4)), 0.1)
    with pytest.raises(ValueError, match="y must be finite"):
        ddrm(op, y.at[0, 0].set(jnp.nan), 0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        ddrm(op, y, -0.1)
    with pytest.raises(ValueError, match="eta"):
        ddrm(op, y, 0.1, eta=1.5)
    with pytest.raises(ValueError, match="eta_b"):
        ddrm(op, y, 0.1, eta_b=-0.1)
    with pytest.raises(ValueError, match="project"):
        ddrm(op, y, 0.1, project=1)
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 4)
    with pytest.raises(ValueError, match="x_T must have shape"):
        dj.sample(ddrm(op, y, 0.1), unit_prior().denoiser(sched), ts, jax.random.key(0), jnp.zeros((3, D)))
    assert ddrm(op, y, 0.1) == ddrm(op, jnp.zeros((2, 3)), 0.1) and ddrm(op, y, 0.1) != ddrm(op, y + 1, 0.1)
