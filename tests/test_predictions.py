"""Conversions between eps, x0, v, score, flow velocity and EDM's F are exact inverses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import predictions as P
from helpers import mixture, prediction_views


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
def test_round_trip_through_every_view_is_exact(prediction):
    # Random (alpha, sigma) not on the VP circle, so formulas that only hold for VP would fail.
    k = jax.random.split(jax.random.key(0), 6)
    x0, eps = jax.random.normal(k[0], (64, 5)), jax.random.normal(k[1], (64, 5))
    alpha = jax.random.uniform(k[2], (64, 1), minval=0.1, maxval=2.0)
    sigma = jax.random.uniform(k[3], (64, 1), minval=0.05, maxval=3.0)
    dalpha = -jax.random.uniform(k[4], (64, 1), minval=0.1, maxval=2.0)
    dsigma = jax.random.uniform(k[5], (64, 1), minval=0.1, maxval=2.0)
    x, outputs = prediction_views(x0, eps, alpha=alpha, sigma=sigma, dalpha=dalpha, dsigma=dsigma, sigma_data=0.5)
    got_x0, got_eps = P.to_x0_eps(
        prediction, outputs[prediction], x=x, alpha=alpha, sigma=sigma, dalpha=dalpha, dsigma=dsigma, sigma_data=0.5
    )
    np.testing.assert_allclose(got_x0, x0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_eps, eps, rtol=0, atol=1e-12)


def test_special_cases_match_the_papers():
    x0, eps = jnp.array([[0.7, -1.2]]), jnp.array([[0.3, 2.0]])
    # Rectified flow (alpha = 1 - t, sigma = t): velocity = eps - x0.
    t = 0.3
    u = P.velocity_from_x0_eps(x0=x0, eps=eps, dalpha=-1.0, dsigma=1.0)
    np.testing.assert_allclose(u, eps - x0, atol=1e-15)
    x = (1 - t) * x0 + t * eps
    np.testing.assert_allclose(
        P.x0_from_velocity(x=x, velocity=u, alpha=1 - t, sigma=t, dalpha=-1.0, dsigma=1.0), x - t * u, atol=1e-15
    )
    # VP v-prediction (diffusion_distillation): x0 = alpha x - sigma v.
    alpha = 0.6
    sigma = 0.8
    x = alpha * x0 + sigma * eps
    v = P.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    np.testing.assert_allclose(P.x0_from_v(x=x, v=v, alpha=alpha, sigma=sigma), alpha * x - sigma * v, atol=1e-15)
    # EDM at sigma_data: c_skip = 1/2, c_out = sigma_data / sqrt(2), c_in = 1 / (sigma_data sqrt(2)).
    c = P.edm_coefficients(alpha=1.0, sigma=0.5, sigma_data=0.5)
    np.testing.assert_allclose(
        [c.c_skip, c.c_out, c.c_in, c.c_noise],
        [0.5, 0.5 / np.sqrt(2), 1 / (0.5 * np.sqrt(2)), 0.25 * np.log(0.5)],
        rtol=1e-15,
    )


def _oracle_network(gmm, sched, prediction, sigma_data=0.5):
    """A network of the given kind built from the exact denoiser, undoing the inputs diffjax feeds it."""

    def apply_fn(params, x_in, time, cond):
        if prediction == "edm":
            s = jnp.exp(4.0 * time)  # c_noise = log(s) / 4
            t = sched.t_from_ve_sigma(s)
            alpha = sched.alpha(t)[:, None]
            x = x_in * jnp.sqrt(s**2 + sigma_data**2)[:, None] * alpha
        else:
            t, x, alpha = time, x_in, sched.alpha(time)[:, None]
        sigma, dalpha, dsigma = (f(t)[:, None] for f in (sched.sigma, sched.dalpha, sched.dsigma))
        x0 = gmm.x0_mean(x, sched, t)
        eps = (x - alpha * x0) / sigma
        views = prediction_views(x0, eps, alpha=alpha, sigma=sigma, dalpha=dalpha, dsigma=dsigma, sigma_data=sigma_data)
        return views[1][prediction]

    time_fn = None if prediction == "edm" else (lambda t: t)
    return dj.Denoiser(apply_fn, None, schedule=sched, prediction=prediction, time_fn=time_fn)


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
def test_denoiser_gives_the_same_views_whatever_the_network_predicts(prediction):
    gmm = mixture()
    sched = dj.schedules.vp_cosine()
    x = gmm.sample(jax.random.key(1), 32, sched, 0.4)
    want = gmm.denoiser(sched)(x, 0.4)
    got = _oracle_network(gmm, sched, prediction)(x, 0.4)
    for name in dj.Prediction._fields:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10, err_msg=name)
    # The views agree with each other: score is -eps/sigma, and x = alpha x0 + sigma eps.
    np.testing.assert_allclose(want.score, gmm.score(x, sched, 0.4), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sched.alpha(0.4) * want.x0 + sched.sigma(0.4) * want.eps, x, atol=1e-12)


def test_denoiser_feeds_discrete_models_their_integer_timestep():
    sched = dj.schedules.discrete()
    seen = []
    den = dj.Denoiser(lambda p, x, time, c: (seen.append(time), jnp.zeros_like(x))[1], None, schedule=sched)
    ts = dj.timesteps.diffusers(sched, 10, spacing="trailing")
    for t in ts[:-1]:
        den(jnp.ones((2, 3)), t)
    np.testing.assert_allclose(jnp.stack(seen)[:, 0], [999, 899, 799, 699, 599, 499, 399, 299, 199, 99], atol=1e-9)
