"""Every registered solver: runs on each shape of schedule in float64 and float32, compiles to one
scan with no `cond` or `while`, and never retraces for new timestep values or for an equal solver.
Solvers are values: equal options give equal, hash-equal solvers; each declares its order, whether it
is stochastic and how to gather its state; each public constructor documents its arguments."""

import inspect
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.sampling import _sample
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
    compiled = _sample._cache_size()
    dj.sample(dj.solvers.REGISTRY[name](), den, grids[0], jax.random.key(2), x_T)  # a second, equal construction
    assert len(traces) == first and _sample._cache_size() == compiled
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


# One differing argument per registered solver. euler and plms take no arguments: exempt, since
# every construction of them is the same value.
DIFFERENT = {
    "ddim": dict(eta=0.5),
    "ddpm": dict(variance="beta"),
    "euler_ancestral": dict(eta=0.5),
    "heun": dict(s_churn=1.0),
    "dpm_solver": dict(order=2),
    "dpm_multistep": dict(order=3),
    "dpmpp_2s": dict(solver_type="taylor"),
    "dpmpp_2m": dict(lower_order_final=False),
    "dpmpp_3m": dict(variant="faithful"),
    "dpmpp_2m_sde": dict(eta=0.5),
    "euler_maruyama": dict(denoise_final=False),
    "predictor_corrector": dict(snr=0.1),
    "pndm": dict(variant="s"),
    "unipc": dict(variant="bh1"),
    "deis": dict(order=2),
}
NO_ARGUMENTS = {"euler", "plms"}


def test_every_registered_solver_has_a_differing_argument_or_none():
    assert set(DIFFERENT) | NO_ARGUMENTS == set(SOLVERS)
    for name in NO_ARGUMENTS:
        assert not inspect.signature(dj.solvers.REGISTRY[name]).parameters, name


@pytest.mark.parametrize("name", SOLVERS)
def test_solvers_are_values(name):
    make = dj.solvers.REGISTRY[name]
    a, b = make(), make()
    assert a == b and hash(a) == hash(b), name
    assert isinstance(a, dj.solvers.Solver)
    if name in DIFFERENT:
        other = make(**DIFFERENT[name])
        assert other != a and make(**DIFFERENT[name]) == other, name
    assert not jax.tree.leaves(a), name  # options are static: nothing of a registered solver is traced


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_declares_its_order_and_whether_it_is_stochastic(name):
    solver = dj.solvers.REGISTRY[name]()
    assert isinstance(solver.order, (int, float)) and not isinstance(solver.order, bool) and solver.order > 0, name
    assert isinstance(solver.stochastic, bool), name


def test_wrappers_of_equal_arguments_are_equal():
    S = dj.solvers
    for make in (
        lambda: S.time_shift(S.pndm("f"), window=5, cutoff=550),
        lambda: S.time_shift(S.ddim(), window=30, cutoff=300, variance="eps", resume="grid"),
        lambda: S.denoise_to_zero(S.ddpm()),
        lambda: S.predictor_corrector(),
        lambda: S.predictor_corrector(S.ddim(eta=1.0), snr=0.05, n_steps=2, norm="sample"),
    ):
        a, b = make(), make()
        assert a == b and hash(a) == hash(b), a
    assert S.time_shift(S.ddim(), window=5, cutoff=550) != S.time_shift(S.ddim(), window=5, cutoff=500)
    assert S.time_shift(S.ddim(), window=5, cutoff=550) != S.time_shift(S.euler(), window=5, cutoff=550)
    assert S.denoise_to_zero(S.ddpm()) != S.denoise_to_zero(S.ddpm("beta"))
    assert S.predictor_corrector() != S.predictor_corrector(n_steps=2)
    assert S.predictor_corrector().order == S.euler_maruyama().order
    assert S.time_shift(S.pndm("s"), window=5, cutoff=550).order == S.pndm("s").order


GATHERED = {
    **{name: dj.solvers.REGISTRY[name] for name in SOLVERS},
    "time_shift_f_pndm": lambda: dj.solvers.time_shift(dj.solvers.pndm("f"), window=5, cutoff=0),
    "time_shift_ddim_eps": lambda: dj.solvers.time_shift(dj.solvers.ddim(), window=5, cutoff=0, variance="eps"),
}


@pytest.mark.parametrize("name", sorted(GATHERED))
def test_gather_takes_every_particle_state_at_its_ancestor(name):
    # After a few steps (histories filled) the gathered state is the state of the ancestors: rerunning the
    # remaining steps from it gives the ancestors' samples, and every leaf keeps its shape.
    solver, sched = GATHERED[name](), dj.schedules.discrete()
    den = mixture().denoiser(sched)
    ts = dj.timesteps.diffusers(sched, 8)
    x_T = jax.random.normal(jax.random.key(0), (4, 3))
    ancestors = jnp.array([3, 3, 0, 1])

    @jax.jit
    def run(x_T):
        state = solver.init(x_T, ts)
        for i in range(4):  # the grid's first steps, head ones included
            state, _ = solver.step_at(i, 8)(state, jax.random.key(i), ts[i], ts[i + 1], den)
        return state

    # gathered outside `run`: inside it, XLA may recompute the state into the gather's fusion, rounded
    # differently in the last bit
    state = run(x_T)
    gathered = solver.gather(state, ancestors)
    assert jax.tree.structure(gathered) == jax.tree.structure(state)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(gathered), jax.tree.leaves(state)))
    np.testing.assert_array_equal(gathered.x, state.x[ancestors])

    @jax.jit
    def finish(state):  # the remaining steps with the same keys for every particle's row
        for i in range(4, 8):
            state, _ = solver.step_at(i, 8)(state, jax.random.key(i), ts[i], ts[i + 1], den)
        return state.x

    if not solver.stochastic:  # noise is drawn per row, so only deterministic solvers retrace the ancestors
        np.testing.assert_allclose(finish(gathered), finish(state)[ancestors], rtol=1e-12, atol=1e-12)


def _constructors():
    S = dj.solvers
    extra = {"time_shift": S.time_shift, "denoise_to_zero": S.denoise_to_zero, "custom": S.custom}
    if hasattr(S, "dpm_solver_fast"):
        extra["dpm_solver_fast"] = S.dpm_solver_fast
    return {**S.REGISTRY, **extra}


@pytest.mark.parametrize("name", sorted(_constructors()))
def test_public_constructors_are_documented(name):
    make = _constructors()[name]
    doc = inspect.getdoc(make) or ""
    section = "Args:" if inspect.signature(make).parameters else "Returns:"
    assert section in doc, f"{name}'s docstring has no {section} section"
    assert "Returns:" in doc, f"{name}'s docstring has no Returns: section"
