"""Classifier-free guidance and its variants (rescale, interval, CFG++) against exact oracles.

Classes are a Gaussian mixture's components: p_t(x | c) is component c diffused, p_t(x) the whole
mixture (the null label). Guidance with scale w must give the score of p_t(x | c)^w p_t(x)^(1 - w),
i.e. w grad log p_t(x | c) + (1 - w) grad log p_t(x), computed here by autodiff of the exact
log-densities. The variants are checked against their formulas in NumPy, and with single Gaussian
classes (every guided prediction affine in x) whole guided DDIM chains against the exact affine map
propagated step by step.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.guidance import cfg

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0]])
SCALES = np.array([[0.4, 0.8, 0.3], [0.6, 0.2, 0.9]])
NULL = 2
LABELS = jnp.array([0, 1, 1, 0, 1])
TIMES = jnp.array([0.15, 0.35, 0.5, 0.7, 0.9])


def conditional_denoiser(schedule, wrap=None):
    """A Denoiser whose cond picks component c (0, 1) or the whole mixture (the null label 2); without
    `wrap` one per schedule, so that tests share its compiled programs."""
    if wrap is None:
        return _shared_denoiser(schedule)
    return _build_denoiser(schedule, wrap)


@functools.cache
def _shared_denoiser(schedule):
    return _build_denoiser(schedule, lambda f: f)


def _build_denoiser(schedule, wrap):
    parts = [dj.data.GaussianMixture([1.0], MEANS[k : k + 1], SCALES[k : k + 1]) for k in range(2)]
    parts.append(dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES))

    def apply_fn(params, x, t, cond):
        x0 = jnp.stack([g.x0_mean(x, schedule, t) for g in params])  # (3, B, d)
        return jnp.take_along_axis(x0, cond[None, :, None], axis=0)[0]

    return dj.Denoiser(wrap(apply_fn), parts, schedule=schedule, prediction="x0", time_fn=lambda t: t), parts


@jax.jit
def tilted_score(parts, sched, scale, x, t, labels):
    """grad log of p_t(x | c)^scale p_t(x)^(1 - scale) per sample, by autodiff of the exact log-densities."""

    def log_tilted(xi, ti, c):
        log_c = jnp.where(c == 0, parts[0].log_prob(xi[None], sched, ti[None]),
                          parts[1].log_prob(xi[None], sched, ti[None]))  # fmt: skip
        return (scale * log_c + (1 - scale) * parts[2].log_prob(xi[None], sched, ti[None]))[0]

    return jax.vmap(jax.grad(log_tilted))(x, t, labels)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guided_score_is_the_score_of_the_tilted_density(scale):
    sched = dj.schedules.vp_linear()
    den, parts = conditional_denoiser(sched)
    guided = dj.guidance.classifier_free(den, scale, NULL)
    x = jax.random.normal(jax.random.key(0), (5, 3))
    t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9])
    labels = jnp.array([0, 1, 0, 1, 1])
    exact = tilted_score(parts, sched, scale, x, t, labels)
    got = guided(x, t, labels)
    # float64 closed forms on both sides: only rounding separates them
    np.testing.assert_allclose(got.score, exact, rtol=1e-10, atol=1e-12)
    # the other views are the same guided model: eps = -sigma score, x0 = (x - sigma eps) / alpha
    sigma, alpha = sched.sigma(t)[:, None], sched.alpha(t)[:, None]
    np.testing.assert_allclose(got.eps, -sigma * exact, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.x0, (x + sigma**2 * exact) / alpha, rtol=1e-10, atol=1e-12)


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    conditional = dj.guidance.classifier_free(den, 1.0, NULL)(x, TIMES, LABELS)
    unconditional = dj.guidance.classifier_free(den, 0.0, NULL)(x, TIMES, LABELS)
    # w c + (1 - w) u is exactly c at w = 1 and exactly u at w = 0, in every view
    assert_views_equal(conditional, den(x, TIMES, LABELS))
    assert_views_equal(unconditional, den(x, TIMES, jnp.full(5, NULL)))


def test_guided_sampling_follows_the_scale_without_retracing():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched, wrap=lambda f: chex.assert_max_traces(f, n=1))
    ts = dj.timesteps.uniform(sched, 10)
    x_T = jax.random.normal(jax.random.key(2), (6, 3))
    solver = dj.solvers.ddim()
    outs = []
    for scale in (1.0, 2.0):
        guided = dj.guidance.classifier_free(den, scale, NULL)
        outs.append(dj.sample(solver, guided, ts, jax.random.key(3), x_T, cond=jnp.zeros(6, jnp.int32))[0])
    assert np.all(np.isfinite(outs[0])) and not np.allclose(outs[0], outs[1])
    # scale > 1 extrapolates away from the unconditional model: samples of class 0 move away from class 1
    dist = lambda x: float(jnp.mean(jnp.sum((x - MEANS[1]) ** 2, axis=-1)))
    assert dist(outs[1]) > dist(outs[0])


def test_bad_arguments():
    den, _ = conditional_denoiser(dj.schedules.vp_linear())
    with pytest.raises(ValueError, match="scale"):
        dj.guidance.classifier_free(den, float("nan"), NULL)
    with pytest.raises(ValueError, match="null_cond"):
        dj.guidance.classifier_free(den, 2.0, None)
    with pytest.raises(ValueError, match="condition"):
        dj.guidance.classifier_free(den, 2.0, NULL)(jnp.zeros((2, 3)), 0.5)


# -- variants: rescale, interval, CFG++ -------------------------------------------------------------


def branches(den, x, t, labels):
    """The conditional and unconditional predictions, each from its own call."""
    return den(x, t, labels), den(x, t, jnp.full(x.shape[:1], NULL))


def assert_views_equal(a, b):
    for name, u, v in zip(a._fields, a, b):
        np.testing.assert_array_equal(u, v, err_msg=name)


def assert_consistent(pred, sched, x, t):
    """alpha x0 + sigma eps = x and v, score from (x0, eps): one model behind every view."""
    alpha, sigma = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    np.testing.assert_allclose(alpha * pred.x0 + sigma * pred.eps, x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.v, alpha * pred.eps - sigma * pred.x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pred.score, -pred.eps / sigma, rtol=1e-12, atol=1e-12)


def rescale_reference(o_c, o_u, w, phi):
    """Lin et al.'s formula in NumPy: o_w = o_u + w (o_c - o_u), o_r = o_w std(o_c) / std(o_w) per sample,
    phi o_r + (1 - phi) o_w (torch's unbiased std, as diffusers: the ratio does not see the ddof)."""
    o_c, o_u = np.asarray(o_c), np.asarray(o_u)
    o_w = o_u + w * (o_c - o_u)
    ratio = np.std(o_c, axis=-1, ddof=1) / np.std(o_w, axis=-1, ddof=1)
    return phi * o_w * ratio[:, None] + (1 - phi) * o_w


@pytest.mark.parametrize("view", ["eps", "v", "x0"])
@pytest.mark.parametrize("phi", [0.3, 1.0])
def test_rescale_matches_the_numpy_formula_and_keeps_the_views_consistent(view, phi):
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(4), (5, 3))
    got = dj.guidance.classifier_free(den, 4.0, NULL, rescale=phi, rescale_view=view)(x, TIMES, LABELS)
    cond, uncond = branches(den, x, TIMES, LABELS)
    # the rescaled view: the formula up to rounding of float64 arithmetic in both
    expected = rescale_reference(getattr(cond, view), getattr(uncond, view), 4.0, phi)
    np.testing.assert_allclose(getattr(got, view), expected, rtol=1e-12, atol=1e-12)
    assert_consistent(got, sched, x, TIMES)
    if phi == 1.0:  # std of the output equals the conditional's, per sample
        np.testing.assert_allclose(np.std(getattr(got, view), -1), np.std(getattr(cond, view), -1), rtol=1e-12)
    plain = dj.guidance.classifier_free(den, 4.0, NULL)(x, TIMES, LABELS)
    assert not np.allclose(getattr(got, view), getattr(plain, view))


def test_rescale_off_and_scale_one_are_exact():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(5), (5, 3))
    for view in ("eps", "v", "x0"):
        plain = dj.guidance.classifier_free(den, 2.5, NULL)(x, TIMES, LABELS)
        off = dj.guidance.classifier_free(den, 2.5, NULL, rescale=0.0, rescale_view=view)(x, TIMES, LABELS)
        assert_views_equal(off, plain)  # phi = 0: the identity, bit for bit
        for phi in (0.4, 1.0):  # scale 1: o_w = o_c, the ratio is 1, nothing moves
            one = dj.guidance.classifier_free(den, 1.0, NULL, rescale=phi, rescale_view=view)(x, TIMES, LABELS)
            assert_views_equal(one, den(x, TIMES, LABELS))


def test_rescale_follows_the_network_output():
    den, _ = conditional_denoiser(dj.schedules.vp_linear())
    for prediction, view in [("eps", "eps"), ("score", "eps"), ("v", "v"), ("x0", "x0")]:
        guided = dj.guidance.classifier_free(den.replace(prediction=prediction), 2.0, NULL, rescale=0.7)
        assert guided.rescale_view == view
    assert dj.guidance.classifier_free(den, 2.0, NULL, rescale=0.7, rescale_view="eps").rescale_view == "eps"
    edm = den.replace(prediction="edm")
    assert dj.guidance.classifier_free(edm, 2.0, NULL).rescale_view is None  # rescale off: no view needed
    with pytest.raises(ValueError, match="rescale_view"):
        dj.guidance.classifier_free(edm, 2.0, NULL, rescale=0.7)


def test_interval_guides_inside_and_is_conditional_outside():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(6), (5, 3))
    levels = np.asarray(sched.ve_sigma(TIMES))  # increasing with t
    # (levels[1], levels[3]]: samples 2 and 3 inside (3 on the closed upper end), 0, 1 (the open lower end) and 4 out
    interval = (float(levels[1]), float(levels[3]))
    got = dj.guidance.classifier_free(den, 3.0, NULL, interval=interval)(x, TIMES, LABELS)
    plain = dj.guidance.classifier_free(den, 3.0, NULL)(x, TIMES, LABELS)
    cond = den(x, TIMES, LABELS)
    inside = np.array([False, False, True, True, False])
    for name, g, p, c in zip(got._fields, got, plain, cond):
        np.testing.assert_array_equal(g[inside], p[inside], err_msg=name)
        np.testing.assert_array_equal(g[~inside], c[~inside], err_msg=name)
    # a scalar t: all samples in or all out
    np.testing.assert_array_equal(
        dj.guidance.classifier_free(den, 3.0, NULL, interval=interval)(x, TIMES[4], LABELS).x0,
        den(x, TIMES[4], LABELS).x0,
    )
    everywhere = dj.guidance.classifier_free(den, 3.0, NULL, interval=(0.0, float("inf")))(x, TIMES, LABELS)
    assert_views_equal(everywhere, plain)
    # with rescale too: outside, o_w = o_c and the rescale is the identity
    both = dj.guidance.classifier_free(den, 3.0, NULL, interval=interval, rescale=0.7)(x, TIMES, LABELS)
    np.testing.assert_array_equal(both.x0[~inside], cond.x0[~inside])


def test_an_empty_interval_samples_the_conditional_model():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    ts = dj.timesteps.uniform(sched, 10)  # VE levels from 152 down to 0.01
    x_T = jax.random.normal(jax.random.key(7), (6, 3))
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    run = lambda d: dj.sample(dj.solvers.ddim(), d, ts, jax.random.key(8), x_T, cond=labels)[0]
    empty = run(dj.guidance.classifier_free(den, 3.0, NULL, interval=(1e3, 1e4)))
    # bit for bit the chain of the guided model at scale 1, which is the conditional model call by call
    np.testing.assert_array_equal(empty, run(dj.guidance.classifier_free(den, 1.0, NULL)))
    # the model's own chain evaluates it on a (B, ...) batch, not (2B, ...): XLA may round those apart by an ulp
    np.testing.assert_allclose(empty, run(den), rtol=0, atol=1e-14)


def test_cfg_pp_views_and_the_ddim_identity():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(9), (5, 3))
    cond, uncond = branches(den, x, TIMES, LABELS)
    lmbda = 0.6
    pp = cfg.classifier_free_pp(den, lmbda, NULL)
    got = pp(x, TIMES, LABELS)
    # x0 of eps_lambda (x0 is affine in eps at fixed x) and the unconditional eps
    alpha, sigma = sched.alpha(TIMES)[:, None], sched.sigma(TIMES)[:, None]
    eps_l = uncond.eps + lmbda * (cond.eps - uncond.eps)
    np.testing.assert_allclose(got.x0, (x - sigma * eps_l) / alpha, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.eps, uncond.eps)
    # not consistent with x: alpha x0 + sigma eps = x + sigma lambda (eps_u - eps_c)
    np.testing.assert_allclose(alpha * got.x0 + sigma * got.eps, x + sigma * lmbda * (uncond.eps - cond.eps),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    assert not np.allclose(alpha * got.x0 + sigma * got.eps, x)
    # one DDIM step each, at lambda = w: x_s^{++} - x_s^{cfg} = sigma_s (eps_u - eps_w)
    plain = dj.guidance.classifier_free(den, lmbda, NULL)
    for t, s in [(0.9, 0.6), (0.5, 0.45), (0.3, 0.01)]:
        grid = jnp.array([t, s])
        step = lambda solver, d, grid=grid: dj.sample(solver, d, grid, jax.random.key(0), x, cond=LABELS)[0]
        times = jnp.full(5, t)
        eps_w, eps_u = plain(x, times, LABELS).eps, branches(den, x, times, LABELS)[1].eps
        ddim_pp, ddim_cfg = step(dj.solvers.ddim(), pp), step(dj.solvers.ddim(), plain)
        np.testing.assert_allclose(ddim_pp - ddim_cfg, sched.sigma(s) * (eps_u - eps_w), rtol=1e-10, atol=1e-12)
        # euler reads only x0 and recomputes its direction from x: plain CFG with scale lambda
        np.testing.assert_allclose(step(dj.solvers.euler(), pp), ddim_cfg, rtol=1e-10, atol=1e-12)


def test_cfg_pp_at_zero_is_unconditional_ddim():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    ts = dj.timesteps.uniform(sched, 10)
    x_T = jax.random.normal(jax.random.key(10), (6, 3))
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    run = lambda d, c: dj.sample(dj.solvers.ddim(), d, ts, jax.random.key(0), x_T, cond=c)[0]
    got = run(cfg.classifier_free_pp(den, 0.0, NULL), labels)
    # bit for bit CFG at scale 0, the unconditional model call by call (both on the (2B, ...) batch) ...
    np.testing.assert_array_equal(got, run(dj.guidance.classifier_free(den, 0.0, NULL), labels))
    # ... and to an ulp the unconditional model's own chain
    np.testing.assert_allclose(got, run(den, jnp.full(6, NULL)), rtol=0, atol=1e-14)


# -- Gaussian classes: every guided DDIM chain is an affine map, propagated exactly -----------------

G_MEANS = np.array([[1.0, -0.5, 0.3], [-0.8, 0.6, -1.2], [0.1, 0.05, -0.45]])  # classes 0, 1 and the null model
G_COVS = [
    np.array([[0.5, 0.2, 0.0], [0.2, 0.4, 0.1], [0.0, 0.1, 0.3]]),
    np.array([[0.3, -0.1, 0.05], [-0.1, 0.6, 0.0], [0.05, 0.0, 0.2]]),
    np.array([[1.2, 0.1, -0.3], [0.1, 0.8, 0.2], [-0.3, 0.2, 1.5]]),
]


def gaussian_classes(schedule):
    """A Denoiser whose label 0, 1 picks a Gaussian class N(mu_c, Sigma_c) and 2 a Gaussian null model."""
    priors = [dj.data.LinearGaussian(m, c) for m, c in zip(G_MEANS, G_COVS)]

    def apply_fn(params, x, t, cond):
        x0 = jnp.stack([p.x0_mean(x, schedule, t) for p in params])
        return jnp.take_along_axis(x0, cond[None, :, None], axis=0)[0]

    return dj.Denoiser(apply_fn, priors, schedule=schedule, prediction="x0", time_fn=lambda t: t)


def affine_x0(sched, t, k):
    """E[x0 | x_t] = G x + g of Gaussian k: G = alpha Sigma S^-1, g = (I - alpha G) mu (NumPy)."""
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    gain = a * G_COVS[k] @ np.linalg.inv(a**2 * G_COVS[k] + s**2 * np.eye(3))
    return gain, (np.eye(3) - a * gain) @ G_MEANS[k]


def ddim_chain(sched, ts, c, guided_x0, renoise_eps):
    """The exact affine map x_T -> x_0 of deterministic DDIM: x_s = alpha_s x0_g + sigma_s eps_g."""
    m_tot, b_tot = np.eye(3), np.zeros(3)
    for t, s in zip(np.asarray(ts[:-1]), np.asarray(ts[1:])):
        a, sg = float(sched.alpha(t)), float(sched.sigma(t))
        (gc, bc), (gu, bu) = affine_x0(sched, t, c), affine_x0(sched, t, 2)
        g, b = guided_x0(float(sched.ve_sigma(t)), gc, bc, gu, bu)
        ge, be = renoise_eps(g, b, gu, bu)
        ge, be = (np.eye(3) - a * ge) / sg, -a * be / sg
        m = float(sched.alpha(s)) * g + float(sched.sigma(s)) * ge
        step_b = float(sched.alpha(s)) * b + float(sched.sigma(s)) * be
        m_tot, b_tot = m @ m_tot, m @ b_tot + step_b
    return m_tot, b_tot


def cfg_x0(w, interval=None):
    def guided(level, gc, bc, gu, bu):
        inside = interval is None or interval[0] < level <= interval[1]
        ww = w if inside else 1.0
        return ww * gc + (1 - ww) * gu, ww * bc + (1 - ww) * bu

    return guided


def same_eps(g, b, gu, bu):
    return g, b  # eps consistent with x0_g: eps = (x - alpha x0_g) / sigma


def unconditional_eps(g, b, gu, bu):
    return gu, bu  # CFG++: eps_u = (x - alpha x0_u) / sigma


@pytest.mark.parametrize(
    "name,guided_fn,x0_fn,eps_fn",
    [
        ("cfg", lambda d: dj.guidance.classifier_free(d, 2.5, 2), cfg_x0(2.5), same_eps),
        ("interval", lambda d: dj.guidance.classifier_free(d, 2.5, 2, interval=(0.3, 2.0)), cfg_x0(2.5, (0.3, 2.0)),
         same_eps),
        ("cfg++", lambda d: cfg.classifier_free_pp(d, 0.6, 2), cfg_x0(0.6), unconditional_eps),
    ],
)  # fmt: skip
def test_guided_ddim_moves_gaussians_by_the_exact_affine_map(name, guided_fn, x0_fn, eps_fn):
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 16)
    guided = guided_fn(gaussian_classes(sched))
    m_T, c_T = np.array([0.3, -0.2, 0.5]), float(sched.sigma(ts[0])) ** 2 * np.eye(3)  # x_T ~ N(m_T, sigma_T^2 I)
    for c in (0, 1):
        # the sampler at m_T and m_T + e_i gives its affine map: F(m_T) and the Jacobian's columns
        points = jnp.asarray(np.vstack([m_T, m_T + np.eye(3)]))
        out = np.asarray(dj.sample(dj.solvers.ddim(), guided, ts, jax.random.key(0), points, cond=jnp.full(4, c))[0])
        mean, jac = out[0], (out[1:] - out[0]).T
        m_tot, b_tot = ddim_chain(sched, ts, c, x0_fn, eps_fn)
        # float64 on both sides, 16 steps of 3x3 algebra: agreement to rounding
        np.testing.assert_allclose(mean, m_tot @ m_T + b_tot, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(jac @ c_T @ jac.T, m_tot @ c_T @ m_tot.T, rtol=1e-9, atol=1e-12, err_msg=name)


# -- batch invariance, values and bad arguments -------------------------------------------------------


def test_rescale_and_interval_are_per_sample():
    sched = dj.schedules.vp_linear()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(11), (5, 3))
    # the rescale's standard deviations are the only reductions (CFG++ and the interval are elementwise)
    guided = dj.guidance.classifier_free(den, 3.0, NULL, rescale=0.7, interval=(0.5, 5.0))
    evaluate = jax.jit(lambda d, x, t, c: d(x, t, c))
    alone = evaluate(guided, x[:2], TIMES[:2], LABELS[:2])
    together = evaluate(guided, x, TIMES, LABELS)
    for name, a, b in zip(alone._fields, alone, together):
        np.testing.assert_allclose(a, b[:2], rtol=1e-13, atol=1e-15, err_msg=name)


def test_new_scales_rescales_intervals_and_lambdas_do_not_retrace():
    sched = dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, 6)
    x_T = jax.random.normal(jax.random.key(12), (4, 3))
    labels = jnp.array([0, 1, 1, 0])
    den, _ = conditional_denoiser(sched, wrap=lambda f: chex.assert_max_traces(f, n=1))
    for scale, phi, interval in [(2.0, 0.7, (0.5, 5.0)), (4.0, 0.2, (0.1, 50.0)), (1.5, 0.0, (0.0, float("inf")))]:
        guided = dj.guidance.classifier_free(den, scale, NULL, rescale=phi, interval=interval)
        assert np.all(np.isfinite(dj.sample(dj.solvers.ddim(), guided, ts, jax.random.key(0), x_T, cond=labels)[0]))
    chex.clear_trace_counter()
    den, _ = conditional_denoiser(sched, wrap=lambda f: chex.assert_max_traces(f, n=1))
    for lmbda in (0.2, 0.9):
        pp = cfg.classifier_free_pp(den, lmbda, NULL)
        assert np.all(np.isfinite(dj.sample(dj.solvers.ddim(), pp, ts, jax.random.key(0), x_T, cond=labels)[0]))
    a = dj.guidance.classifier_free(den, 2.0, NULL, rescale=0.5, interval=(0.1, 1.0))
    assert a == dj.guidance.classifier_free(den, 2.0, NULL, rescale=0.5, interval=(0.1, 1.0))
    assert a != dj.guidance.classifier_free(den, 2.0, NULL, rescale=0.6, interval=(0.1, 1.0))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(rescale=1.5), "rescale"),
        (dict(rescale=-0.1), "rescale"),
        (dict(rescale=float("nan")), "rescale"),
        (dict(rescale=0.5, rescale_view="score"), "rescale_view"),
        (dict(interval=(-0.1, 1.0)), "sigma_lo"),
        (dict(interval=(2.0, 1.0)), "sigma_lo"),
        (dict(interval=(1.0, 1.0)), "sigma_hi"),
        (dict(interval=(0.1, float("nan"))), "sigma_hi"),
        (dict(interval=(0.1,)), "interval"),
        (dict(interval=0.5), "interval"),
    ],
)
def test_bad_variant_arguments_name_the_field(kwargs, field):
    den, _ = conditional_denoiser(dj.schedules.vp_linear())
    with pytest.raises(ValueError, match=field):
        dj.guidance.classifier_free(den, 2.0, NULL, **kwargs)


def test_bad_cfg_pp_arguments():
    den, _ = conditional_denoiser(dj.schedules.vp_linear())
    for lmbda in (-0.1, 1.2, float("inf")):
        with pytest.raises(ValueError, match="lmbda"):
            cfg.classifier_free_pp(den, lmbda, NULL)
    with pytest.raises(ValueError, match="null_cond"):
        cfg.classifier_free_pp(den, 0.5, None)
    with pytest.raises(ValueError, match="condition"):
        cfg.classifier_free_pp(den, 0.5, NULL)(jnp.zeros((2, 3)), 0.5)


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_guided_sampling_follows_the_guided_probability_flow_ode(w):
    """With Gaussian classes and a Gaussian null model every guided x0-hat is affine in x, so the guided
    PF-ODE dx/dsigma = (x - x0_w(x, sigma)) / sigma (EDM's schedule: x is the VE variable) is linear and
    its flow map x_T -> x_0 = F x_T + g carries any Gaussian's mean and covariance exactly. F and g come
    from diffrax (Tsit5, rtol = atol = 1e-10) on the points 0, e_1, e_2, e_3; Heun's second-order sampler
    on 200 Karras steps (to sigma = 0.002) must reproduce them, i.e. the guided samples' mean F m_T + g and covariance
    F P_T F^T, to its discretisation error: at most 1.3e-5 (w = 1) and 7.3e-5 (w = 3) on these points,
    falling 4x when the steps double (second order), so 3e-4 here, and 3e-3 of the covariance's largest
    entry (P_T ~ 80^2 magnifies F's error)."""
    import diffrax

    sched = dj.schedules.edm()
    guided = dj.guidance.classifier_free(gaussian_classes(sched), w, NULL)
    ts = dj.timesteps.karras(sched, 201)[:-1]  # 200 steps from sigma = 80 to 0.002 (not to 0, where 1/sigma blows up)
    points = jnp.concatenate([jnp.zeros((1, 3)), jnp.eye(3)]) * 5.0
    labels = jnp.zeros(4, jnp.int32)
    x, _ = dj.sample(dj.solvers.heun(), guided, ts, jax.random.key(0), points, cond=labels)

    def field(sigma, x, args):
        return (x - guided(x[None], sigma, labels[:1]).x0[0]) / sigma

    def flow(x_T):
        term = diffrax.ODETerm(field)
        controller = diffrax.PIDController(rtol=1e-10, atol=1e-10)
        return diffrax.diffeqsolve(term, diffrax.Tsit5(), ts[0], ts[-1], None, x_T, stepsize_controller=controller,
                                   max_steps=100_000).ys[-1]  # fmt: skip

    exact = jnp.stack([flow(p) for p in points])
    g_exact, f_exact = exact[0], (exact[1:] - exact[0]).T / 5.0
    g_sampled, f_sampled = x[0], (x[1:] - x[0]).T / 5.0
    np.testing.assert_allclose(g_sampled, g_exact, atol=3e-4)
    np.testing.assert_allclose(f_sampled, f_exact, atol=3e-4)
    p_T = np.diag([0.7, 1.3, 0.9]) + sched.sigma(ts[0]) ** 2 * np.eye(3)  # any Gaussian start, here N(0, P_T)
    cov_sampled, cov_exact = f_sampled @ p_T @ f_sampled.T, f_exact @ p_T @ f_exact.T
    assert np.abs(cov_sampled - cov_exact).max() < 3e-3 * np.abs(cov_exact).max()  # measured 1.0e-3 at w = 3
