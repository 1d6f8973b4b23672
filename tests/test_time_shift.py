"""The Time-Shift wrapper: identity when it cannot shift, exact choices, the official loop, the exact oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.solvers.base import State
from diffjax.solvers.pndm import pndm
from diffjax.solvers.time_shift import TimeShiftState, time_shift
from helpers import gaussian, gaussian_flow, mixture

SCHED = dj.schedules.discrete()  # DDPM linear betas, N = 1000
STEPS = 100
DDIM, FPNDM = dj.solvers.ddim(), pndm("f")
# Module-level solvers: tests that share one also share its compilation (same oracle, batch and grid).
TS_DDIM_GRID = time_shift(DDIM, window=5, cutoff=550, resume="grid")  # TS-DPM's pnm_solver.py
TS_FPNDM_GRID = time_shift(FPNDM, window=5, cutoff=550, resume="grid")
TS_FPNDM = time_shift(FPNDM, window=5, cutoff=550)
TS_DDIM_EPS = time_shift(DDIM, window=30, cutoff=300, variance="eps")  # TS-DPM's DPM-Solver settings


def _setup():
    """A d = 8 Gaussian (exact PF-ODE), 64 samples of p_T, and TS-DPM's grid of DDPM steps 1, 11, ..., 991
    ending at alphas_cump[0] (diffjax t = 1/N)."""
    g = gaussian(dim=8)
    ts = dj.timesteps.diffusers(SCHED, STEPS, spacing="leading", steps_offset=1, final="sigma_min")
    return g, ts, g.sample(jax.random.key(0), 64, SCHED, ts[0])


@pytest.mark.parametrize(
    "inner,kwargs",
    [(DDIM, dict(window=0, cutoff=0, variance="eps")), (FPNDM, dict(window=5, cutoff=999, resume="grid"))],
    ids=["ddim_window_0", "f_pndm_cutoff_999"],
)
def test_without_room_to_shift_it_is_the_wrapped_solver(inner, kwargs):
    g, ts, x_T = _setup()
    want, info = dj.sample(inner, g.denoiser(SCHED), ts, jax.random.key(1), x_T)
    got, got_info = dj.sample(time_shift(inner, **kwargs), g.denoiser(SCHED), ts, jax.random.key(1), x_T)
    # Equal up to XLA's rounding: the wrapped step sees (B, 1) times instead of scalars.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert int(got_info.nfe) == int(info.nfe)


def _state_with_variances(variances, dim=64, seed=0):
    z = np.random.default_rng(seed).normal(size=(len(variances), dim))
    z = (z - z.mean(1, keepdims=True)) / z.std(1, ddof=1, keepdims=True)
    return jnp.asarray(z * np.sqrt(np.asarray(variances))[:, None])


def test_the_chosen_step_is_the_one_whose_variance_matches():
    n, i, j = 1000, 700, 600  # a step from DDPM step 700 to 600: candidates 598..602 with window 5
    one_minus_abar = 1.0 - np.asarray(SCHED.alphas_cumprod)
    between = 0.3 * one_minus_abar[599] + 0.7 * one_minus_abar[600]
    variances = [one_minus_abar[598], one_minus_abar[601], one_minus_abar[602], between, 10.0, 0.0]
    chosen = np.array([598, 601, 602, 600, 602, 598])  # the last two: beyond every candidate
    x = _state_with_variances(variances)
    den = dj.Denoiser(lambda p, x, t, c: 0.5 * x, None, schedule=SCHED, prediction="x0")  # x0 = x / 2
    t, t_next = (i + 1) / n, (j + 1) / n
    solver = time_shift(DDIM, window=5, cutoff=550)
    start = TimeShiftState(State(x), jnp.full((6, 1), t), jnp.int32(1))
    step = jax.jit(solver.step)
    new, info = step(start, jax.random.key(0), t, t_next, den)
    np.testing.assert_allclose(new.t[:, 0], (chosen + 1) / n, rtol=1e-14)
    target = (chosen[:, None] + 1) / n  # and the step went there: DDIM from t to each sample's target
    eps = (x - SCHED.alpha(t) * 0.5 * x) / SCHED.sigma(t)
    np.testing.assert_allclose(new.x, SCHED.alpha(target) * 0.5 * x + SCHED.sigma(target) * eps, rtol=1e-13)
    assert int(info.nfe) == 1
    # No shift for the first step, nor for a target at or below the cutoff.
    first, _ = step(start._replace(steps=jnp.int32(0)), jax.random.key(0), t, t_next, den)
    low, _ = step(start, jax.random.key(0), t, (550 + 1) / n, den)
    np.testing.assert_array_equal(first.t[:, 0], t_next)
    np.testing.assert_array_equal(low.t[:, 0], (550 + 1) / n)


def test_variance_eps_measures_the_noise_prediction_at_no_extra_cost():
    n, t = 1000, 701 / 1000
    one_minus_abar = 1.0 - np.asarray(SCHED.alphas_cumprod)
    eps = _state_with_variances([one_minus_abar[599], one_minus_abar[602], 3.0, 0.0], seed=1)
    den = dj.Denoiser(lambda p, x, t, c: p, eps, schedule=SCHED, prediction="eps")  # eps is the params
    x = _state_with_variances([one_minus_abar[598]] * 4, seed=2)  # the state's own variance would pick 598
    solver = time_shift(DDIM, window=5, cutoff=0, variance="eps")
    start = TimeShiftState(State(x), jnp.full((4, 1), t), jnp.int32(1))
    step = jax.jit(solver.step)
    new, info = step(start, jax.random.key(0), t, 601 / n, den)
    np.testing.assert_allclose(new.t[:, 0], (np.array([599, 602, 602, 598]) + 1) / n, rtol=1e-14)
    assert int(info.nfe) == 1  # DDIM's own eps(x, t) call is the one the variance was taken of
    # Towards DDPM step 1 the window -1..3 is cut at 0: variance 0 picks step 0, not "step -1" (t = 0, sigma = 0).
    new, _ = step(start, jax.random.key(0), t, 2 / n, den)
    np.testing.assert_allclose(new.t[:, 0], (np.array([3, 3, 3, 0]) + 1) / n, rtol=1e-14)


def _official_ts_loop(method, den, seq, x, window, cutoff, resume, variance):
    """TS-DPM sampler/pnm_solver.py: sample() with apply_time_shift and euler_solver / f_pndm, one Python
    iteration per step. Steps are DDPM indices with the network fed index i and transfer reading abar(i);
    shifted Runge-Kutta midpoints are fractional, where abar is read from the interpolated schedule (the
    official code truncates them to a knot). The DPM-Solver variant's choices: resume="shifted" starts each
    step at the previous target (t_prev_list), variance="eps" measures the noise prediction there."""
    n, b = SCHED.num_train_timesteps, x.shape[0]
    abar = jax.jit(lambda i: SCHED.alpha((i + 1) / n) ** 2)
    eps_fn = jax.jit(lambda x, i: den(x, (i + 1) / n).eps)
    one_minus_abar = 1.0 - np.asarray(SCHED.alphas_cumprod)

    def transfer(x, t, t_next, e):
        at, an = np.asarray(abar(t))[:, None], np.asarray(abar(t_next))[:, None]
        return x + (an - at) * (
            x / (np.sqrt(at) * (np.sqrt(at) + np.sqrt(an)))
            - e / (np.sqrt(at) * (np.sqrt((1 - an) * at) + np.sqrt((1 - at) * an)))
        )

    def model(x, t):
        return np.asarray(eps_fn(x, t))

    ets, t_prev = [], None
    for step, (i, j) in enumerate(zip(reversed(seq), reversed([0] + list(seq[:-1])))):
        t = np.full(b, float(i)) if resume == "grid" or t_prev is None else t_prev
        t_next = np.full(b, float(j))
        if step > 0 and j > cutoff:
            var = np.var((x if variance == "state" else model(x, t)).reshape(b, -1), axis=1, ddof=1)
            low, high = max(j - window // 2, 0), min(j + window // 2 + 1, n)
            t_next = low + np.argmin((var[:, None] - one_minus_abar[low:high]) ** 2, axis=1).astype(float)
        if method == "ddim":
            e = model(x, t)
        elif len(ets) > 2:
            ets.append(model(x, t))
            e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        else:
            mid = (t + t_next) / 2
            e_1 = model(x, t)
            ets.append(e_1)
            e_2 = model(transfer(x, t, mid, e_1), mid)
            e_3 = model(transfer(x, t, mid, e_2), mid)
            e = (e_1 + 2 * e_2 + 2 * e_3 + model(transfer(x, t, t_next, e_3), t_next)) / 6
        x, t_prev = transfer(x, t, t_next, e), t_next
    return x


@pytest.mark.parametrize(
    "method,solver,window,cutoff,resume,variance",
    [
        ("ddim", TS_DDIM_GRID, 5, 550, "grid", "state"),
        ("f_pndm", TS_FPNDM_GRID, 5, 550, "grid", "state"),
        ("f_pndm", TS_FPNDM, 5, 550, "shifted", "state"),
        ("ddim", TS_DDIM_EPS, 30, 300, "shifted", "eps"),
    ],
    ids=["ddim_grid", "f_pndm_grid", "f_pndm_shifted", "ddim_eps_shifted"],
)
def test_compiled_time_shift_equals_the_official_loop(method, solver, window, cutoff, resume, variance):
    g, ts, x_T = _setup()
    den, seq = g.denoiser(SCHED), [1 + 10 * k for k in range(STEPS)]
    got, info = dj.sample(solver, den, ts, jax.random.key(1), x_T)  # one jit: the shift lives in the scan
    want = _official_ts_loop(method, den, seq, np.asarray(x_T), window, cutoff, resume, variance)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    plain, plain_info = dj.sample(DDIM if method == "ddim" else FPNDM, den, ts, jax.random.key(1), x_T)
    assert np.max(np.abs(got - plain)) > 1e-7  # it did shift (far more than the 1e-11 above)
    assert int(info.nfe) == int(plain_info.nfe) == STEPS + (0 if method == "ddim" else 9)


def test_an_exact_denoiser_has_no_exposure_bias_to_correct():
    # With the exact Gaussian denoiser the sampler's states are as close to p_t as its discretisation allows.
    # resume="shifted" only moves the grid (the state really is at the shifted time): the error against the
    # exact flow stays F-PNDM's. resume="grid" (TS-DPM's PNDM code) then calls a state at t_k "t'"; here v
    # exceeds every candidate's 1 - abar, so every shifted step stops window//2 DDPM steps short and the
    # relabelling is a bias that grows with the number of steps (measured at 100 steps: 1.8e-4, 1.8e-4, 3.5e-2;
    # the last is 1.7e-2 at 50 steps and 7.1e-2 at 200).
    g, ts, x_T = _setup()
    exact = gaussian_flow(g, x_T, SCHED, ts[0], ts[-1])
    errors = []
    for solver in (FPNDM, TS_FPNDM, TS_FPNDM_GRID):
        x, _ = dj.sample(solver, g.denoiser(SCHED), ts, jax.random.key(1), x_T)
        errors.append(float(jnp.sqrt(jnp.mean((x - exact) ** 2))))
    plain, shifted, relabelled = errors
    assert abs(shifted / plain - 1) < 0.25 and relabelled > 50 * plain, errors


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="solver"):
        time_shift("ddim", window=5, cutoff=500)
    with pytest.raises(ValueError, match="window"):
        time_shift(DDIM, window=-1, cutoff=500)
    with pytest.raises(ValueError, match="cutoff"):
        time_shift(DDIM, window=5, cutoff=0.5)
    with pytest.raises(ValueError, match="variance"):
        time_shift(DDIM, window=5, cutoff=500, variance="x")
    with pytest.raises(ValueError, match="resume"):
        time_shift(DDIM, window=5, cutoff=500, resume="next")
    sched = dj.schedules.vp_linear()
    with pytest.raises(ValueError, match="discrete"):
        dj.sample(
            TS_DDIM_GRID, mixture().denoiser(sched), dj.timesteps.uniform(sched, 5), jax.random.key(0), jnp.ones((2, 3))
        )
    with pytest.raises(ValueError, match="2 entries per sample"):
        dj.sample(TS_DDIM_GRID, mixture(dim=1).denoiser(SCHED), _setup()[1], jax.random.key(0), jnp.ones((2, 1)))
