"""The compiled `sample` driver with DDIM and Euler: identities, order, reference loops, retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.solvers.base import noise_like
from helpers import mixture

GRIDS = {
    "vp_linear": lambda: (dj.schedules.vp_linear(), lambda s: dj.timesteps.uniform(s, 25)),
    "vp_cosine_logsnr": lambda: (dj.schedules.vp_cosine(), lambda s: dj.timesteps.logsnr_uniform(s, 25)),
    "edm_karras": lambda: (dj.schedules.edm(), lambda s: dj.timesteps.karras(s, 25)),
    "flow": lambda: (dj.schedules.rectified_flow(), lambda s: dj.timesteps.uniform(s, 25, t_max=0.999)),
    "discrete_diffusers": lambda: (dj.schedules.discrete(), lambda s: dj.timesteps.diffusers(s, 25)),
    "shifted_flow": lambda: (
        dj.schedules.shifted(dj.schedules.rectified_flow(), 3.0),
        lambda s: dj.timesteps.uniform(s, 25, t_max=0.999),
    ),
}


@pytest.mark.parametrize("name", GRIDS)
def test_ddim_eta0_and_euler_are_the_same_method(name):
    sched, grid = GRIDS[name]()
    ts = grid(sched)
    gmm = mixture()
    x_T = gmm.sample(jax.random.key(0), 128, sched, ts[0])
    den = gmm.denoiser(sched)
    x_ddim, info = dj.sample(dj.solvers.ddim(), den, ts, jax.random.key(1), x_T)
    x_euler, _ = dj.sample(dj.solvers.euler(), den, ts, jax.random.key(1), x_T)
    np.testing.assert_allclose(x_ddim, x_euler, rtol=0, atol=1e-10)
    assert int(info.nfe) == 25


def test_ddim_converges_to_the_pf_ode_reference_at_order_one():
    # d = 8 mixture with distinct scales; error at t_min = 1e-3 against diffrax at tolerance 1e-10.
    gmm, sched = mixture(dim=8), dj.schedules.vp_linear()
    x_T = gmm.sample(jax.random.key(2), 64, sched, 1.0)
    ref = gmm.pf_ode(x_T, sched, 1.0, 1e-3)
    errors = []
    for n in (32, 64, 128, 256, 512):
        x, _ = dj.sample(dj.solvers.ddim(), gmm.denoiser(sched), dj.timesteps.uniform(sched, n), jax.random.key(0), x_T)
        errors.append(float(jnp.sqrt(jnp.mean((x - ref) ** 2))))
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(slopes[-3:] - 1.0) < 0.15), (errors, slopes)


def _reference_ddim(gmm, sched, ts, key, x, eta):
    """DDIM as in the paper, one Python iteration per step, with diffjax's key contract."""
    keys = jax.random.split(key, len(ts) - 1)
    for i in range(len(ts) - 1):
        abar, abar_next = float(sched.alpha(ts[i])) ** 2, float(sched.alpha(ts[i + 1])) ** 2
        x0 = gmm.x0_mean(x, sched, ts[i])
        eps = (x - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
        c = eta * np.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
        z = noise_like(keys[i], x)
        x = np.sqrt(abar_next) * x0 + np.sqrt(1 - abar_next - c**2) * eps + c * z
    return x


def _reference_euler(gmm, sched, ts, x):
    """k-diffusion's sample_euler on x/alpha against sigma/alpha."""
    sigmas = [float(sched.ve_sigma(t)) for t in ts]
    x_bar = x / sched.alpha(ts[0])
    for i in range(len(ts) - 1):
        denoised = gmm.x0_mean(x_bar * sched.alpha(ts[i]), sched, ts[i])
        d = (x_bar - denoised) / sigmas[i]
        x_bar = x_bar + d * (sigmas[i + 1] - sigmas[i])
    return x_bar * sched.alpha(ts[-1])


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_compiled_ddim_equals_the_python_reference_loop(eta):
    gmm, sched = mixture(), dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, 20, spacing="trailing")
    x_T = jax.random.normal(jax.random.key(3), (32, 3))
    got, _ = dj.sample(dj.solvers.ddim(eta), gmm.denoiser(sched), ts, jax.random.key(4), x_T)
    want = _reference_ddim(gmm, sched, ts, jax.random.key(4), x_T, eta)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_compiled_euler_equals_the_python_reference_loop():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.karras(sched, 15)
    x_T = jax.random.normal(jax.random.key(5), (32, 3))
    got, _ = dj.sample(dj.solvers.euler(), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    np.testing.assert_allclose(got, _reference_euler(gmm, sched, ts, x_T), rtol=1e-11, atol=1e-11)


def test_new_timestep_values_do_not_retrace():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    traced = chex.assert_max_traces(lambda p, x, t, c: gmm.x0_mean(x, sched, t), n=1)
    den = dj.Denoiser(traced, None, schedule=sched, prediction="x0", time_fn=lambda t: t)
    solver = dj.solvers.ddim(eta=0.3)
    x_T = jnp.ones((4, 3))
    for ts in (dj.timesteps.uniform(sched, 12), dj.timesteps.quadratic(sched, 12), dj.timesteps.karras(sched, 12)):
        dj.sample(solver, den, ts, jax.random.key(0), x_T)
    with pytest.raises(AssertionError):  # a new number of steps is a new shape, and chex notices
        dj.sample(solver, den, dj.timesteps.uniform(sched, 13), jax.random.key(0), x_T)


def test_keys_give_reproducible_bits_and_trajectories_are_returned():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts, den, solver = dj.timesteps.uniform(sched, 10), gmm.denoiser(sched), dj.solvers.ddim(eta=1.0)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (16, 3))
    a, info = dj.sample(solver, den, ts, jax.random.key(7), x_T, return_trajectory=True)
    b, _ = dj.sample(solver, den, ts, jax.random.key(7), x_T)
    c, _ = dj.sample(solver, den, ts, jax.random.key(8), x_T)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert info.trajectory.shape == (11, 16, 3) and info.x0_trajectory.shape == (10, 16, 3)
    assert np.array_equal(info.trajectory[0], x_T) and np.array_equal(info.trajectory[-1], a)


def test_float32_sampling_stays_float32_and_agrees_with_float64():
    gmm, sched = mixture(), dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, 20, spacing="trailing")
    x_T = jax.random.normal(jax.random.key(9), (64, 3))
    x64, _ = dj.sample(dj.solvers.ddim(), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    x32, _ = dj.sample(
        dj.solvers.ddim(), gmm.denoiser(sched), ts.astype(jnp.float32), jax.random.key(0), x_T.astype(jnp.float32)
    )
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, x64, rtol=1e-4, atol=1e-4)


def test_cond_reaches_the_network():
    sched = dj.schedules.vp_linear()
    den = dj.Denoiser(lambda p, x, t, c: jnp.broadcast_to(c[:, None], x.shape), None, schedule=sched, prediction="x0")
    ts = dj.timesteps.uniform(sched, 5, t_min=0.0)
    cond = jnp.array([1.0, -2.0])
    x, _ = dj.sample(dj.solvers.ddim(), den, ts, jax.random.key(0), jnp.zeros((2, 4)), cond=cond)
    np.testing.assert_allclose(x, jnp.broadcast_to(cond[:, None], (2, 4)), atol=1e-12)  # sigma = 0 at the end


def test_prior_sample_scales_noise_by_sigma_at_the_first_time():
    key = jax.random.key(0)
    z = jax.random.normal(key, (5, 2))
    edm = dj.schedules.edm()
    np.testing.assert_allclose(dj.prior_sample(key, edm, dj.timesteps.karras(edm, 10), (5, 2)), 80.0 * z, rtol=1e-14)
    flow = dj.schedules.rectified_flow()
    np.testing.assert_allclose(dj.prior_sample(key, flow, dj.timesteps.uniform(flow, 10), (5, 2)), z, rtol=1e-14)
    ts = dj.timesteps.karras(edm, 10)
    np.testing.assert_allclose(
        dj.prior_sample(key, edm, ts, (5, 2), data_std=0.5), np.sqrt(80.0**2 + 0.25) * z, rtol=1e-14
    )
