"""Every schedule: exact inverse, closed-form derivatives equal to autodiff, and the papers' values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from helpers import all_schedules

SCHEDULES = all_schedules()
IDS = [name for name, _, _ in SCHEDULES]


def _autodiff(fn, t):
    return jax.vmap(jax.grad(fn))(t)


@pytest.mark.parametrize("name,sched,ts", SCHEDULES, ids=IDS)
def test_logsnr_is_decreasing_and_inverted_exactly(name, sched, ts):
    lam = sched.logsnr(ts)
    assert np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(sched.t_from_logsnr(lam), ts, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lam, 2 * (jnp.log(sched.alpha(ts)) - jnp.log(sched.sigma(ts))), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sched.ve_sigma(ts), sched.sigma(ts) / sched.alpha(ts), rtol=1e-12)
    np.testing.assert_allclose(sched.t_from_ve_sigma(sched.ve_sigma(ts)), ts, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,sched,ts", SCHEDULES, ids=IDS)
def test_closed_form_derivatives_equal_autodiff(name, sched, ts):
    np.testing.assert_allclose(sched.dalpha(ts), _autodiff(sched.alpha, ts), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sched.dsigma(ts), _autodiff(sched.sigma, ts), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sched.dlogsnr(ts), _autodiff(sched.logsnr, ts), rtol=1e-9)
    # SDE coefficients: f = d log alpha/dt, g^2 = d sigma^2/dt - 2 f sigma^2.
    np.testing.assert_allclose(sched.drift(ts), _autodiff(lambda t: jnp.log(sched.alpha(t)), ts), rtol=1e-9, atol=1e-12)
    g2 = _autodiff(lambda t: sched.sigma(t) ** 2, ts) - 2 * sched.drift(ts) * sched.sigma(ts) ** 2
    np.testing.assert_allclose(sched.diffusion2(ts), g2, rtol=1e-9, atol=1e-12)


def test_vp_linear_and_cosine_match_their_formulas():
    t = 0.37
    vp = dj.schedules.vp_linear(0.1, 20.0)
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(
        [vp.alpha(t), vp.sigma(t)], [np.exp(log_alpha), np.sqrt(1 - np.exp(2 * log_alpha))], rtol=1e-14
    )
    cos = dj.schedules.vp_cosine(0.008)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cos.alpha(t) ** 2, f(t) / f(0.0), rtol=1e-14)
    np.testing.assert_allclose(cos.alpha(t) ** 2 + cos.sigma(t) ** 2, 1.0, rtol=1e-15)
    ve = dj.schedules.ve(0.01, 50.0)
    np.testing.assert_allclose(ve.sigma(t), 0.01 * (50.0 / 0.01) ** t, rtol=1e-14)
    assert float(ve.alpha(t)) == 1.0


def test_discrete_schedule_reproduces_diffusers_alphas_cumprod_at_the_knots():
    sched = dj.schedules.discrete(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=1e-13)
    i = np.arange(1000)
    ts = (i + 1) / 1000
    np.testing.assert_allclose(sched.alpha(ts) ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(sched.sigma(ts) ** 2, 1 - abar, rtol=1e-12)
    np.testing.assert_allclose(sched.model_time(ts), i, atol=1e-9)
    assert float(sched.sigma(0.0)) == 0.0 and float(sched.alpha(0.0)) == 1.0
    # Values printed by diffusers 0.42.1 (float32): alphas_cumprod of Stable Diffusion's scaled_linear
    # and of squaredcos_cap_v2.
    sd = dj.schedules.discrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    np.testing.assert_allclose(
        sd.alphas_cumprod[np.array([0, 499, 999])],
        [0.9991499781608582, 0.27766942977905273, 0.00466009508818388],
        rtol=2e-6,
    )
    cos = dj.schedules.discrete(beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(
        cos.alphas_cumprod[np.array([0, 499, 998])],
        [0.9999586939811707, 0.4938434660434723, 2.428766265438753e-06],
        rtol=2e-5,
    )


def test_discrete_interpolates_sigma_like_diffusers_euler():
    # EulerDiscreteScheduler(timestep_spacing="linspace").set_timesteps(7) in diffusers 0.42.1:
    # fractional timesteps and the sigmas it interpolates for them.
    sched = dj.schedules.discrete()
    timesteps = np.array([999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0])
    sigmas = [
        157.4072723388672,
        33.66373062133789,
        9.488921165466309,
        3.4335522651672363,
        1.4623570442199707,
        0.5856084823608398,
        0.010001329705119133,
    ]
    got = sched.ve_sigma((timesteps + 1) / 1000)
    np.testing.assert_allclose(got[:-1], sigmas[:-1], rtol=1e-6)
    # At timestep 0, 1 - alphas_cumprod = 1e-4 loses 4 digits in diffusers' float32 cumprod (8e-5
    # relative); diffjax computes in float64 and gets the exact sqrt(beta_0 / (1 - beta_0)).
    np.testing.assert_allclose(got[-1], np.sqrt(1e-4 / (1 - 1e-4)), rtol=1e-12)
    np.testing.assert_allclose(got[-1], sigmas[-1], rtol=1e-4)


def test_shift_is_sd3s_flow_shift_and_moves_logsnr_by_two_log_shift():
    base = dj.schedules.rectified_flow()
    sched = dj.schedules.shifted(base, 3.0)
    t = jnp.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(sched.sigma(t), 3.0 * t / (1 + 2.0 * t), rtol=1e-13)
    np.testing.assert_allclose(sched.logsnr(t), base.logsnr(t) - 2 * np.log(3.0), rtol=1e-13)
    np.testing.assert_allclose(sched.model_time(t), 3.0 * t / (1 + 2.0 * t), rtol=1e-13)  # network sees t'


def test_interpolant_matches_the_equivalent_builtin():
    sched = dj.schedules.interpolant(lambda t: 1.0 - t, lambda t: t)
    flow = dj.schedules.rectified_flow()
    lam = jnp.linspace(-6.0, 6.0, 25)
    np.testing.assert_allclose(sched.t_from_logsnr(lam), flow.t_from_logsnr(lam), rtol=1e-12)
