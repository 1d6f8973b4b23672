"""UniPC: the DDIM identity, convergence order on the exact Gaussian PF-ODE, the compiled sampler
against a Python loop written from the official code, NFE, dtypes and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.solvers.unipc import unipc
from helpers import convergence, mixture


def karras(sched, n):
    return dj.timesteps.karras(sched, n, sigma_min=0.002, sigma_max=80.0, append_zero=False)


def logsnr(sched, n):
    return dj.timesteps.logsnr_uniform(sched, n, t_min=1e-3)


def edm_mid(sched, n):  # sigma in [0.2, 5]: x0 moves over the first step
    return dj.timesteps.karras(sched, n, sigma_min=0.2, sigma_max=5.0, append_zero=False)


def logsnr_mid(sched, n):  # vp_linear: sigma/alpha in [0.17, 6.1]
    return dj.timesteps.logsnr_uniform(sched, n, t_min=0.05, t_max=0.6)


GRIDS = {
    "vp_linear": (dj.schedules.vp_linear(), lambda s: dj.timesteps.uniform(s, 25)),
    "edm_karras_to_zero": (dj.schedules.edm(), lambda s: dj.timesteps.karras(s, 25)),
    "flow": (dj.schedules.rectified_flow(), lambda s: dj.timesteps.uniform(s, 25, t_max=0.999)),
}


@pytest.mark.parametrize("name", GRIDS)
def test_order_one_without_corrector_is_ddim(name):
    sched, grid = GRIDS[name]
    ts = grid(sched)
    gmm = mixture()
    x_T = gmm.sample(jax.random.key(0), 64, sched, ts[0])
    x_ddim, _ = dj.sample(dj.solvers.ddim(), gmm.denoiser(sched), ts, jax.random.key(1), x_T)
    x_unipc, info = dj.sample(unipc(order=1, corrector=False), gmm.denoiser(sched), ts, jax.random.key(1), x_T)
    np.testing.assert_allclose(x_unipc, x_ddim, rtol=0, atol=1e-12)
    assert int(info.nfe) == 25


# UniC-p lifts UniP-p from order p to p + 1. lower_order_final=False here: the default (diffusers and
# the official code) ends with an uncorrected first-order step, whose O(h^2) error caps every order at 2
# once errors are small enough (UniPC-3's slopes fall to 2.0 by n ~ 1000 on the logSNR grid and by
# n ~ 2000 on the Karras grid, whose last steps sit at sigma ~ 0.002 where x0 barely moves).
# UniPC-3 reaches 4: its warm-up (UniPC-1 + corrector, local error O(h^3)) would cap it at 3, but the
# first steps sit at logSNR ~ -10 where x0 is nearly constant, so that term stays far below the
# asymptote within n <= 1024. Measured last slopes: 2.00, 3.01 (bh2), 3.02 (bh1), 2.00, 4.00 (Karras);
# 2.00, 3.00, 3.01, 2.00, 3.99 (logSNR). None: the solver's declared `order`; UniPC-3 declares the
# asymptotic 3 of its lower-order start, so its pre-asymptotic 4 stays explicit (with
# start="singlestep" it declares and measures 4: `test_singlestep_start_reaches_the_declared_order`).
CONVERGENCE = {
    "unipc1_corrected": (dict(order=1), None, (64, 128, 256, 512)),
    "unipc2_bh2_corrected": (dict(order=2, variant="bh2"), None, (64, 128, 256, 512)),
    "unipc2_bh1_corrected": (dict(order=2, variant="bh1"), None, (64, 128, 256, 512)),
    "unipc2_predictor_only": (dict(order=2, corrector=False), None, (64, 128, 256, 512)),
    "unipc3_corrected": (dict(order=3), 4.0, (128, 256, 512, 1024)),  # declares 3
}


@pytest.mark.parametrize("name", CONVERGENCE)
def test_convergence_order_on_the_exact_gaussian_flow(name):
    kwargs, order, ns = CONVERGENCE[name]
    solver = unipc(**kwargs, lower_order_final=False)  # one solver for both grids: one compile per n
    order = solver.order if order is None else order
    sched = dj.schedules.vp_linear()
    for grid in (karras, logsnr):
        errors, slopes = convergence(solver, sched, grid, ns=ns)
        assert np.all(np.abs(slopes - order) < 0.15), (grid.__name__, errors, slopes)


# start="singlestep": a singlestep DPM-Solver++-3 first step (local error O(h^4)), not corrected by
# UniC, then UniP-2 + UniC-2 and the full order: UniPC-2 is third order and UniPC-3 fourth order on
# every grid (lower_order_final=False: its uncorrected first-order last step would cap both at 2).
# Measured slopes for n = 32 ... 512: UniPC-2 3.04, 3.02, 3.01, 3.01 (Karras), 3.01, 3.01, 3.00, 3.00
# (EDM [0.2, 5]), 3.00, 3.00, 3.00, 3.00 (logSNR over t in [0.05, 0.6]); UniPC-3 4.00, 4.01, 4.01, 4.01
# (Karras), 3.96, 3.98, 3.99, 4.00 (EDM [0.2, 5]), 3.88, 3.95, 3.97, 3.99 (logSNR over t in [0.05, 0.6]).
# The mid-range logSNR grid is the one tests/test_dpm_solver.py and tests/test_deis.py need (on the
# full one DPM-Solver++(3M) and DEIS-3 stay near 4 up to n ~ 2000); UniPC measures its order on both
# (3.00 and 3.99 at n = 4096 on the full one).
SINGLESTEP = {
    "unipc2_corrected": dict(order=2),
    "unipc3_corrected": dict(order=3),
}


@pytest.mark.parametrize("name", SINGLESTEP)
def test_singlestep_start_reaches_the_declared_order(name):
    solver, vp = unipc(**SINGLESTEP[name], lower_order_final=False, start="singlestep"), dj.schedules.vp_linear()
    assert solver.order == SINGLESTEP[name]["order"] + 1
    for sched, grid in ((vp, karras), (dj.schedules.edm(), edm_mid), (vp, logsnr_mid)):
        errors, slopes = convergence(solver, sched, grid, ns=(32, 64, 128, 256, 512))
        assert np.all(np.abs(slopes[-3:] - solver.order) < 0.15), (grid.__name__, errors, slopes)


def _reference_unipc(gmm, sched, ts, x, order, variant, use_corrector, lower_order_final):
    """The official `sample(method="multistep")` with `multistep_uni_pc_bh_update` (x0 prediction),
    one Python iteration per step in float64 numpy. Returns the sample and the network evaluations."""
    ts = [float(t) for t in ts]
    lam = [0.5 * float(sched.logsnr(t)) for t in ts]
    alpha = [float(sched.alpha(t)) for t in ts]
    sigma = [float(sched.sigma(t)) for t in ts]
    nfe = 0

    def model(x, i):
        nonlocal nfe
        nfe += 1
        return np.asarray(gmm.x0_mean(jnp.asarray(x), sched, ts[i]))

    def update(x, models, prev, i, order, corrector):  # prev: grid indices of `models`, oldest first
        s0, m0 = prev[-1], models[-1]
        h = lam[i] - lam[s0]
        rks, D1s = [], []
        for k in range(1, order):
            rk = (lam[prev[-(k + 1)]] - lam[s0]) / h
            rks.append(rk)
            D1s.append((models[-(k + 1)] - m0) / rk)
        rks = np.array(rks + [1.0])
        hh = -h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if variant == "bh1" else np.expm1(hh)
        R, b = [], []
        for k in range(1, order + 1):
            R.append(rks ** (k - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R, b = np.stack(R), np.array(b)
        x_t_ = sigma[i] / sigma[s0] * x - alpha[i] * h_phi_1 * m0
        pred_res = 0.0
        if D1s:
            rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            pred_res = sum(r * d for r, d in zip(rhos_p, D1s))
        x_t = x_t_ - alpha[i] * B_h * pred_res
        model_t = None
        if corrector:
            rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
            model_t = model(x_t, i)
            corr_res = sum(r * d for r, d in zip(rhos_c[:-1], D1s))
            x_t = x_t_ - alpha[i] * B_h * (corr_res + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    x = np.asarray(x)
    steps = len(ts) - 1
    prev, models = [0], [model(x, 0)]
    for step in range(1, order):  # warm-up with orders 1, 2, ...
        x, model_x = update(x, models, prev, step, step, use_corrector)
        prev.append(step)
        models.append(model(x, step) if model_x is None else model_x)
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, models, prev, step, step_order, use_corrector and step < steps)
        prev, models = prev[1:] + [step], models[1:] + [None]
        if step < steps:
            models[-1] = model(x, step) if model_x is None else model_x
    return x, nfe


REFERENCE = {
    "unipc2_bh2": (2, "bh2", True, True),
    "unipc3_bh2": (3, "bh2", True, True),
    "unipc3_bh1_no_final_lowering": (3, "bh1", True, False),
    "unipc2_bh1_no_corrector": (2, "bh1", False, True),
}


@pytest.mark.parametrize("name", REFERENCE)
def test_compiled_sampler_equals_the_official_loop(name):
    # 16 steps: diffusers and the official code lower the final orders also at >= 15 steps.
    order, variant, corrector, lower_order_final = REFERENCE[name]
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 16)
    x_T = jax.random.normal(jax.random.key(3), (32, 3))
    solver = unipc(order, variant, corrector, lower_order_final)
    got, info = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    want, nfe = _reference_unipc(gmm, sched, ts, x_T, order, variant, corrector, lower_order_final)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    assert int(info.nfe) == nfe == 16  # the corrector reuses the next step's evaluation


def test_diffusers_grid_to_sigma_zero_and_the_last_step_returns_the_denoised_sample():
    # A step to sigma = 0 is first order (x = alpha x0); the official code and diffusers divide by
    # lambda = inf there (NaN) when lower_order_final=False or with bh1.
    gmm, sched = mixture(), dj.schedules.discrete()
    ts = dj.timesteps.diffusers(sched, 12, spacing="linspace", family="dpmsolver")
    x_T = jax.random.normal(jax.random.key(4), (32, 3))
    want, _ = _reference_unipc(gmm, sched, ts, x_T, 3, "bh2", True, True)
    got, info = dj.sample(unipc(3), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    for solver in (unipc(3, "bh1", lower_order_final=False), unipc(2, lower_order_final=False)):
        x, info = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T, return_trajectory=True)
        np.testing.assert_allclose(x, info.x0_trajectory[-1], rtol=0, atol=1e-12)
        assert int(info.nfe) == 12


def test_float32_stays_float32_and_agrees_with_float64():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 10)
    x_T = jax.random.normal(jax.random.key(5), (64, 3))
    solver = unipc(3)
    x64, _ = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    x32, _ = dj.sample(solver, gmm.denoiser(sched), ts.astype(jnp.float32), jax.random.key(0), x_T.astype(jnp.float32))
    assert x32.dtype == jnp.float32
    np.testing.assert_allclose(x32, x64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(order=4), "order"),
        (dict(order=0), "order"),
        (dict(order=True), "order"),
        (dict(variant="bh3"), "variant"),
        (dict(corrector=1), "corrector"),
        (dict(lower_order_final="yes"), "lower_order_final"),
        (dict(start="singlestep_3"), "start"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unipc(**kwargs)
