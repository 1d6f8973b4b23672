"""DPM-Solver and DPM-Solver++: identities, convergence orders and the official algorithms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.sampling import scan_steps
from diffjax.solvers.base import noise_like
from helpers import convergence, mixture

S = dj.solvers


def karras(s, n):
    return dj.timesteps.karras(s, n, sigma_min=0.002, sigma_max=80.0, append_zero=False)


def logsnr(s, n):
    return dj.timesteps.logsnr_uniform(s, n, t_min=1e-3)


# Grids over the middle of the noise range (sigma/alpha in about [0.2, 5]), where x0 moves over the
# first step, so a low-order first step shows in the global error from a few dozen steps on.
def edm_mid(s, n):
    return dj.timesteps.karras(s, n, sigma_min=0.2, sigma_max=5.0, append_zero=False)


def logsnr_mid(s, n):
    return dj.timesteps.logsnr_uniform(s, n, t_min=0.05, t_max=0.6)  # vp_linear: sigma/alpha in [0.17, 6.1]


VP, EDM = dj.schedules.vp_linear(), dj.schedules.edm()


def test_first_order_members_are_all_ddim():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 12)
    x_T = gmm.sample(jax.random.key(0), 64, sched, ts[0])
    run = lambda solver: dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(1), x_T)[0]
    ddim = run(S.ddim())
    for solver in (S.dpm_solver(1), S.dpm_multistep(1, algorithm="dpmsolver"), S.dpm_multistep(1)):
        np.testing.assert_allclose(run(solver), ddim, rtol=0, atol=1e-12)
    # With eta = 0 the SDE solver is DPM-Solver++(2M) itself.
    np.testing.assert_allclose(run(S.dpmpp_2m_sde(eta=0.0)), run(S.dpmpp_2m()), rtol=0, atol=1e-12)


# (solver, grid, order): the last three pairwise slopes lie within 0.15 of `order`, which is the
# solver's declared `order` where it is None. Grids are chosen where the asymptotic regime is
# reached by n = 512: singlestep DPM-Solver-3 ("dpmsolver" type) has cancelling error terms on the
# Karras grid, and faithful 3M's slope is still rising there (1.74, 1.89, 1.95); on the logSNR grid
# corrected 3M runs at order 4 until its first-order warm-up step dominates, so it is measured on
# Karras.
#
# The two third-order multistep rows measure 3 while the solvers declare 2: with diffusers'
# lower-order start their first step is first order, and its local O(h^2) error caps the global
# order at 2 asymptotically. On the Karras grid that step sits at sigma = 80, where x0 barely moves,
# so its error stays below the third-order error up to n ~ 2048 (as for DEIS-3, tests/test_deis.py);
# on an EDM grid over sigma in [0.2, 5] the cap shows from n ~ 32 on
# (`test_lower_order_start_caps_the_third_order_solvers_at_two`). With start="singlestep" they
# declare and measure 3 on every grid (`test_singlestep_start_reaches_the_declared_order`).
ORDERS = [
    ("dpm_solver_1", lambda: S.dpm_solver(1), karras, None),
    ("dpm_solver_2", lambda: S.dpm_solver(2), karras, None),
    ("dpm_solver_2_taylor", lambda: S.dpm_solver(2, solver_type="taylor"), karras, None),
    ("dpm_solver_3", lambda: S.dpm_solver(3), logsnr, None),
    ("dpm_solver_3_taylor", lambda: S.dpm_solver(3, solver_type="taylor"), karras, None),
    ("dpmpp_2s", lambda: S.dpmpp_2s(), karras, None),
    ("dpmpp_2m", lambda: S.dpmpp_2m(), karras, None),
    ("dpmpp_2m_taylor", lambda: S.dpmpp_2m(solver_type="taylor"), karras, None),
    # With the taylor sign fixed, eta = 0 is DPM-Solver++(2M) "taylor" (with the reversed sign: 0.94 -> 0.99).
    ("dpmpp_2m_sde_taylor_eta0", lambda: S.dpmpp_2m_sde(0.0, solver_type="taylor"), karras, None),
    ("dpmpp_3m_faithful", lambda: S.dpmpp_3m("faithful"), logsnr, None),
    ("dpmpp_3m_corrected", lambda: S.dpmpp_3m("corrected"), karras, 3),  # declares 2: see above
    ("dpm_multistep_3_noise", lambda: S.dpm_multistep(3, algorithm="dpmsolver"), karras, 3),  # declares 2
]


@pytest.mark.parametrize("name,make,grid,order", ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order(name, make, grid, order):
    solver = make()
    order = solver.order if order is None else order
    errors, slopes = convergence(solver, dj.schedules.vp_linear(), grid, ns=(32, 64, 128, 256, 512))
    assert np.all(np.abs(slopes[-3:] - order) < 0.15), (errors, slopes)


def test_lower_order_start_caps_the_third_order_solvers_at_two():
    # The first-order first step's local O(h^2) error is the global error on a mid-range grid.
    solver = S.dpmpp_3m("corrected")
    errors, slopes = convergence(solver, EDM, edm_mid, ns=(32, 64, 128, 256, 512))
    assert solver.order == 2 and np.all(np.abs(slopes[-3:] - solver.order) < 0.15), (errors, slopes)


# start="singlestep" (a singlestep third-order first step) restores the nominal order on every grid.
# Measured slopes for n = 32 ... 512: Karras 3.11, 3.05, 3.03, 3.01; EDM [0.2, 5] 3.03, 3.01, 3.00, 3.00;
# logSNR over t in [0.05, 0.6] 3.19, 3.10, 3.05, 3.02. On the full logSNR grid (t_min = 1e-3) corrected
# 3M runs at order 4 up to n ~ 1000 (3.95, 4.01, 3.97, 3.88, 3.69, 3.40, 3.17, 3.06 for n = 16 ... 4096):
# x0 is flat at both ends of that grid, which nearly cancels the global h^3 term, so the mid-range
# logSNR grid is used here.
SINGLESTEP_GRIDS = [(VP, karras), (EDM, edm_mid), (VP, logsnr_mid)]


def test_singlestep_start_reaches_the_declared_order():
    solver = S.dpmpp_3m("corrected", start="singlestep")
    assert solver.order == 3
    for sched, grid in SINGLESTEP_GRIDS:
        errors, slopes = convergence(solver, sched, grid, ns=(32, 64, 128, 256, 512))
        assert np.all(np.abs(slopes[-3:] - solver.order) < 0.15), (grid.__name__, errors, slopes)


def test_dpm_solver_fast_spends_exactly_its_budget():
    assert S.fast_orders(20, 3) == [3] * 6 + [2]
    assert S.fast_orders(21, 3) == [3] * 6 + [2, 1]
    assert S.fast_orders(22, 3) == [3] * 7 + [1]
    assert S.fast_orders(9, 2) == [2] * 4 + [1]
    gmm, sched = mixture(), dj.schedules.vp_linear()
    for nfe in (10, 11, 12, 20):
        solver, n = S.dpm_solver_fast(nfe)
        ts = dj.timesteps.logsnr_uniform(sched, n)
        x, info = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), jnp.ones((4, 3)))
        assert int(info.nfe) == nfe and np.all(np.isfinite(x))


def _lam(sched, t):
    return 0.5 * float(sched.logsnr(t))


def _reference_multistep(gmm, sched, ts, x, order, d2_weight):
    """DPM-Solver++ multistep as the official `sample(method="multistep")` loop: lists of previous
    x0 predictions, warm-up orders 1..order-1, lower orders on the last steps of short grids."""
    steps = len(ts) - 1
    models, lams = [gmm.x0_mean(x, sched, ts[0])], [_lam(sched, ts[0])]
    for step in range(1, steps + 1):
        t = ts[step]
        k = min(order, step)
        if steps < 15 and step == steps:
            k = 1
        elif steps < 15 and step == steps - 1:
            k = min(k, 2)
        s_prev, lam_t = ts[step - 1], _lam(sched, t)
        h = lam_t - lams[-1]
        phi_1 = np.expm1(-h)
        x = float(sched.sigma(t) / sched.sigma(s_prev)) * x - float(sched.alpha(t)) * phi_1 * models[-1]
        if k >= 2:
            r0 = (lams[-1] - lams[-2]) / h
            d1_0 = (models[-1] - models[-2]) / r0
        if k == 2:
            x = x - 0.5 * float(sched.alpha(t)) * phi_1 * d1_0
        if k == 3:
            r1 = (lams[-2] - lams[-3]) / h
            d1_1 = (models[-2] - models[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x = x + float(sched.alpha(t)) * (phi_2 * d1 - d2_weight * phi_3 * d2)
        if step < steps:
            models.append(gmm.x0_mean(x, sched, t))
            lams.append(lam_t)
    return x


@pytest.mark.parametrize("order,variant", [(2, None), (3, "faithful"), (3, "corrected")])
def test_compiled_multistep_equals_the_official_loop(order, variant):
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.logsnr_uniform(sched, 12)
    x_T = gmm.sample(jax.random.key(2), 16, sched, ts[0])
    solver = S.dpmpp_2m() if order == 2 else S.dpmpp_3m(variant)
    got, info = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    want = _reference_multistep(gmm, sched, ts, x_T, order, 1.0 if variant == "faithful" else 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    assert int(info.nfe) == 12


def _reference_singlestep_3(gmm, sched, ts, x):
    """Singlestep DPM-Solver-3 (noise prediction), the official third-order update with logSNR
    intermediate points r1 = 1/3, r2 = 2/3."""
    eps = lambda x, t: (x - sched.alpha(t) * gmm.x0_mean(x, sched, t)) / sched.sigma(t)
    for s, t in zip(ts[:-1], ts[1:]):
        lam_s, lam_t = _lam(sched, s), _lam(sched, t)
        h = lam_t - lam_s
        s1, s2 = (sched.t_from_logsnr(2 * (lam_s + r * h)) for r in (1 / 3, 2 / 3))
        r1, r2 = (_lam(sched, s1) - lam_s) / h, (_lam(sched, s2) - lam_s) / h
        a = lambda u: float(sched.alpha(u))
        sg = lambda u: float(sched.sigma(u))
        e_s = eps(x, s)
        x1 = a(s1) / a(s) * x - sg(s1) * np.expm1(r1 * h) * e_s
        e_1 = eps(x1, s1)
        phi_22 = np.expm1(r2 * h) / (r2 * h) - 1.0
        x2 = a(s2) / a(s) * x - sg(s2) * np.expm1(r2 * h) * e_s - r2 / r1 * sg(s2) * phi_22 * (e_1 - e_s)
        e_2 = eps(x2, s2)
        phi_1 = np.expm1(h)
        x = a(t) / a(s) * x - sg(t) * phi_1 * e_s - (1.0 / r2) * sg(t) * (phi_1 / h - 1.0) * (e_2 - e_s)
    return x


def test_compiled_singlestep_equals_the_official_update():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 6)
    x_T = gmm.sample(jax.random.key(3), 16, sched, ts[0])
    got, info = dj.sample(S.dpm_solver(3), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    np.testing.assert_allclose(got, _reference_singlestep_3(gmm, sched, ts, x_T), rtol=1e-11, atol=1e-11)
    assert int(info.nfe) == 18


def _reference_kdiffusion_2m_sde(gmm, sched, ts, key, x, eta, solver_type="midpoint"):
    """k-diffusion's `sample_dpmpp_2m_sde` (solver_type "midpoint" or "heun") on x/alpha against
    sigma/alpha, diffjax's keys."""
    keys = jax.random.split(key, len(ts) - 1)
    sig = [float(sched.ve_sigma(t)) for t in ts]
    x_bar, old, h_last = x / sched.alpha(ts[0]), None, None
    for i in range(len(ts) - 1):
        denoised = gmm.x0_mean(x_bar * sched.alpha(ts[i]), sched, ts[i])
        if sig[i + 1] == 0:
            x_bar = denoised
        else:
            h = np.log(sig[i]) - np.log(sig[i + 1])
            eta_h = eta * h
            x_bar = sig[i + 1] / sig[i] * np.exp(-eta_h) * x_bar + -np.expm1(-h - eta_h) * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x_bar = x_bar + (-np.expm1(-h - eta_h) / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
                else:
                    x_bar = x_bar + 0.5 * -np.expm1(-h - eta_h) * (1 / r) * (denoised - old)
            z = noise_like(keys[i], x)
            x_bar = x_bar + z * sig[i + 1] * np.sqrt(-np.expm1(-2 * eta_h))
            h_last = h
        old = denoised
    return x_bar * sched.alpha(ts[-1])


@pytest.mark.parametrize("solver_type", ["dpmsolver", "taylor"])
def test_compiled_sde_dpmpp_2m_equals_k_diffusion(solver_type):
    # "taylor" is k-diffusion's "heun": x0's linear term weighted by 1 - g/((1 + eta) h).
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.karras(sched, 20)  # ends at sigma = 0, which k-diffusion steps into first order
    x_T = gmm.sample(jax.random.key(4), 16, sched, ts[0])
    solver = S.dpmpp_2m_sde(eta=0.7, solver_type=solver_type, lower_order_final=False)
    got, _ = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(5), x_T)
    kd_type = "midpoint" if solver_type == "dpmsolver" else "heun"
    want = _reference_kdiffusion_2m_sde(gmm, sched, ts, jax.random.key(5), x_T, 0.7, kd_type)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_sde_dpmpp_2m_taylor_without_noise_is_dpmpp_2m_taylor():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.karras(sched, 20, sigma_min=0.01, sigma_max=50.0, append_zero=False)
    x_T = gmm.sample(jax.random.key(0), 64, sched, ts[0])
    run = lambda solver: dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(1), x_T)[0]
    sde = S.dpmpp_2m_sde(eta=0.0, solver_type="taylor")
    assert not sde.stochastic and sde.order == 2
    np.testing.assert_allclose(run(sde), run(S.dpmpp_2m(solver_type="taylor")), rtol=0, atol=1e-12)


def test_steps_into_sigma_zero_return_the_data_prediction():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.karras(sched, 8)  # last time has sigma = 0
    x_T = gmm.sample(jax.random.key(6), 16, sched, ts[0])
    x, info = dj.sample(S.dpmpp_3m(), gmm.denoiser(sched), ts, jax.random.key(0), x_T, return_trajectory=True)
    np.testing.assert_allclose(x, info.x0_trajectory[-1], rtol=0, atol=1e-14)


def test_denoise_to_zero_adds_one_evaluation_at_the_last_time():
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.logsnr_uniform(sched, 10)
    x_T = gmm.sample(jax.random.key(7), 16, sched, ts[0])
    x, info = dj.sample(S.dpmpp_2m(), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    y, info_y = dj.sample(S.denoise_to_zero(S.dpmpp_2m()), gmm.denoiser(sched), ts, jax.random.key(0), x_T)
    np.testing.assert_allclose(y, gmm.x0_mean(x, sched, ts[-1]), rtol=1e-13, atol=1e-13)
    assert int(info_y.nfe) == int(info.nfe) + 1 == 11


def test_bad_options_are_rejected():
    for make, message in [
        (lambda: S.dpm_solver(4), "order"),
        (lambda: S.dpm_solver(2, solver_type="heun"), "solver_type"),
        (lambda: S.dpm_solver(2, inner="karras"), "inner"),
        (lambda: S.dpm_solver(3, final_orders=(5,)), "final_orders"),
        (lambda: S.dpmpp_3m("shipped"), "variant"),
        (lambda: S.dpm_multistep(2, algorithm="dpm"), "algorithm"),
        (lambda: S.dpmpp_2m_sde(eta=-1.0), "eta"),
        (lambda: S.dpmpp_2m_sde(lower_order_final=1), "lower_order_final"),
        (lambda: S.dpmpp_3m(start="warm"), "start"),
        (lambda: S.dpm_multistep(3, euler_at_final="no"), "euler_at_final"),
        (lambda: S.dpm_multistep(3, d2_weight=float("nan")), "d2_weight"),
        (lambda: S.fast_orders(10, 4), "order"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match="needs at least 2"):
        solver, _ = S.dpm_solver_fast(21)
        dj.sample(
            solver,
            mixture().denoiser(dj.schedules.vp_linear()),
            jnp.array([1.0, 0.5]),
            jax.random.key(0),
            jnp.ones((1, 3)),
        )


def test_equal_options_give_equal_hash_equal_solvers():
    first, n = S.dpm_solver_fast(20)
    second, m = S.dpm_solver_fast(20)
    assert first == second and hash(first) == hash(second) and n == m == 7
    assert first != S.dpm_solver_fast(21)[0]
    for make in (
        lambda: S.dpm_solver(3, final_orders=(2, 1)),
        lambda: S.dpmpp_2s(solver_type="taylor"),
        lambda: S.dpmpp_2m(),
        lambda: S.dpmpp_3m("faithful", start="singlestep"),
        lambda: S.dpmpp_2m_sde(0.5, solver_type="taylor"),
        lambda: S.deis(3, start="singlestep"),
        lambda: S.unipc(3, "bh1", start="singlestep"),
    ):
        assert make() == make() and hash(make()) == hash(make()), make()
    assert S.dpmpp_3m() == S.dpm_multistep(3) and S.dpmpp_2m() == S.dpm_multistep(2)
    assert S.dpmpp_3m() != S.dpmpp_3m(start="singlestep")


def test_declared_orders():
    # Lower-order start: the first-order first step caps at 2 (UniPC: UniP-1 + UniC-1, order 2, caps at
    # 3); a first-order last step (euler_at_final, UniPC's lower_order_final) caps at 2.
    assert S.dpm_solver(3).order == 3 and S.dpm_solver(3, final_orders=(2, 1)).order == 2
    assert S.dpm_solver_fast(20)[0].order == 3 and S.dpm_solver_fast(21)[0].order == 2
    assert S.dpmpp_2s().order == 2 and S.dpmpp_2m().order == 2
    assert S.dpmpp_3m().order == 2 and S.dpmpp_3m(start="singlestep").order == 3
    assert S.dpmpp_3m("faithful", start="singlestep").order == 2
    assert S.dpmpp_3m(start="singlestep", euler_at_final=True).order == 2
    assert S.dpm_multistep(1).order == 1 and S.dpm_multistep(3, algorithm="dpmsolver", start="singlestep").order == 3
    assert S.dpmpp_2m_sde().order == 2 and S.dpmpp_2m_sde().stochastic and not S.dpmpp_2m_sde(0.0).stochastic
    assert [S.deis(k).order for k in (1, 2, 3)] == [1, 2, 2] and S.deis(3, start="singlestep").order == 3
    assert S.unipc(1, lower_order_final=False).order == 2 and S.unipc(2, lower_order_final=False).order == 3
    assert S.unipc(3, lower_order_final=False).order == 3 and S.unipc(2, corrector=False).order == 2
    assert S.unipc(3, lower_order_final=False, start="singlestep").order == 4
    assert S.unipc(3, start="singlestep").order == S.unipc(2).order == 2
    for solver in (S.dpm_solver(3), S.dpmpp_3m(), S.deis(), S.unipc()):
        assert not solver.stochastic


MULTISTEP = {
    "dpmpp_3m": lambda: S.dpmpp_3m(),
    "dpmpp_3m_singlestep": lambda: S.dpmpp_3m(start="singlestep"),
    "dpm_multistep_2_noise": lambda: S.dpm_multistep(2, algorithm="dpmsolver"),
    "dpmpp_2m_sde_eta0": lambda: S.dpmpp_2m_sde(0.0),
    "deis_3": lambda: S.deis(3),
    "deis_3_singlestep": lambda: S.deis(3, start="singlestep"),
    "unipc_3": lambda: S.unipc(3),
    "unipc_2_singlestep": lambda: S.unipc(2, start="singlestep"),
}


@pytest.mark.parametrize("name", MULTISTEP)
def test_gather_takes_every_per_particle_leaf(name):
    # Deterministic solvers treat particles independently: the state of x_T[ancestors] after k steps
    # is the state of x_T after k steps, gathered.
    solver, gmm, sched = MULTISTEP[name](), mixture(), dj.schedules.vp_cosine()
    ts = dj.timesteps.logsnr_uniform(sched, 10)
    x_T = gmm.sample(jax.random.key(8), 5, sched, ts[0])
    ancestors = jnp.array([3, 0, 0, 4, 1])
    keys = jax.random.split(jax.random.key(0), 4)
    run = lambda x: scan_steps(solver, solver.init(x, ts), keys, ts, gmm.denoiser(sched))[0]
    want, got = run(x_T[ancestors]), solver.gather(run(x_T), ancestors)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["dpmpp_3m_singlestep", "deis_3_singlestep", "unipc_2_singlestep"])
def test_singlestep_start_spends_three_evaluations_on_the_first_step(name):
    gmm, sched = mixture(), dj.schedules.vp_linear()
    ts = dj.timesteps.karras(sched, 12)  # ends at sigma = 0
    x_T = gmm.sample(jax.random.key(9), 16, sched, ts[0])
    solver = MULTISTEP[name]()
    x, info = dj.sample(solver, gmm.denoiser(sched), ts, jax.random.key(0), x_T, return_trajectory=True)
    assert int(info.nfe) == 12 + 2 and len(solver.head) == 1
    np.testing.assert_allclose(x, info.x0_trajectory[-1], rtol=0, atol=1e-12)
    # One step into sigma = 0: the singlestep start drops to first order and returns x0 as well.
    x, info = dj.sample(solver, gmm.denoiser(sched), ts[-2:], jax.random.key(0), x_T, return_trajectory=True)
    np.testing.assert_allclose(x, info.x0_trajectory[-1], rtol=0, atol=1e-12)
