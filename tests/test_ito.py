"""The Itô density estimator (diffjax.compose.ito) against exact log-densities (T-SD (a)).

Models: p1 = N(mu1, 0.5^2 I) and p2 = N(mu2, 1.5^2 I) in 2-D as one-component `GaussianMixture`s on
vp_linear, whose diffused log-densities log p_m,t are exact. The running estimates ell_m start at the
exact log p_m,T(x_T), and along the sampled path the error of ell_1 - ell_2 against the exact
log p1_t(x_t) - log p2_t(x_t) is measured as an RMSE over all grid times and B = 128 paths.

- Reverse-SDE paths (Euler-Maruyama) of p1 alone and of the OR superposition: the estimator is a
  left-point Itô sum, so its error is of strong order 1/2. Measured (B = 128, h = 1/n on [1e-3, 1]):
  RMSE 0.061 / 0.044 nat (p1, n = 500 / 1000) and 0.092 / 0.059 (OR), i.e. rates 0.46 and 0.64.
  Asserted: RMSE < 0.1 at n = 1000 and a rate log2(e_500 / e_1000) in [0.25, 1.25] (order 1/2 with
  room for the ~5% Monte Carlo error of each RMSE at B = 128; order 1 would also pass, order 0 not).
- Deterministic paths (DDIM(eta=0), Euler) with `path="ode"` add -1/2 g^2 h div s by Hutchinson's
  estimator. Here the scores are isotropic, so Rademacher probes give the divergence exactly and the
  error is the first-order discretisation error: RMSE 0.0035 (DDIM, p1) and 0.033 / 0.066 (Euler, OR,
  n = 1000 / 500), rate 1.0. Asserted: RMSE < 0.1 and a rate in [0.75, 1.25].
- The one-step formula against an identity that holds exactly for any (x, s, div s): along the
  PF-ODE step of q itself, x' = x - h (f x - 1/2 g^2 s), Delta log q = h (D f - 1/2 g^2 div s) (the
  instantaneous change of variables); float64 rounding only, 1e-12.
- A stack: its mixed views are consistent (alpha x0 + sigma eps = x, 1e-12), the vmapped call over
  models of one structure equals the loop over models, and bad inputs raise ValueError.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import compose
from diffjax.compose import ito

SCHED = dj.schedules.vp_linear()
P1 = dj.data.GaussianMixture([1.0], [[2.0, 1.0]], [[0.5, 0.5]])
P2 = dj.data.GaussianMixture([1.0], [[-2.0, -1.0]], [[1.5, 1.5]])
D1, D2 = P1.denoiser(SCHED), P2.denoiser(SCHED)
BATCH = 128


def _tracking_rmse(solver, models, n):
    ts = dj.timesteps.uniform(SCHED, n)
    x_T = dj.prior_sample(jax.random.key(0), SCHED, ts, (BATCH, 2))
    log_q0 = jnp.stack([P1.log_prob(x_T, SCHED, ts[0]), P2.log_prob(x_T, SCHED, ts[0])], axis=-1)
    _, info = compose.sample_with_density(solver, models, ts, jax.random.key(1), x_T, log_q0=log_q0,
                                          return_trajectory=True)  # fmt: skip
    exact = jax.vmap(lambda x, t: P1.log_prob(x, SCHED, t) - P2.log_prob(x, SCHED, t))(info.trajectory, ts)
    estimate = info.log_q_trajectory[..., 0] - info.log_q_trajectory[..., 1]
    return float(jnp.sqrt(jnp.mean((estimate - exact) ** 2)))


CASES = {
    "sde_p1": (compose.ito_density(dj.solvers.euler_maruyama()), compose.stack(D1, D2, weights=[1.0, 0.0]), 0.25),
    "sde_or": (compose.superdiff(dj.solvers.euler_maruyama(), "or"), compose.stack(D1, D2), 0.25),
    "ode_ddim_p1": (compose.ito_density(dj.solvers.ddim()), compose.stack(D1, D2, weights=[1.0, 0.0]), 0.75),
    "ode_euler_or": (compose.superdiff(dj.solvers.euler(), "or"), compose.stack(D1, D2), 0.75),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_estimate_tracks_the_exact_log_density_ratio_and_converges(case):
    solver, models, min_rate = CASES[case]
    coarse, fine = _tracking_rmse(solver, models, 500), _tracking_rmse(solver, models, 1000)
    assert fine < 0.1, (coarse, fine)
    rate = np.log2(coarse / fine)
    assert min_rate <= rate <= 1.25, (coarse, fine, rate)


def test_a_pf_ode_step_changes_log_q_by_the_divergence_of_the_velocity():
    rng = np.random.default_rng(0)
    x, s = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 3)))
    div, h = jnp.asarray(rng.normal(size=5)), 1e-2
    for t in (0.1, 0.5, 0.9):
        f, g2 = SCHED.drift(t), SCHED.diffusion2(t)
        x_next = x - h * (f * x - 0.5 * g2 * s)
        got = ito.increment(x, x_next, s, drift=f, diffusion2=g2, h=h, divergence=div)
        np.testing.assert_allclose(got, h * (3 * f - 0.5 * g2 * div), rtol=1e-12, atol=1e-13)
        # on an SDE path (no divergence) the <x' - x, s> term is the only one that sees x'
        sde = ito.increment(x, x_next + 1.0, s, drift=f, diffusion2=g2, h=h)
        np.testing.assert_allclose(sde - got - 0.5 * g2 * h * div, jnp.sum(s, -1), rtol=1e-12, atol=1e-12)


def test_a_stack_mixes_every_view_consistently_and_vmaps_like_a_loop():
    models = compose.stack(D1, D2, weights=[0.3, 0.7])
    x, t = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2))), jnp.array([0.1, 0.4, 0.6, 0.9])
    pred = models(x, t)
    alpha, sigma = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
    np.testing.assert_allclose(alpha * pred.x0 + sigma * pred.eps, x, atol=1e-12)
    np.testing.assert_allclose(pred.score, 0.3 * P1.score(x, SCHED, t) + 0.7 * P2.score(x, SCHED, t), atol=1e-12)
    other = dj.data.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.5, 0.5]]).denoiser(SCHED)
    looped = compose.stack(D1, other).predictions(x, t)  # structures differ: a loop
    vmapped = compose.stack(D1, D2).predictions(x, t)
    for got in (looped, vmapped):
        np.testing.assert_allclose(got.x0[0], D1(x, t).x0, atol=1e-12)
    np.testing.assert_allclose(vmapped.x0[1], D2(x, t).x0, atol=1e-12)
    np.testing.assert_allclose(looped.x0[1], other(x, t).x0, atol=1e-12)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match=r"denoisers\[1\]\.schedule"):
        compose.stack(D1, P2.denoiser(dj.schedules.vp_cosine()))
    with pytest.raises(ValueError, match="at least 2"):
        compose.stack(D1)
    with pytest.raises(ValueError, match="weights"):
        compose.stack(D1, D2, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match=r"denoisers\[0\]"):
        compose.stack(lambda x, t: x, D2)
    with pytest.raises(ValueError, match="path='sde'"):
        compose.ito_density(dj.solvers.euler(), path="sde")
    with pytest.raises(ValueError, match="path='ode'"):
        compose.ito_density(dj.solvers.ddpm(), path="ode")
    with pytest.raises(ValueError, match="eta"):
        compose.ito_density(dj.solvers.ddim(eta=0.5))
    with pytest.raises(ValueError, match="path"):
        compose.ito_density(dj.solvers.ddpm(), path="both")
    with pytest.raises(ValueError, match="num_probes"):
        compose.ito_density(dj.solvers.euler(), num_probes=0)
    with pytest.raises(ValueError, match="num_models"):
        compose.ito_density(dj.solvers.euler(), num_models=1)
    ts = dj.timesteps.uniform(SCHED, 4)
    x_T = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="num_models"):
        compose.sample_with_density(compose.ito_density(dj.solvers.ddpm(), num_models=3), compose.stack(D1, D2), ts,
                                    jax.random.key(0), x_T)  # fmt: skip
    with pytest.raises(ValueError, match="log_q0"):
        compose.sample_with_density(compose.ito_density(dj.solvers.ddpm()), compose.stack(D1, D2), ts,
                                    jax.random.key(0), x_T, log_q0=jnp.zeros((3, 5)))  # fmt: skip
    with pytest.raises(ValueError, match="compose.stack"):
        dj.sample(compose.ito_density(dj.solvers.ddpm()), D1, ts, jax.random.key(0), x_T)
