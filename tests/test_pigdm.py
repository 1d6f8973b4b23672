"""PiGDM on the linear-Gaussian oracle G0, where the exact conditional denoiser E[x0 | x_t, y] is known.

Pointwise: with prior covariance v I and `data_variance=v`, Cov(x0 | x_t) = r_t^2 I exactly, so PiGDM's
x0-tilde must be the Kalman conditional mean for any mean, operator and sigma_y (float64 closed forms: rounding only,
1e-12). With another covariance it must miss by the amount its own formula predicts, while
`covariance="exact"` stays exact. In distribution: the exact guided denoiser is the posterior's
denoiser, so a fine-grid sampler started from the exact p_T(x_T | y) must hit N(m, C) diffused to the
grid's last time within Monte Carlo error (5 standard errors).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.guidance import operators
from diffjax.guidance.pigdm import pigdm

SCHED = dj.schedules.vp_linear()
RNG = np.random.default_rng(1)
D = 4
MU = RNG.normal(size=D)
_M = RNG.normal(size=(D, D))
COV = _M @ _M.T / D + 0.3 * np.eye(D)
A = RNG.normal(size=(2, D))
MASK = np.array([1.0, 0.0, 1.0, 1.0])
X = jnp.asarray(RNG.normal(size=(5, D)))
TIMES = [0.05, 0.3, 0.8, jnp.array([0.02, 0.2, 0.5, 0.7, 0.95])]


@jax.jit
def _call(guided, x, t):
    return guided(x, t)


@jax.jit
def _kalman(prior, t, a, y, sigma_y):
    return prior.conditional_x0_mean(X, SCHED, t, a, y, sigma_y)


def _cases():
    """(name, operator, dense rows of A that are measured, y) for a matrix, a mask and a function."""
    y = jnp.asarray(np.random.default_rng(100).normal(size=2))
    y_mask = jnp.asarray(MASK * np.random.default_rng(101).normal(size=D))
    rows = np.flatnonzero(MASK)
    return [
        ("matrix", operators.matrix(A, (D,)), A, y, y),
        ("inpainting", operators.inpainting(MASK), np.eye(D)[rows], y_mask, y_mask[rows]),
        ("linear_fn", operators.linear(lambda x: jnp.asarray(A) @ x, (D,)), A, y, y),
    ]


@pytest.mark.parametrize(
    "case,sigma_y,variance",
    [(c, s, v) for c in _cases() for s in (0.3, 0.0) for v in (1.0, 0.3) if c[0] != "linear_fn" or s == 0],
    ids=lambda v: v[0] if isinstance(v, tuple) else str(v),
)  # the linear function has no SVD: sigma_y = 0 only
def test_isotropic_prior_gives_the_exact_conditional_mean(case, sigma_y, variance):
    _, op, a, y, y_rows = case
    prior = dj.data.LinearGaussian(MU, variance * np.eye(D))
    guided = pigdm(prior.denoiser(SCHED), op, y, sigma_y, data_variance=variance)
    for t in TIMES:
        got = _call(guided, X, t)
        np.testing.assert_allclose(got.x0, _kalman(prior, t, a, y_rows, sigma_y), rtol=0, atol=1e-12)
        alpha, sigma = (dj.arrays.broadcast_to_x(f(jnp.asarray(t)), X) for f in (SCHED.alpha, SCHED.sigma))
        np.testing.assert_allclose(alpha * got.x0 + sigma * got.eps, X, rtol=0, atol=1e-12)  # consistent views


@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_other_covariances_miss_by_the_formula_and_the_exact_covariance_does_not(sigma_y):
    prior = dj.data.LinearGaussian(MU, COV)
    den = prior.denoiser(SCHED)
    op = operators.matrix(A, (D,))
    y = jnp.asarray(np.random.default_rng(102).normal(size=2))
    for t in TIMES[:3]:
        alpha, sigma = float(SCHED.alpha(t)), float(SCHED.sigma(t))
        x0 = np.asarray(prior.x0_mean(X, SCHED, t))
        jac = np.asarray(prior.jacobian(X, SCHED, t))[0]
        r2 = sigma**2 / (alpha**2 + sigma**2)
        bracket = A.T @ np.linalg.inv(r2 * A @ A.T + sigma_y**2 * np.eye(2))
        predicted = x0 + sigma**2 / alpha * (np.asarray(y) - x0 @ A.T) @ (jac.T @ bracket).T
        got = _call(pigdm(den, op, y, sigma_y), X, t).x0
        np.testing.assert_allclose(got, predicted, rtol=0, atol=1e-12)
        kalman = np.asarray(_kalman(prior, t, A, y, sigma_y))
        assert np.abs(predicted - kalman).max() > 1e-3  # the r_t^2 I approximation is off here
        if sigma_y == 0.3:  # and the unit-variance r_t^2 misses an isotropic prior of another variance
            small = dj.data.LinearGaussian(MU, 0.3 * np.eye(D))
            unit = _call(pigdm(small.denoiser(SCHED), op, y, sigma_y), X, t).x0
            assert np.abs(unit - np.asarray(_kalman(small, t, A, y, sigma_y))).max() > 1e-3
        exact = _call(pigdm(den, op, y, sigma_y, covariance="exact"), X, t).x0
        np.testing.assert_allclose(exact, kalman, rtol=0, atol=1e-12)


def test_weight_and_scale():
    prior = dj.data.LinearGaussian(MU, COV)
    den = prior.denoiser(SCHED)
    op, y, t = operators.matrix(A, (D,)), jnp.asarray(np.random.default_rng(103).normal(size=2)), 0.4
    base = den(X, t)
    principled = _call(pigdm(den, op, y, 0.1), X, t)
    damped = _call(pigdm(den, op, y, 0.1, weight="reddiff"), X, t)
    doubled = _call(pigdm(den, op, y, 0.1, scale=2.0), X, t)
    alpha_bar = float(SCHED.alpha(t) ** 2 / (SCHED.alpha(t) ** 2 + SCHED.sigma(t) ** 2))
    shift = np.asarray(principled.x0 - base.x0)
    np.testing.assert_allclose(damped.x0 - base.x0, alpha_bar * shift, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(doubled.x0 - base.x0, 2.0 * shift, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_call(pigdm(den, op, y, 0.1, scale=0.0), X, t).x0, base.x0, rtol=0, atol=1e-15)


def _posterior_run(prior, a, y, sigma_y, solver, covariance, n, steps, seed):
    """Sample from x_T ~ p_T(x_T | y) exactly; return the sample and N(m, C) diffused to the grid's end."""
    m, c = (np.asarray(v) for v in prior.posterior(a, y, sigma_y))
    ts = dj.timesteps.logsnr_uniform(SCHED, steps)
    alpha_T, sigma_T = float(SCHED.alpha(ts[0])), float(SCHED.sigma(ts[0]))
    cov_T = alpha_T**2 * c + sigma_T**2 * np.eye(len(m))
    x_T = jax.random.multivariate_normal(jax.random.key(seed), alpha_T * m, cov_T, (n,))
    guided = pigdm(prior.denoiser(SCHED), operators.matrix(a, (len(m),)), y, sigma_y, covariance=covariance)
    x, _ = dj.sample(solver, guided, ts, jax.random.key(seed + 1), x_T)
    alpha, sigma = float(SCHED.alpha(ts[-1])), float(SCHED.sigma(ts[-1]))
    return np.asarray(x), alpha * m, alpha**2 * c + sigma**2 * np.eye(len(m))


def _moment_errors(x, m, c):
    """(|mean error| / SE, |cov error| / SE) entrywise, SE of the mean sqrt(C_ii / n) and of the
    covariance sqrt((C_ii C_jj + C_ij^2) / n), the Gaussian formulas."""
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(c) / n)
    se_cov = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)
    return np.abs(x.mean(0) - m) / se_mean, np.abs(np.cov(x.T) - c) / se_cov


F_A = (dj.data.LinearGaussian(np.zeros(2), np.eye(2)), np.array([[1.0, 0.0]]), jnp.array([1.0]), 0.5)
F_B = (dj.data.LinearGaussian(np.zeros(2), np.array([[1.0, 0.8], [0.8, 1.0]])), np.array([[1.0, 0.0]]),
       jnp.array([1.0]), 0.0)  # fmt: skip


@pytest.mark.parametrize("fixture", [F_A, F_B], ids=["F-a", "F-b"])
def test_a_fine_grid_sampler_hits_the_exact_posterior(fixture):
    """DPM-Solver++(2M), 200 logSNR-uniform steps: its own bias is far below the 5 SE tolerance."""
    x, m, c = _posterior_run(*fixture, dj.solvers.dpmpp_2m(), "exact", 4096, 200, 0)
    mean_z, cov_z = _moment_errors(x, m, c)
    print(f"\nPiGDM exact, DPM-Solver++(2M) 200 steps: mean {x.mean(0).round(4)} vs {m.round(4)}, "
          f"cov {np.cov(x.T).round(4).tolist()} vs {c.round(4).tolist()}; max z mean {mean_z.max():.2f}, "
          f"cov {cov_z.max():.2f}")  # fmt: skip
    assert mean_z.max() < 5 and cov_z.max() < 5


def test_ddpm_with_pigdm_is_ddpm_with_the_posterior_denoiser():
    """On F-a (prior covariance I) the guided denoiser is the posterior's, so DDPM runs coincide
    sample by sample, whatever the number of steps: no Monte Carlo error at all."""
    prior, a, y, sigma_y = F_A
    m, c = prior.posterior(a, y, sigma_y)
    ts = dj.timesteps.logsnr_uniform(SCHED, 50)
    x_T = jax.random.normal(jax.random.key(3), (64, 2))
    guided = pigdm(prior.denoiser(SCHED), operators.matrix(a, (2,)), y, sigma_y)
    got, _ = dj.sample(dj.solvers.ddpm(), guided, ts, jax.random.key(4), x_T)
    want, _ = dj.sample(dj.solvers.ddpm(), dj.data.LinearGaussian(m, c).denoiser(SCHED), ts, jax.random.key(4), x_T)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver", [dj.solvers.ddim(), dj.solvers.heun()], ids=["ddim", "heun"])
def test_works_with_any_solver(solver):
    """Deterministic solvers of the guided probability-flow ODE on F-a (PiGDM is exact there)."""
    x, m, c = _posterior_run(*F_A, solver, "pigdm", 1024, 50, 4)
    mean_z, cov_z = _moment_errors(x, m, c)
    print(f"\n{type(solver).__name__} 50 steps on F-a: max z mean {mean_z.max():.2f}, cov {cov_z.max():.2f}")
    assert mean_z.max() < 5 and cov_z.max() < 5


def test_samples_do_not_couple():
    prior = dj.data.LinearGaussian(MU, COV)
    ts = dj.timesteps.logsnr_uniform(SCHED, 10)
    ys = jnp.asarray(np.random.default_rng(104).normal(size=(4, 2)))
    op = operators.matrix(A, (D,))
    x_T = jax.random.normal(jax.random.key(5), (4, D))
    run = lambda ys, x_T: dj.sample(dj.solvers.ddpm(), pigdm(prior.denoiser(SCHED), op, ys, 0.2), ts,
                                    jax.random.key(6), x_T)[0]  # fmt: skip
    first = run(ys, x_T)
    second = run(ys.at[1:].set(3.0 + ys[1:]), x_T.at[1:].set(-2.0 * x_T[1:]))
    np.testing.assert_array_equal(second[0], first[0])
    assert not np.allclose(second[1:], first[1:])


def test_bad_arguments():
    den = dj.data.LinearGaussian(MU, COV).denoiser(SCHED)
    op, y = operators.matrix(A, (D,)), jnp.zeros(2)
    with pytest.raises(ValueError, match="sigma_y"):
        pigdm(den, op, y, -0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        pigdm(den, op, y, float("inf"))
    with pytest.raises(ValueError, match="scale"):
        pigdm(den, op, y, 0.1, scale=float("nan"))
    with pytest.raises(ValueError, match="y must have shape"):
        pigdm(den, op, jnp.zeros(3), 0.1)
    with pytest.raises(ValueError, match="covariance"):
        pigdm(den, op, y, 0.1, covariance="tweedie")
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="data_variance"):
            pigdm(den, op, y, 0.1, data_variance=bad)
    with pytest.raises(ValueError, match="weight"):
        pigdm(den, op, y, 0.1, weight="awd")
    with pytest.raises(ValueError, match="linear"):
        pigdm(den, operators.nonlinear(jnp.sin, (D,), (D,)), jnp.zeros(D), 0.1)
    with pytest.raises(ValueError, match="SVD"):
        pigdm(den, operators.linear(lambda x: x[:2], (D,)), y, 0.1)
    with pytest.raises(ValueError, match="denoiser"):
        pigdm(lambda x, t: x, op, y, 0.1)
