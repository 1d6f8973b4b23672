"""Every registered solver: runs on each shape of schedule in float64 and float32, compiles to one
scan with no `cond` or `while`, and never retraces for new timestep values."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from helpers import mixture

# One schedule of each shape: VP, alpha = 1 (VE), alpha -> 0 (a shifted flow); discrete below.
SCHEDULES = {
    "vp_cosine": (dj.schedules.vp_cosine(), {}),
    "ve": (dj.schedules.ve(), {}),
    "shifted_flow": (dj.schedules.shifted(dj.schedules.rectified_flow(), 3.0), {"t_max": 0.99, "t_min": 0.01}),
}
SOLVERS = sorted(dj.solvers.REGISTRY)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(solver, sched, ts, x_T):
    return dj.sample(solver, mixture().denoiser(sched), ts, jax.random.key(1), x_T)


@pytest.mark.parametrize("name", SOLVERS)
def test_runs_on_every_schedule_in_both_precisions(name):
    solver = dj.solvers.REGISTRY[name]()
    for sched_name, (sched, bounds) in SCHEDULES.items():
        ts = dj.timesteps.uniform(sched, 12, **bounds)
        x_T = dj.prior_sample(jax.random.key(0), sched, ts, (8, 3), data_std=1.0)
        x, info = _run(solver, sched, ts, x_T)
        assert x.dtype == jnp.float64 and np.all(np.isfinite(x)), (name, sched_name)
        assert int(info.nfe) >= 12
    sched = dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, 12)
    x_T = jax.random.normal(jax.random.key(0), (8, 3))
    x32, _ = _run(solver, sched, ts.astype(jnp.float32), x_T.astype(jnp.float32))
    x64, _ = _run(solver, sched, ts, x_T)  # the same noise: solvers draw it in float32 and cast
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, x64, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", SOLVERS)
def test_compiles_to_straight_line_code_and_never_retraces(name):
    solver = dj.solvers.REGISTRY[name]()
    sched = dj.schedules.discrete()
    gmm = mixture()
    traces = []

    def apply_fn(params, x, t, cond):
        traces.append(1)  # runs once per trace of each network call, never at run time
        return gmm.x0_mean(x, sched, t)

    den = dj.Denoiser(apply_fn, None, schedule=sched, prediction="x0", time_fn=lambda t: t)
    x_T = jnp.ones((4, 3))
    grids = [dj.timesteps.uniform(sched, 10), dj.timesteps.karras(sched, 10), dj.timesteps.diffusers(sched, 10)]
    dj.sample(solver, den, grids[0], jax.random.key(0), x_T)
    first = len(traces)
    for ts in grids[1:]:
        dj.sample(solver, den, ts, jax.random.key(1), x_T)
    assert len(traces) == first
    jaxpr = str(jax.make_jaxpr(lambda ts: dj.sample(solver, den, ts, jax.random.key(0), x_T)[0])(grids[0]))
    assert " cond[" not in jaxpr and " while[" not in jaxpr


def test_every_solver_runs_with_x64_off():
    # The default JAX configuration (float32, 32-bit integers), where Python constants that do not
    # fit in int32 fail: run every registered solver once in a fresh process.
    code = (
        "import jax, jax.numpy as jnp, diffjax as dj, sys; sys.path.insert(0, 'tests'); from helpers import mixture\n"
        "sched = dj.schedules.vp_linear(); ts = dj.timesteps.logsnr_uniform(sched, 12)\n"
        "for name, make in dj.solvers.REGISTRY.items():\n"
        "    x, _ = dj.sample(make(), mixture().denoiser(sched), ts, jax.random.key(0), jnp.ones((4, 3)))\n"
        "    assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x))), name\n"
    )
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
