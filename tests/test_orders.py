"""Convergence orders of the one-step ODE solvers on the exact Gaussian PF-ODE (last three
pairwise slopes log2(e_n / e_2n) within 0.15 of the solver's declared `order`)."""

import numpy as np
import pytest

import diffjax as dj
from helpers import convergence

S = dj.solvers


def karras(s, n):
    return dj.timesteps.karras(s, n, sigma_min=0.002, sigma_max=80.0, append_zero=False)


# (name, solver, schedule, declared order): the table pins the declaration, the slopes measure it.
ORDERS = [
    ("ddim_vp", lambda: S.ddim(), dj.schedules.vp_linear(), 1),
    ("euler_edm", lambda: S.euler(), dj.schedules.edm(), 1),
    ("heun_edm", lambda: S.heun(), dj.schedules.edm(), 2),
    ("heun_vp_cosine", lambda: S.heun(), dj.schedules.vp_cosine(t_max=0.99), 2),
]


@pytest.mark.parametrize("name,make,sched,order", ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order(name, make, sched, order):
    solver = make()
    assert solver.order == order and not solver.stochastic
    errors, slopes = convergence(solver, sched, karras, ns=(32, 64, 128, 256, 512))
    assert np.all(np.abs(slopes[-3:] - solver.order) < 0.15), (errors, slopes)
