"""Losses and time samplers against exact Gaussian expectations and the papers' weight formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj
from diffjax import predictions as P
from diffjax.training import losses, time_sampling
from helpers import gaussian, mixture, prediction_views

WEIGHTINGS = losses.WEIGHTINGS
SD = 0.5  # sigma_data
_VP = dj.schedules.vp_cosine()


def _schedules():
    """(name, schedule, a fixed interior time, the inverse of model_time)."""
    disc = dj.schedules.discrete()
    return [
        ("vp_cosine", dj.schedules.vp_cosine(), 0.37, lambda time: time),
        ("rectified_flow", dj.schedules.rectified_flow(), 0.43, lambda time: time),
        ("edm", dj.schedules.edm(), 1.7, lambda time: time),
        ("discrete", disc, 0.4123, lambda time: (time + 1.0) / disc.num_train_timesteps),
    ]


def _coefficients(sched, t):
    return dict(alpha=sched.alpha(t), sigma=sched.sigma(t), dalpha=sched.dalpha(t), dsigma=sched.dsigma(t))


def _view(prediction, x0, eps, alpha, sigma, dalpha, dsigma):
    """What a network of kind `prediction` outputs for (x0, eps), from predictions.py."""
    return prediction_views(x0, eps, alpha=alpha, sigma=sigma, dalpha=dalpha, dsigma=dsigma, sigma_data=SD)[1][
        prediction
    ]


def _affine_network(sched, prediction, mu, from_model_time):
    """D_theta(x_t) = mu + theta (x_t - alpha mu), output as `prediction`, undoing Denoiser's inputs."""

    def apply_fn(theta, x_in, time, cond):
        if prediction == "edm":
            s = jnp.exp(4.0 * time)  # c_noise = log(sigma/alpha) / 4
            t = sched.t_from_ve_sigma(s)
            x = x_in * (jnp.sqrt(s**2 + SD**2) * sched.alpha(t))[:, None]
        else:
            t, x = from_model_time(time), x_in
        c = {k: v[:, None] for k, v in _coefficients(sched, t).items()}
        x0 = mu + theta * (x - c["alpha"] * mu)
        return _view(prediction, x0, (x - c["alpha"] * x0) / c["sigma"], **c)

    return apply_fn


def _quadrature_batch(mu, s):
    """(x0, eps) at the 4 points (z1, z2) = (+-sqrt2, 0), (0, +-sqrt2): their mean of any quadratic in
    (z1, z2) is its exact expectation under N(0, I), so the mean loss is the exact expected loss."""
    z = np.sqrt(2.0) * np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    ones = jnp.ones_like(mu)
    return mu + s * z[:, :1] * ones, z[:, 1:] * ones


def _paper_x0_weight(weighting, sched, t, prediction, dim, width):
    """lambda(t) on |x0_hat - x0|^2 from the papers; "uniform" takes k^2 by autodiff of the view."""
    c = _coefficients(sched, t)
    snr = (c["alpha"] / c["sigma"]) ** 2
    s = c["sigma"] / c["alpha"]
    if weighting == "uniform":
        x = c["alpha"] * 0.3 + c["sigma"] * 0.8  # any point; the view is affine in x0 at fixed x
        view = lambda x0: _view(prediction, x0, (x - c["alpha"] * x0) / c["sigma"], **c)
        return jax.grad(view)(0.3) ** 2
    return {
        "snr": snr,
        "min_snr": jnp.minimum(snr, 5.0),
        "edm": (s**2 + SD**2) / (s * SD) ** 2,
        "vdm": 0.5 * width * -jax.grad(sched.logsnr)(t) * snr * dim,  # summed over dimensions
    }[weighting]


def _expected_loss(loss, apply_fn, x0, t, eps):
    return lambda theta: jnp.mean(loss.per_example(theta, apply_fn, x0, t, eps))


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
@pytest.mark.parametrize("name, sched, t, from_model_time", _schedules(), ids=lambda v: v if isinstance(v, str) else "")
def test_affine_model_is_optimal_at_the_posterior_mean(name, sched, t, from_model_time, prediction):
    # T8 with data N(mu, s^2) per dimension: E[x0 | x_t] = mu + theta* (x_t - alpha mu) with
    # theta* = alpha s^2 / (alpha^2 s^2 + sigma^2), and E|x0 - D_theta|^2 per dimension is
    # (theta alpha - 1)^2 s^2 + theta^2 sigma^2, whose minimum is the posterior variance
    # s^2 sigma^2 / (alpha^2 s^2 + sigma^2). Every loss is lambda(t) times it.
    mu, s, dim = jnp.array([0.7, -1.3, 0.2]), 0.6, 3
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    theta_star = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    x0, eps = _quadrature_batch(mu, s)
    apply_fn = _affine_network(sched, prediction, mu, from_model_time)
    loss = {w: losses.diffusion_loss(sched, prediction=prediction, weighting=w, sigma_data=SD) for w in WEIGHTINGS}

    def values_and_grads(thetas):  # the exact expected loss and its gradient, for every weighting
        expected = {w: _expected_loss(f, apply_fn, x0, t, eps) for w, f in loss.items()}
        return {w: jax.vmap(jax.value_and_grad(f))(thetas) for w, f in expected.items()}

    thetas = jnp.array([theta_star, 1.3 * theta_star])
    x0_mse = (thetas * alpha - 1) ** 2 * s**2 + thetas**2 * sigma**2
    for weighting, (values, grads) in values_and_grads(thetas).items():
        t_min, t_max = loss[weighting].time_sampler.bounds(sched)
        lam = _paper_x0_weight(weighting, sched, t, prediction, dim, t_max - t_min)
        np.testing.assert_allclose(values, lam * x0_mse, rtol=1e-10, err_msg=weighting)
        assert abs(grads[0]) <= 1e-9 * abs(grads[1]), (weighting, grads)


def test_minimum_eps_loss_is_the_posterior_variance_of_the_noise():
    # E|eps - E[eps | x_t]|^2 / d = Var(eps | x_t) = 1 - sigma^2 / (alpha^2 s^2 + sigma^2).
    sched, t, mu, s = _VP, 0.3, jnp.array([0.4, -0.9, 1.1]), 1.7
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    x0, eps = _quadrature_batch(mu, s)
    theta_star = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    apply_fn = _affine_network(sched, "eps", mu, lambda time: time)
    got = jnp.mean(losses.diffusion_loss(sched).per_example(theta_star, apply_fn, x0, t, eps))
    np.testing.assert_allclose(got, 1 - sigma**2 / (alpha**2 * s**2 + sigma**2), rtol=1e-12)


def _weights(sched, t, target, weighting, **kwargs):
    return losses.diffusion_loss(sched, prediction=target, weighting=weighting, sigma_data=SD, **kwargs).weights(t)


def test_weights_match_the_papers():
    vp, t = _VP, jnp.linspace(0.01, 0.99, 50)
    snr = (vp.alpha(t) / vp.sigma(t)) ** 2
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-12)
    # Min-SNR-gamma (Hang et al. 2023) on the eps, VP v and x0 errors.
    close(_weights(vp, t, "eps", "min_snr").target, jnp.minimum(snr, 5.0) / snr)
    close(_weights(vp, t, "v", "min_snr").target, jnp.minimum(snr, 5.0) / (snr + 1))
    close(_weights(vp, t, "x0", "min_snr").target, jnp.minimum(snr, 5.0))
    close(_weights(vp, t, "eps", "snr").target, 1.0)  # DDPM's L_simple
    close(_weights(vp, t, "x0", "snr").target, snr)
    # EDM: lambda = (sigma^2 + sd^2)/(sigma sd)^2 on |D - x0|^2, i.e. unit weight on F.
    edm, sig = dj.schedules.edm(), jnp.geomspace(0.003, 70.0, 50)
    close(_weights(edm, sig, "x0", "edm").target, (sig**2 + SD**2) / (sig * SD) ** 2)
    close(_weights(edm, sig, "edm", "edm").target, 1.0)
    # k-diffusion's "snr" on the F-target: sd^2 / (sigma^2 + sd^2).
    close(_weights(edm, sig, "edm", "snr").target, SD**2 / (sig**2 + SD**2))
    # VDM on eps: (t_max - t_min)/2 (-dlogsnr/dsigma) = (t_max - t_min) / sigma for logsnr = -2 log sigma.
    close(_weights(edm, sig, "eps", "vdm").target, (80.0 - 0.002) / sig)
    # Rectified flow: the velocity's k^2 is 1/t^2, so SNR-weighting puts (1 - t)^2 on it.
    rf = dj.schedules.rectified_flow()
    close(_weights(rf, t, "velocity", "uniform").x0, 1 / t**2)
    close(_weights(rf, t, "velocity", "snr").target, (1 - t) ** 2)
    close(_weights(vp, t, "score", "uniform").x0, vp.alpha(t) ** 2 / vp.sigma(t) ** 4)
    # A callable weighting is lambda(t) itself (here Kingma & Gao 2023's sigmoid weighting, bias 2).
    sigmoid = lambda sched, t: jax.nn.sigmoid(sched.logsnr(t) - 2.0) * (sched.alpha(t) / sched.sigma(t)) ** 2
    close(_weights(vp, t, "v", sigmoid).x0, sigmoid(vp, t))
    close(_weights(vp, t, "eps", sigmoid).target, jax.nn.sigmoid(vp.logsnr(t) - 2.0))


@pytest.mark.parametrize("target", P.PREDICTIONS)
def test_every_weighting_is_one_weight_on_the_x0_error(target):
    # w_target * k^2 = lambda, with k = d target / d x0 at fixed x_t by autodiff, for every weighting.
    sched, t = dj.schedules.vp_linear(), jnp.linspace(0.02, 0.98, 7)
    c = _coefficients(sched, t)
    x = c["alpha"] * 0.3 + c["sigma"] * 0.8
    view = lambda x0: _view(target, x0, (x - c["alpha"] * x0) / c["sigma"], **c)
    k2 = jax.jvp(view, (jnp.full_like(t, 0.3),), (jnp.ones_like(t),))[1] ** 2  # elementwise in x0
    for weighting in WEIGHTINGS:
        w = _weights(sched, t, target, weighting)
        np.testing.assert_allclose(w.target * k2, w.x0, rtol=1e-10, err_msg=weighting)
        lam_eps = _weights(sched, t, "eps", weighting).x0  # the same objective whatever the target
        np.testing.assert_allclose(w.x0, lam_eps if weighting != "uniform" else k2, rtol=1e-12)


def test_min_snr_is_uniform_on_one_side_of_gamma():
    sched, t = _VP, jnp.linspace(0.01, 0.99, 50)
    snr = np.asarray((sched.alpha(t) / sched.sigma(t)) ** 2)
    low = snr <= 5.0
    assert 0 < low.sum() < low.size
    eps_w = np.asarray(_weights(sched, t, "eps", "min_snr").target)
    np.testing.assert_array_equal(eps_w[low], 1.0)  # eps: uniform where SNR <= gamma
    np.testing.assert_allclose(eps_w[~low], 5.0 / snr[~low], rtol=1e-14)
    x0_w = np.asarray(_weights(sched, t, "x0", "min_snr").target)
    np.testing.assert_array_equal(x0_w[~low], 5.0)  # x0: uniform (times gamma) where SNR >= gamma
    np.testing.assert_allclose(x0_w[low], snr[low], rtol=1e-14)  # and eps-uniform below


def _oracle(sched):
    """The exact mixture denoiser as an x0-predicting apply_fn (model_time is t for continuous schedules)."""
    return lambda gmm, x, time, cond: gmm.x0_mean(x, sched, time)


def test_vdm_loss_of_the_exact_denoiser_is_the_diffusion_bound():
    # For N(mu, s_d^2): E|eps - eps_hat|^2 = sum_d sigmoid(logsnr + 2 log s_d), so
    # int 1/2 (-dlogsnr/dt) E|eps - eps_hat|^2 dt = 1/2 sum_d [softplus(logsnr + 2 log s_d)] from t_max to t_min.
    # VDM's fixed schedule: logsnr = -gamma(t) with gamma linear from -13.3 to 5 (its CIFAR-10 config).
    gamma = lambda t: -13.3 + 18.3 * t
    alpha, sigma = lambda t: jnp.sqrt(jax.nn.sigmoid(-gamma(t))), lambda t: jnp.sqrt(jax.nn.sigmoid(gamma(t)))
    g, sched = gaussian(dim=4), dj.schedules.interpolant(alpha, sigma)
    loss = losses.diffusion_loss(sched, prediction="x0", weighting="vdm")
    log_s2 = 2 * jnp.log(g.scales[0])
    softplus = lambda lam: jnp.sum(jax.nn.softplus(lam + log_s2))
    exact = 0.5 * (softplus(sched.logsnr(sched.t_min)) - softplus(sched.logsnr(sched.t_max)))
    lam = jnp.linspace(sched.logsnr(sched.t_max), sched.logsnr(sched.t_min), 20001)
    quadrature = 0.5 * jnp.trapezoid(jnp.sum(jax.nn.sigmoid(lam[:, None] + log_s2), -1), lam)
    np.testing.assert_allclose(exact, quadrature, rtol=1e-6)
    x0 = g.sample(jax.random.key(0), 20000)
    _, aux = jax.jit(loss, static_argnums=1)(g, _oracle(sched), x0, jax.random.key(1))
    standard_error = jnp.std(aux.per_example) / np.sqrt(x0.shape[0])
    assert abs(jnp.mean(aux.per_example) - exact) < 4 * standard_error, (jnp.mean(aux.per_example), exact)


def test_jitted_loss_prefers_the_exact_mixture_denoiser():
    gmm, sched = mixture(), dj.schedules.vp_cosine()
    wrong = dj.data.GaussianMixture(gmm.weights, gmm.means + 0.5, gmm.scales)
    loss = losses.diffusion_loss(sched, prediction="x0", weighting="min_snr")
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    x0, key, oracle = gmm.sample(jax.random.key(0), 512), jax.random.key(1), _oracle(sched)
    ((_, exact), _), ((_, bad), grads) = value_and_grad(gmm, oracle, x0, key), value_and_grad(wrong, oracle, x0, key)
    gap = bad.per_example - exact.per_example  # same times and noise for both models
    assert jnp.mean(gap) > 4 * jnp.std(gap) / np.sqrt(gap.size), (jnp.mean(gap), jnp.std(gap))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(grads))
    assert float(jnp.sum(jnp.abs(grads.means))) > 0


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
@pytest.mark.parametrize("name, sched, t, _inverse", _schedules(), ids=lambda v: v if isinstance(v, str) else "")
def test_loss_agrees_with_the_denoiser_it_trains(name, sched, t, _inverse, prediction):
    # Any network: its loss is lambda |Denoiser(...).x0 - x0|^2, and a converted target is Denoiser's view.
    k = jax.random.split(jax.random.key(3), 4)
    w = jax.random.normal(k[0], (3, 3))
    apply_fn = lambda w, x, time, cond: jnp.tanh(x @ w) + 0.1 * time[:, None]
    x0, eps = jax.random.normal(k[1], (8, 3)), jax.random.normal(k[2], (8, 3))
    ts = t * jnp.exp(0.2 * jax.random.uniform(k[3], (8,)))
    den = dj.Denoiser(apply_fn, w, schedule=sched, prediction=prediction, sigma_data=SD)
    views = den(sched.alpha(ts)[:, None] * x0 + sched.sigma(ts)[:, None] * eps, ts)
    snr = (sched.alpha(ts) / sched.sigma(ts)) ** 2
    own = losses.diffusion_loss(sched, prediction=prediction, weighting="snr", sigma_data=SD)
    got = own.per_example(w, apply_fn, x0, ts, eps)
    np.testing.assert_allclose(got, snr * jnp.mean((views.x0 - x0) ** 2, -1), rtol=1e-9)
    as_eps = losses.diffusion_loss(sched, prediction=prediction, target="eps", sigma_data=SD)
    got = as_eps.per_example(w, apply_fn, x0, ts, eps)
    np.testing.assert_allclose(got, jnp.mean((views.eps - eps) ** 2, -1), rtol=1e-9)


def test_float32_data_reach_the_network_in_float32():
    def apply_fn(w, x, time, cond):
        assert x.dtype == w.dtype == jnp.float32, (x.dtype, w.dtype)
        return w * x

    loss = losses.diffusion_loss(dj.schedules.edm(), prediction="edm", weighting="edm")
    x0 = jnp.ones((4, 2), jnp.float32)
    grad = jax.jit(jax.grad(lambda w: loss(w, apply_fn, x0, jax.random.key(0))[0]))(jnp.float32(0.3))
    assert grad.dtype == jnp.float32 and bool(jnp.isfinite(grad))


def test_discrete_schedules_train_on_integer_steps():
    sched = dj.schedules.discrete(num_train_timesteps=10, beta_end=0.2)
    loss = losses.diffusion_loss(sched, prediction="x0")  # default sampler: discrete_uniform
    echo_time = lambda p, x, time, cond: jnp.broadcast_to(time[:, None], x.shape)
    _, aux = jax.jit(loss, static_argnums=1)(None, echo_time, jnp.zeros((64, 2)), jax.random.key(0))
    np.testing.assert_allclose(jnp.sqrt(aux.per_example), sched.num_train_timesteps * aux.t - 1, atol=1e-12)
    np.testing.assert_allclose(aux.t * 10, jnp.round(aux.t * 10), atol=1e-12)


# --- time samplers ---------------------------------------------------------------------------------


def _unit(sampler, sched, key, n):
    t_min, t_max = sampler.bounds(sched)
    t = sampler(key, n, sched)
    assert t.shape == (n,) and bool(jnp.all((t > t_min) & (t < t_max))), (t.min(), t.max())
    return np.asarray((t - t_min) / (t_max - t_min))


@pytest.mark.parametrize("t_range", [{}, {"t_min": 0.2, "t_max": 0.7}])
def test_uniform_times(t_range):
    u = _unit(time_sampling.uniform(**t_range), dj.schedules.vp_linear(), jax.random.key(0), 5000)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_antithetic_times_are_evenly_spaced_and_marginally_uniform():
    sampler, sched, n = time_sampling.antithetic(t_min=0.1, t_max=0.9), dj.schedules.rectified_flow(), 16
    u = np.sort(_unit(sampler, sched, jax.random.key(0), n))
    np.testing.assert_allclose(np.diff(np.append(u, u[0] + 1)), 1 / n, atol=1e-12)
    firsts = jax.vmap(lambda k: sampler(k, n, sched)[0])(jax.random.split(jax.random.key(1), 5000))
    assert stats.kstest((firsts - 0.1) / 0.8, "uniform").pvalue > 1e-3


def test_logit_normal_times():
    sampler = time_sampling.logit_normal(0.5, 0.8, t_min=0.1, t_max=0.9)
    u = _unit(sampler, dj.schedules.rectified_flow(), jax.random.key(0), 5000)
    assert stats.kstest(np.log(u / (1 - u)), "norm", args=(0.5, 0.8)).pvalue > 1e-3
    from_spec = losses.diffusion_loss(_VP, time_sampler="logit_normal(mean=0.5, std=0.8)").time_sampler
    key = jax.random.key(2)
    np.testing.assert_array_equal(from_spec(key, 9, _VP), time_sampling.logit_normal(0.5, 0.8)(key, 9, _VP))
    # Saturated sigmoids still stay off the end points, where rectified flow has SNR = 0 or infinity.
    for mean in (-1e3, 1e3):
        _unit(time_sampling.logit_normal(mean), dj.schedules.rectified_flow(), jax.random.key(0), 8)


def test_edm_lognormal_times():
    rf = dj.schedules.rectified_flow()  # ve_sigma = t / (1 - t) covers (0, inf): no clipping
    t = time_sampling.edm_lognormal()(jax.random.key(0), 5000, rf)
    assert stats.kstest(np.log(rf.ve_sigma(t)), "norm", args=(-1.2, 1.2)).pvalue > 1e-3
    vp, n = dj.schedules.vp_linear(), 20000  # levels below ve_sigma(t_min) are clipped onto t_min
    t = time_sampling.edm_lognormal()(jax.random.key(1), n, vp)
    assert bool(jnp.all((t >= vp.t_min) & (t <= vp.t_max)))
    p = stats.norm.cdf((np.log(vp.ve_sigma(vp.t_min)) + 1.2) / 1.2)
    assert abs(np.mean(t == vp.t_min) - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_discrete_uniform_times():
    sched = dj.schedules.discrete(num_train_timesteps=10, beta_end=0.2)
    t = time_sampling.discrete_uniform()(jax.random.key(0), 20000, sched)
    steps = np.asarray(sched.model_time(t))
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-12)
    counts = np.bincount(np.round(steps).astype(int), minlength=10)
    assert counts.size == 10 and stats.chisquare(counts).pvalue > 1e-3


# --- errors ----------------------------------------------------------------------------------------

_KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: time_sampling.uniform(t_min=0.5, t_max=0.2), "t_min"),
        (lambda: time_sampling.antithetic(t_max=float("nan")), "t_max"),
        (lambda: time_sampling.logit_normal(std=0.0), "std"),
        (lambda: time_sampling.logit_normal(mean="0"), "mean"),
        (lambda: time_sampling.edm_lognormal(p_std=-1.0), "p_std"),
        (lambda: time_sampling.uniform(t_min=2.0)(_KEY, 4, _VP), "t_min"),
        (lambda: time_sampling.uniform()(_KEY, 0, _VP), "n"),
        (lambda: time_sampling.uniform()(_KEY, 4, "vp"), "schedule"),
        (lambda: losses.diffusion_loss("vp"), "schedule"),
        (lambda: losses.diffusion_loss(_VP, prediction="noise"), "prediction"),
        (lambda: losses.diffusion_loss(_VP, target="noise"), "target"),
        (lambda: losses.diffusion_loss(_VP, weighting="p2"), "weighting"),
        (lambda: losses.diffusion_loss(_VP, time_sampler="beta"), "time_sampler"),
        (lambda: losses.diffusion_loss(_VP, time_sampler=3), "time_sampler"),
        (lambda: losses.diffusion_loss(_VP, weighting="vdm", time_sampler="logit_normal"), "time_sampler"),
        (lambda: losses.diffusion_loss(_VP, time_sampler="discrete_uniform"), "schedule"),
        (lambda: losses.diffusion_loss(_VP, time_fn="t"), "time_fn"),
        (lambda: losses.diffusion_loss(_VP, sigma_data=0.0), "sigma_data"),
        (lambda: losses.diffusion_loss(_VP, min_snr_gamma=-5.0), "min_snr_gamma"),
        (lambda: losses.diffusion_loss(_VP)(None, lambda *a: a[1], jnp.ones((2, 3)), 0), "key"),
        (lambda: losses.diffusion_loss(_VP)(None, lambda p, x, *_: x[:, 0], jnp.ones((2, 3)), _KEY), "apply_fn"),
    ],
)
def test_bad_options_name_the_argument(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        build()
