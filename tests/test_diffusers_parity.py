"""Discrete-time models reproduce diffusers exactly: same betas, steps, spacing and starting noise
give the same final samples (relative difference <= 1e-5).

The golden samples in tests/golden/diffusers.npz come from diffusers 0.42.1 driving each scheduler
with the exact noise prediction of `helpers.mixture()` (tests/golden/make_diffusers.py). Euler and
Heun work on x/alpha ("VE" variables, diffusers' `scale_model_input`); diffjax states are x.
"""

import os

import jax
import numpy as np
import pytest

import diffjax as dj
from helpers import mixture

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "diffusers.npz"))
S, T = dj.solvers, dj.timesteps

# case: (diffjax solver, grid arguments, diffusers works in x/alpha)
CASES = {
    "ddim_leading": (S.ddim(), dict(spacing="leading", steps_offset=1, family="ddim", final="sigma_min"), False),
    "ddim_trailing": (S.ddim(), dict(spacing="trailing", family="ddim"), False),
    "dpmpp_2m": (S.dpmpp_2m(), dict(spacing="linspace", family="dpmsolver"), False),
    "dpmpp_2m_short": (S.dpmpp_2m(), dict(spacing="linspace", family="dpmsolver"), False),
    "dpmpp_3m": (S.dpmpp_3m("faithful"), dict(spacing="linspace", family="dpmsolver"), False),
    "dpmpp_3m_short": (S.dpmpp_3m("faithful"), dict(spacing="linspace", family="dpmsolver"), False),
    "plms": (S.plms(), dict(spacing="leading", steps_offset=1, family="ddim", final="sigma_min"), False),
    "unipc_bh2": (S.unipc(variant="bh2"), dict(spacing="linspace", family="dpmsolver"), False),
    "unipc_bh2_short": (S.unipc(variant="bh2"), dict(spacing="linspace", family="dpmsolver"), False),
    "deis": (S.deis(order=3), dict(spacing="linspace", family="dpmsolver", final="sigma_min"), False),
    "euler": (S.euler(), dict(spacing="linspace", family="euler"), True),
    "heun": (S.heun(), dict(spacing="linspace", family="euler"), True),
}
STEPS = {"ddim_trailing": 10, "dpmpp_2m_short": 8, "dpmpp_3m_short": 10, "unipc_bh2_short": 8}


@pytest.mark.parametrize("case", CASES)
def test_final_samples_match_diffusers(case):
    solver, grid, ve_space = CASES[case]
    sched = dj.schedules.discrete(alphas_cumprod=GOLDEN[f"{case}/alphas_cumprod"])
    ts = T.diffusers(sched, STEPS.get(case, 20), **grid)
    x_T = GOLDEN[f"{case}/start"] * (float(sched.alpha(ts[0])) if ve_space else 1.0)
    x, _ = dj.sample(solver, mixture().denoiser(sched), ts, jax.random.key(0), x_T)
    want = GOLDEN[f"{case}/final"]
    assert np.max(np.abs(x - want)) <= 1e-5 * np.max(np.abs(want)), np.max(np.abs(x - want))
