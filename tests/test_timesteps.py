"""Time grids: endpoints, spacing laws, EDM's rho grid, and diffusers' timesteps exactly."""

import numpy as np
import pytest

import diffjax as dj


def test_uniform_quadratic_and_logsnr_grids_follow_their_laws():
    sched = dj.schedules.vp_linear()
    u = dj.timesteps.uniform(sched, 10)
    assert u.shape == (11,) and float(u[0]) == 1.0 and float(u[-1]) == 1e-3
    np.testing.assert_allclose(np.diff(u), -(1.0 - 1e-3) / 10, rtol=1e-12)
    q = dj.timesteps.quadratic(sched, 10)
    np.testing.assert_allclose(np.diff(np.sqrt(q)), (np.sqrt(1e-3) - 1.0) / 10, rtol=1e-12)
    lam = sched.logsnr(dj.timesteps.logsnr_uniform(sched, 10))
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-9)


def test_karras_grid_is_edms_eq5():
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    i = np.arange(n)
    edm_sigmas = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    # On the EDM schedule t is sigma; the grid ends with sigma = 0 (EDM's t_N = 0).
    ts = dj.timesteps.karras(dj.schedules.edm(), n)
    np.testing.assert_allclose(ts, np.append(edm_sigmas, 0.0), rtol=1e-13)
    # On a VP schedule the same levels are its VE sigma = sigma/alpha.
    vp = dj.schedules.vp_linear()
    ts = dj.timesteps.karras(vp, n, sigma_min=smin, sigma_max=smax)
    np.testing.assert_allclose(vp.ve_sigma(ts[:-1]), edm_sigmas, rtol=1e-10)
    assert float(vp.sigma(ts[-1])) == 0.0
    ts = dj.timesteps.karras(dj.schedules.edm(), n, append_zero=False)
    assert ts.shape == (n + 1,) and np.isclose(ts[-1], smin)


# (family, spacing, steps_offset, n): the timesteps diffusers 0.42.1 prints for set_timesteps(n).
DIFFUSERS = [
    ("ddim", "leading", 1, 10, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
    ("ddim", "trailing", 0, 10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ("dpmsolver", "linspace", 0, 10, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]),
    ("dpmsolver", "leading", 1, 7, [876, 751, 626, 501, 376, 251, 126]),
    ("euler", "linspace", 0, 7, [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]),
]


@pytest.mark.parametrize("family,spacing,offset,n,expected", DIFFUSERS)
def test_diffusers_grids_hit_diffusers_timesteps(family, spacing, offset, n, expected):
    sched = dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, n, spacing=spacing, steps_offset=offset, family=family)
    np.testing.assert_allclose(sched.model_time(ts[:-1]), expected, atol=1e-9)
    assert float(ts[-1]) == 0.0  # final="zero": the last step lands on alpha = 1


def test_diffusers_final_sigma_min_lands_on_the_first_training_step():
    sched = dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, 10, spacing="trailing", final="sigma_min")
    np.testing.assert_allclose(sched.alpha(ts[-1]) ** 2, sched.alphas_cumprod[0], rtol=1e-14)
    # Where the last timestep is already 0, diffusers' extra step to alphas_cumprod[0] is the identity.
    ts = dj.timesteps.diffusers(sched, 10, spacing="leading", final="sigma_min")
    assert ts.shape == (10,) and np.isclose(float(ts[-1]), 1 / 1000)
