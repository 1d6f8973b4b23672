"""DPS and steered diffusion on the linear-Gaussian oracle G0, where x0-hat and its Jacobian are exact.

The gradient is checked against the closed form -J_t^T A^T r / ||r|| (float64 closed forms on both
sides: rounding only); zeta = 0 must be the wrapped sampler bit for bit (x - 0 * g = x); samples must
not couple (the official DPS code's one norm over the batch does, issue #12). DPS is not an exact
posterior sampler: its error on fixture F-a is printed for BENCHMARKS.md, not asserted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import sampling
from diffjax.guidance import operators
from diffjax.guidance.dps import dps, loss_gradient, measurement_loss, steered

SCHED = dj.schedules.vp_linear()
RNG = np.random.default_rng(0)
D = 3
MU = RNG.normal(size=D)
_M = RNG.normal(size=(D, D))
COV = _M @ _M.T / D + 0.5 * np.eye(D)
PRIOR = dj.data.LinearGaussian(MU, COV)
DEN = PRIOR.denoiser(SCHED)
A = RNG.normal(size=(2, D))
OP = operators.matrix(A, (D,))
Y = jnp.asarray(RNG.normal(size=2))
TS = dj.timesteps.logsnr_uniform(SCHED, 20)
X_T = PRIOR.sample(jax.random.key(4), 8, SCHED, TS[0])  # shared, so tests share compiled samplers
GRADIENT = jax.jit(loss_gradient, static_argnames="clamp")


@jax.jit
def _one_step(solver, x, key, t, s):
    return solver.step(solver.init(x, TS), key, t, s, DEN)


def _closed_form_gradient(x, t, y, squared=False):
    """-J_t^T A^T r / ||r|| per sample (times 2 ||r|| for the squared norm), r = y - A x0-hat."""
    jac = np.asarray(PRIOR.jacobian(x, SCHED, t))
    r = np.asarray(y) - np.asarray(PRIOR.x0_mean(x, SCHED, t)) @ A.T
    scale = 2.0 * np.ones(len(r)) if squared else 1.0 / np.linalg.norm(r, axis=-1)
    return -np.einsum("bji,kj,bk->bi", jac, A, r) * scale[:, None]


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_gradient_is_the_closed_form(t, squared):
    x = jax.random.normal(jax.random.key(0), (5, D))
    y = jnp.asarray(np.random.default_rng(100).normal(size=(5, 2)))  # one measurement per sample
    grad, pred, losses = GRADIENT(DEN, measurement_loss(OP, y, squared=squared), x, t)
    np.testing.assert_allclose(grad, _closed_form_gradient(x, t, y, squared), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(pred.x0, PRIOR.x0_mean(x, SCHED, t), rtol=1e-13, atol=1e-14)
    r = np.linalg.norm(np.asarray(y) - np.asarray(pred.x0) @ A.T, axis=-1)
    np.testing.assert_allclose(losses, r**2 if squared else r, rtol=1e-13)


def test_clamp_zeroes_the_gradient_outside_the_box():
    x = 3.0 * jax.random.normal(jax.random.key(1), (64, D))
    grad, pred, _ = GRADIENT(DEN, measurement_loss(operators.identity((D,)), jnp.zeros(D)), x, 0.05, clamp=True)
    outside = np.all(np.abs(np.asarray(pred.x0)) > 1, axis=-1)  # every entry clipped: d loss / d x0 = 0
    assert outside.sum() > 0 and np.all(np.asarray(grad)[outside] == 0)
    assert np.all(np.any(np.asarray(grad)[~outside] != 0, axis=-1))


@pytest.mark.parametrize("step_size", ["constant", "normalised"])
def test_one_step_is_the_wrapped_step_minus_zeta_times_the_gradient(step_size):
    x = jax.random.normal(jax.random.key(2), (4, D))
    t, s, zeta = TS[5], TS[6], 0.7
    inner = dj.solvers.ddim()
    want, _ = _one_step(inner, x, jax.random.key(3), t, s)
    got, info = _one_step(dps(inner, OP, Y, zeta, step_size=step_size), x, jax.random.key(3), t, s)
    g = _closed_form_gradient(x, t, jnp.broadcast_to(Y, (4, 2)))
    r = np.linalg.norm(np.asarray(Y) - np.asarray(PRIOR.x0_mean(x, SCHED, t)) @ A.T, axis=-1)
    step = zeta / r[:, None] if step_size == "normalised" else zeta
    np.testing.assert_allclose(got.x, np.asarray(want.x) - step * g, rtol=1e-12, atol=1e-13)
    assert int(info.nfe) == 1  # the gradient's forward pass is the step's network call


SOLVERS = {
    "ddpm": dj.solvers.ddpm(),
    "ddim": dj.solvers.ddim(),
    "euler": dj.solvers.euler(),
    "dpmpp_2m": dj.solvers.dpmpp_2m(),
    "heun": dj.solvers.heun(),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_zeta_zero_is_the_wrapped_sampler_bit_for_bit_with_its_nfe(name):
    inner = SOLVERS[name]
    x_T = X_T
    want, info = dj.sample(inner, DEN, TS, jax.random.key(5), x_T)
    got, got_info = dj.sample(dps(inner, OP, Y, 0.0), DEN, TS, jax.random.key(5), x_T)
    np.testing.assert_array_equal(got, want)
    # Heun's first call is at alpha (x / alpha), not at x itself: it pays the gradient's forward pass
    extra = TS.shape[0] - 1 if name == "heun" else 0
    assert int(got_info.nfe) == int(info.nfe) + extra
    guided, _ = dj.sample(dps(inner, OP, Y, 0.5), DEN, TS, jax.random.key(5), x_T)
    residual = lambda x: float(np.mean(np.linalg.norm(np.asarray(Y) - np.asarray(x) @ A.T, axis=-1)))
    assert np.all(np.isfinite(guided)) and residual(guided) < residual(want)


def test_samples_do_not_couple():
    ys = jnp.asarray(np.random.default_rng(101).normal(size=(8, 2)))
    solver = dps(dj.solvers.ddim(), OP, ys[0], 1.0)
    alone, _ = dj.sample(solver, DEN, TS, jax.random.key(7), X_T[:1])
    copies, _ = dj.sample(solver, DEN, TS, jax.random.key(7), jnp.repeat(X_T[:1], 8, axis=0))
    # eight copies of one sample take the step of one sample (the official norm: zeta / sqrt(8))
    np.testing.assert_allclose(copies, jnp.repeat(alone, 8, axis=0), rtol=0, atol=1e-13)
    # a stochastic sampler: sample 0 is the same bits whatever its batch-mates start from and measure
    first, _ = dj.sample(dps(dj.solvers.ddpm(), OP, ys, 1.0), DEN, TS, jax.random.key(8), X_T)
    mates = X_T.at[1:].set(5.0 * X_T[1:])
    second, _ = dj.sample(dps(dj.solvers.ddpm(), OP, ys.at[1:].set(-ys[1:]), 1.0), DEN, TS, jax.random.key(8), mates)
    np.testing.assert_array_equal(second[0], first[0])
    assert not np.allclose(second[1:], first[1:])
    # negative control: a loss with one norm over the batch (the official code's) couples them
    coupled = lambda x0, x_t, t: jnp.full(x0.shape[0], jnp.linalg.norm(ys - x0 @ A.T) / x0.shape[0])
    runs = [dj.sample(steered(dj.solvers.ddpm(), coupled, 1.0), DEN, TS, jax.random.key(8), x)[0] for x in (X_T, mates)]
    assert not np.allclose(runs[1][0], runs[0][0])


def test_new_zeta_and_measurement_reuse_the_compiled_sampler():
    x_T = X_T
    out = dj.sample(dps(dj.solvers.ddpm(), OP, Y, 0.3), DEN, TS, jax.random.key(0), x_T)[0]
    before = sampling._sample._cache_size()
    other = dj.sample(dps(dj.solvers.ddpm(), OP, -Y, 0.9), DEN, TS, jax.random.key(0), x_T)[0]
    assert sampling._sample._cache_size() == before
    assert not np.allclose(out, other)
    assert dps(dj.solvers.ddpm(), OP, Y, 0.3) == dps(dj.solvers.ddpm(), OP, Y, 0.3)


def test_steered_is_dps_with_zeta_alpha_s_and_repeats_cost_nfe():
    x = jax.random.normal(jax.random.key(2), (4, D))
    t, s, rho = TS[3], TS[4], 0.6
    loss = measurement_loss(OP, Y)
    got, _ = _one_step(steered(dj.solvers.ddim(), loss, rho), x, jax.random.key(11), t, s)
    want, _ = _one_step(dps(dj.solvers.ddim(), OP, Y, rho * float(SCHED.alpha(s))), x, jax.random.key(11), t, s)
    np.testing.assert_allclose(got.x, want.x, rtol=1e-13, atol=1e-14)
    x_T = X_T
    plain, info = dj.sample(dj.solvers.ddim(), DEN, TS, jax.random.key(13), x_T)
    same, same_info = dj.sample(steered(dj.solvers.ddim(), loss, 0.0), DEN, TS, jax.random.key(13), x_T)
    np.testing.assert_array_equal(same, plain)
    looped, loop_info = dj.sample(steered(dj.solvers.ddim(), loss, rho, repeats=3), DEN, TS, jax.random.key(13), x_T)
    assert int(loop_info.nfe) == 3 * int(info.nfe) and np.all(np.isfinite(looped))
    assert steered(dj.solvers.ddim(), loss, rho, repeats=3).stochastic


def test_dps_pulls_the_measured_coordinate_and_leaves_the_other_alone():
    """DPS on F-a (prior N(0, I_2), y = x_1 + 0.5 n = 1; posterior mean (0.8, 0)) with DDPM, 100 steps.

    DPS is not exact (bench/inverse_oracle.py reports its error): it ignores sigma_y and pulls x_1 onto
    y = 1 (measured means 0.99-1.0), so x_1's mean must sit within 0.25 of the posterior's 0.8 and far
    from the prior's 0. The unmeasured x_2 is independent of y: its mean stays 0 within 5 standard errors
    (1024 samples: SE 0.031)."""
    prior = dj.data.LinearGaussian(np.zeros(2), np.eye(2))
    ts = dj.timesteps.logsnr_uniform(SCHED, 100)
    x_T = prior.sample(jax.random.key(14), 1024, SCHED, ts[0])
    for zeta in (0.3, 1.0):
        solver = dps(dj.solvers.ddpm(), operators.matrix(np.array([[1.0, 0.0]]), (2,)), jnp.array([1.0]), zeta)
        x = np.asarray(dj.sample(solver, prior.denoiser(SCHED), ts, jax.random.key(15), x_T)[0])
        assert abs(x[:, 0].mean() - 0.8) < 0.25, (zeta, x.mean(0))
        assert abs(x[:, 1].mean()) < 5 * np.sqrt(1 / 1024), (zeta, x.mean(0))


def test_bad_arguments():
    ddim = dj.solvers.ddim()
    with pytest.raises(ValueError, match="zeta"):
        dps(ddim, OP, Y, -1.0)
    with pytest.raises(ValueError, match="zeta"):
        dps(ddim, OP, Y, float("nan"))
    with pytest.raises(ValueError, match="y must have shape"):
        dps(ddim, OP, jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="operator"):
        dps(ddim, A, Y, 1.0)
    with pytest.raises(ValueError, match="solver"):
        dps(DEN, OP, Y, 1.0)
    with pytest.raises(ValueError, match="step_size"):
        dps(ddim, OP, Y, 1.0, step_size="paper")
    with pytest.raises(ValueError, match="y must be finite"):
        dps(ddim, OP, jnp.array([1.0, jnp.nan]), 1.0)
    with pytest.raises(ValueError, match="repeats"):
        steered(ddim, measurement_loss(OP, Y), 1.0, repeats=0)
    with pytest.raises(ValueError, match="loss"):
        steered(ddim, 3.0, 1.0)
    with pytest.raises(ValueError, match="rho"):
        steered(ddim, measurement_loss(OP, Y), -0.5)
    with pytest.raises(ValueError, match="rows"):
        x_T = jnp.zeros((3, D))
        dj.sample(dps(ddim, OP, jnp.zeros((2, 2)), 1.0), DEN, TS, jax.random.key(0), x_T)
