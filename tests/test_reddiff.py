"""RED-diff on the linear-Gaussian oracle G0, where the denoiser's expected error is known in closed form.

With x_t = alpha mu + sigma eps and the exact eps-hat = sigma S_t^{-1} (x_t - alpha mu0),
E_eps[eps-hat - eps] = sigma alpha S_t^{-1} (mu - mu0), so at a frozen t gradient descent on the expected
gradient converges to the ridge-like solution (P = (lambda/D) w sigma alpha S_t^{-1})
    mu* = [(v/d_y) A^T A + P]^{-1} [(v/d_y) A^T y + P mu0].
The compiled solver is checked against a plain loop of the same Adam steps, and its gradient against
NumPy; no gradient may flow through the network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax.arrays import noise_like
from diffjax.guidance import operators
from diffjax.guidance.reddiff import WEIGHTINGS, red_diff, red_diff_gradient, red_diff_loss, snr_weight

SCHED = dj.schedules.vp_linear()
RNG = np.random.default_rng(2)
D = 3
MU0 = RNG.normal(size=D)
_M = RNG.normal(size=(D, D))
COV = _M @ _M.T / D + 0.4 * np.eye(D)
PRIOR = dj.data.LinearGaussian(MU0, COV)
DEN = PRIOR.denoiser(SCHED)
A = RNG.normal(size=(2, D))  # full row rank
OP = operators.matrix(A, (D,))
Y = jnp.asarray(RNG.normal(size=2))
TS = dj.timesteps.uniform(SCHED, 50)


def test_snr_weights_are_the_official_functions_of_one_over_sqrt_snr():
    t = jnp.array([0.1, 0.4, 0.9])
    inv = np.asarray(SCHED.sigma(t) / SCHED.alpha(t))
    want = {"linear": inv, "sqrt": np.sqrt(inv), "square": inv**2, "log": np.log(1 + inv),
            "trunc_linear": np.minimum(inv, 1), "power2over3": inv ** (2 / 3), "const": np.ones(3)}  # fmt: skip
    assert set(want) == set(WEIGHTINGS)
    for name, w in want.items():
        np.testing.assert_allclose(snr_weight(name, SCHED, t), w, rtol=1e-12)


@pytest.mark.parametrize("kind", ["matrix", "inpainting"])
def test_gradient_is_the_hand_derived_expression(kind):
    mask = np.array([1.0, 0.0, 1.0])
    op, a, y = (OP, A, np.asarray(Y)) if kind == "matrix" else (operators.inpainting(mask), np.diag(mask), mask * 0.7)
    d_y = 2  # two measured values in both cases
    mu, eps, eps_hat = np.random.default_rng(100).normal(size=(3, 4, D))
    w = np.array([0.3, 0.5, 1.2, 2.0])
    got = red_diff_gradient(jnp.asarray(mu), jnp.asarray(eps), jnp.asarray(eps_hat), operator=op, y=jnp.asarray(y),
                            weight=jnp.asarray(w), lmbda=0.25, obs_weight=1.5)  # fmt: skip
    want = 0.25 * w[:, None] * (eps_hat - eps) / D + 1.5 * (mu @ a.T - y) @ a / d_y
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_the_loss_gradient_never_enters_the_network():
    mu, eps = jnp.asarray(np.random.default_rng(101).normal(size=(2, 4, D)))
    t = 0.3
    kwargs = dict(operator=OP, y=Y, weight=snr_weight("linear", SCHED, t), lmbda=0.25, obs_weight=1.0)
    x_t = SCHED.alpha(t) * mu + SCHED.sigma(t) * eps
    want = red_diff_gradient(mu, eps, DEN(x_t, t).eps, **kwargs)
    np.testing.assert_allclose(jax.grad(red_diff_loss)(mu, eps, t, denoise=DEN, **kwargs), want, rtol=1e-12)
    params_grad = jax.grad(lambda den: red_diff_loss(mu, eps, t, denoise=den, **kwargs))(DEN).params
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(params_grad))

    @jax.custom_jvp
    def network(x):
        return PRIOR.x0_mean(x, SCHED, t)

    @network.defjvp
    def _no_jvp(primals, tangents):
        raise AssertionError("RED-diff differentiated through the network")

    blocked = dj.Denoiser(lambda p, x, t, c: network(x), None, schedule=SCHED, prediction="x0", time_fn=lambda t: t)
    np.testing.assert_allclose(jax.grad(red_diff_loss)(mu, eps, t, denoise=blocked, **kwargs), want, rtol=1e-12)


def _reference(solver, den, ts, key, x_T):
    """RED-diff as a plain loop: mu = A^+ y, then one Adam step per grid time ts[0], ..., ts[-2]."""
    mu = jnp.broadcast_to(solver.operator.pinv(solver.y), x_T.shape)
    adam = optax.adam(solver.lr, b1=0.9, b2=0.99)
    state = adam.init(mu)
    for i, k in enumerate(jax.random.split(key, ts.shape[0] - 1)):
        t = ts[i]
        eps = noise_like(k, mu)
        eps_hat = den(SCHED.alpha(t) * mu + SCHED.sigma(t) * eps, t).eps
        a = np.asarray(solver.operator.a)
        grad = solver.lmbda * SCHED.sigma(t) / SCHED.alpha(t) * (eps_hat - eps) / D + (mu @ a.T - solver.y) @ a / 2
        updates, state = adam.update(grad, state)
        mu = optax.apply_updates(mu, updates)
    return mu


def test_the_compiled_solver_is_the_plain_loop():
    ts = dj.timesteps.uniform(SCHED, 10)
    x_T = jnp.zeros((4, D))
    solver = red_diff(OP, Y)
    got, info = dj.sample(solver, DEN, ts, jax.random.key(0), x_T)
    # the noise is drawn in float32 (`noise_like`), and XLA:CPU's elemental emitters (the suite's fast
    # compiling, tests/helpers.py) may round the draw fused into the sampler an ulp (6e-8) apart from the
    # eager one; through Adam that leaves at most 5.6e-9 (measured), any error in the math far more
    np.testing.assert_allclose(got, _reference(solver, DEN, ts, jax.random.key(0), x_T), rtol=1e-7, atol=1e-8)
    assert int(info.nfe) == 10  # one network call per step, none through a backward pass


def test_lambda_zero_keeps_the_pseudo_inverse():
    """With lambda = 0 the data gradient A^T (A A^+ y - y) vanishes for a full-row-rank A, so mu stays
    A^+ y. Exactly so when A A^+ y = y holds in floating point (a mask, a scaled selection matrix);
    for a generic matrix its 1e-16 residue is no longer 0, and Adam, which normalises every
    coordinate's step to about lr once the gradient exceeds its epsilon (1e-8), walks away by ~1e-3
    (measured 5e-3 here): a property of Adam at a minimum, not of the gradient."""
    mask = np.array([1.0, 0.0, 1.0])
    y = jnp.asarray(mask * np.random.default_rng(102).normal(size=D))
    x_T = jnp.zeros((4, D))
    scaled_selection = operators.matrix([[2.0, 0.0, 0.0], [0.0, 0.0, 0.5]], (D,))
    cases = [(operators.inpainting(mask), y, y), (scaled_selection, Y, jnp.array([Y[0] / 2, 0.0, 2 * Y[1]]))]
    for op, y, pinv in cases:
        mu, _ = dj.sample(red_diff(op, y, lmbda=0.0), DEN, TS, jax.random.key(1), x_T)
        np.testing.assert_array_equal(mu, jnp.broadcast_to(pinv, (4, D)))


def test_denoising_moves_towards_the_posterior_mean():
    """A = I: RED-diff lands closer to the posterior mean than y. With lr = 0.02: at the official 0.1,
    Adam's per-coordinate steps of about lr make mu jitter around y at the last (nearly prior-free)
    times on this 3-d problem (measured: mean distance 0.83 against 0.81 for y)."""
    sigma_y = 0.8
    x0 = PRIOR.sample(jax.random.key(2), 64)
    y = x0 + sigma_y * jax.random.normal(jax.random.key(3), x0.shape)
    gain = np.linalg.solve(COV + sigma_y**2 * np.eye(D), COV).T  # m_b = mu0 + gain (y_b - mu0)
    m = MU0 + (np.asarray(y) - MU0) @ gain.T
    np.testing.assert_allclose(m[0], PRIOR.posterior(np.eye(D), y[0], sigma_y)[0], rtol=1e-12)
    mu, _ = dj.sample(red_diff(operators.identity((D,)), y, lr=0.02), DEN, TS, jax.random.key(4), jnp.zeros_like(y))
    before = np.linalg.norm(np.asarray(y) - m, axis=-1)
    after = np.linalg.norm(np.asarray(mu) - m, axis=-1)
    print(f"\nRED-diff denoising (sigma_y {sigma_y}, lr 0.02): mean ||mu - m|| {after.mean():.3f}, "
          f"||y - m|| {before.mean():.3f}, closer for {np.mean(after < before):.0%}")  # fmt: skip
    assert np.mean(after) < 0.85 * np.mean(before) and np.mean(after < before) > 0.8


@pytest.mark.parametrize("t", [0.3, 0.7])
def test_frozen_t_fixed_point_of_the_expected_gradient(t):
    lmbda, v, d_y = 2.0, 1.0, 2
    alpha, sigma = float(SCHED.alpha(t)), float(SCHED.sigma(t))
    w = float(snr_weight("linear", SCHED, t))
    s_inv = np.linalg.inv(alpha**2 * COV + sigma**2 * np.eye(D))
    prior_h = lmbda / D * w * sigma * alpha * s_inv
    hessian = v / d_y * A.T @ A + prior_h
    want = np.linalg.solve(hessian, v / d_y * A.T @ np.asarray(Y) + prior_h @ MU0)
    step = 1.0 / np.linalg.eigvalsh(hessian).max()

    @jax.jit
    def descend(mu):
        def body(_, mu):
            expected = DEN(alpha * mu, t).eps  # E[eps-hat - eps]: eps-hat is affine in eps, so eps = 0
            return mu - step * red_diff_gradient(mu, jnp.zeros_like(mu), expected, operator=OP, y=Y, weight=w,
                                                 lmbda=lmbda, obs_weight=v)  # fmt: skip

        return jax.lax.fori_loop(0, 4000, body, mu)

    mu = descend(jnp.asarray(np.random.default_rng(103).normal(size=(2, D))))
    np.testing.assert_allclose(mu, np.broadcast_to(want, (2, D)), rtol=0, atol=1e-8)


def test_samples_do_not_couple():
    ys = jnp.asarray(np.random.default_rng(104).normal(size=(4, 2)))
    x_T = jnp.zeros((4, D))
    first, _ = dj.sample(red_diff(OP, ys), DEN, TS, jax.random.key(5), x_T)
    second, _ = dj.sample(red_diff(OP, ys.at[1:].set(10.0 * ys[1:])), DEN, TS, jax.random.key(5), x_T)
    np.testing.assert_array_equal(second[0], first[0])
    assert not np.allclose(second[1:], first[1:])
    state = red_diff(OP, ys).init(x_T, TS)
    picked = red_diff(OP, ys).gather(state, jnp.array([2, 2, 0, 1]))
    np.testing.assert_array_equal(picked.x, state.x[jnp.array([2, 2, 0, 1])])


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        red_diff(OP, Y, lr=0.0)
    with pytest.raises(ValueError, match="lmbda"):
        red_diff(OP, Y, lmbda=-1.0)
    with pytest.raises(ValueError, match="obs_weight"):
        red_diff(OP, Y, obs_weight=float("nan"))
    with pytest.raises(ValueError, match="weighting"):
        red_diff(OP, Y, weighting="edm")
    with pytest.raises(ValueError, match="b2"):
        red_diff(OP, Y, b2=1.0)
    with pytest.raises(ValueError, match="y must have shape"):
        red_diff(OP, jnp.zeros(D))
    with pytest.raises(ValueError, match="linear"):
        red_diff(operators.nonlinear(jnp.sin, (D,), (D,)), jnp.zeros(D))
    with pytest.raises(ValueError, match="x_T"):
        dj.sample(red_diff(OP, Y), DEN, TS, jax.random.key(0), jnp.zeros((4, D + 1)))
