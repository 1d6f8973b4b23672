"""PF-ODE log-likelihoods against the exact Gaussian-mixture oracle, and the bits/dim offset.

Exact divergence: log p_{t0}(x) from the ODE must equal `GaussianMixture.log_prob(x, schedule, t0)`
for VP, VE, EDM and rectified-flow schedules and for networks predicting x0, eps, v and the velocity
(the oracle's x0 converted by `diffjax.predictions`). With Dopri8 at rtol = atol = 1e-9 in float64
and the mixture's exact log p_{t1} as the prior, the only error is the solver's (measured ~1e-10);
the tolerance 1e-4 leaves room for a slower-converging schedule without hiding a wrong sign or a
missing Jacobian term (those are O(1)). Hutchinson: one solve carries K = 32 per-probe integrals;
their mean must lie within 3 of its reported standard errors of the exact value. Gradients through
the solve (adjoint=True) must be the exact score grad log p_{t0}(x) (1e-4: solver error at 1e-9
tolerance, differentiated). Bits/dim: a uniform density on [-1, 1]^D is exactly 8 bits/dim at 256 bins.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
import diffjax.likelihood as lik
from diffjax import predictions
from diffjax.arrays import broadcast_to_x
from helpers import mixture

GMM = mixture(2)
X = GMM.sample(jax.random.key(0), 4)
VP = dj.schedules.vp_linear()
TIGHT = dict(rtol=1e-9, atol=1e-9, method="dopri8")


def _prior(schedule, t1, mixture=GMM):
    return jax.tree_util.Partial(_mixture_log_prob, mixture, schedule, jnp.asarray(t1))


def _mixture_log_prob(mixture, schedule, t, x):
    return mixture.log_prob(x, schedule, t)


def _converted_apply(prediction, params, x, t, cond):
    """The oracle's x0, converted to what `Denoiser(prediction=prediction)` expects."""
    del cond
    mixture, schedule = params
    x0 = mixture.x0_mean(x, schedule, t)
    alpha, sigma, dalpha, dsigma = (broadcast_to_x(f(t), x) for f in (schedule.alpha, schedule.sigma,
                                                                       schedule.dalpha, schedule.dsigma))  # fmt: skip
    eps = predictions.eps_from_x0(x=x, x0=x0, alpha=alpha, sigma=sigma)
    if prediction == "eps":
        return eps
    if prediction == "v":
        return predictions.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    return predictions.velocity_from_x0_eps(x0=x0, eps=eps, dalpha=dalpha, dsigma=dsigma)


def _identity(t):
    return t


def _network(prediction, schedule=VP, mixture=GMM):
    apply = functools.partial(_converted_apply, prediction)
    return dj.Denoiser(apply, (mixture, schedule), schedule=schedule, prediction=prediction, time_fn=_identity)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "rectified_flow"])
def test_exact_divergence_matches_the_mixture_log_density_on_every_schedule_kind(name):
    schedule = getattr(dj.schedules, name)()
    t0, t1 = lik.default_times(schedule)
    res = lik.log_likelihood(GMM.denoiser(schedule), X, prior=_prior(schedule, t1), **TIGHT)
    np.testing.assert_allclose(res.log_p, GMM.log_prob(X, schedule, t0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(res.log_p, res.prior_log_p + res.delta_log_p, atol=1e-12)
    assert np.all(res.std_err == 0) and res.num_accepted_steps > 0 and res.nfe > res.num_accepted_steps
    if name == "rectified_flow":  # sigma(t_min) = 0: nudged to the noise level sigma/alpha = 1e-3
        np.testing.assert_allclose(schedule.sigma(t0) / schedule.alpha(t0), lik.pf_ode.T0_VE_SIGMA, rtol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "v", "velocity"])
def test_exact_divergence_matches_the_mixture_for_every_network_parameterisation(prediction):
    t0, t1 = lik.default_times(VP)
    res = lik.log_likelihood(_network(prediction), X, prior=_prior(VP, t1), **TIGHT)
    np.testing.assert_allclose(res.log_p, GMM.log_prob(X, VP, t0), atol=1e-4, rtol=0)


def test_the_default_prior_is_exact_for_unit_gaussian_data():
    # N(0, I) data: p_t = N(0, (alpha^2 + sigma^2) I), which is what gaussian_prior builds
    unit = dj.data.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    sched = dj.schedules.edm()
    res = lik.log_likelihood(unit.denoiser(sched), X, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.log_p, unit.log_prob(X, sched, sched.t_min), atol=1e-5)


def test_hutchinson_mean_lies_within_three_standard_errors_of_the_exact_value():
    t0, t1 = lik.default_times(VP)
    exact = GMM.log_prob(X, VP, t0)
    res = lik.log_likelihood(GMM.denoiser(VP), X, key=jax.random.key(3), divergence="hutchinson", num_probes=32,
                             prior=_prior(VP, t1), rtol=1e-6, atol=1e-6)  # fmt: skip
    assert np.all(res.std_err > 0)
    assert np.all(np.abs(res.log_p - exact) < 3 * res.std_err), (res.log_p - exact, res.std_err)
    hpp = lik.log_likelihood(GMM.denoiser(VP), X, key=jax.random.key(3), divergence="hutch++", num_probes=3,
                             prior=_prior(VP, t1), rtol=1e-7, atol=1e-7)  # fmt: skip
    # d = 2, m = 3: the QR sketch spans one direction and one projected probe covers the other: unbiased, finite
    assert np.all(np.isfinite(hpp.log_p)) and np.all(np.abs(hpp.log_p - exact) < 2.0)


def test_gradients_through_the_solve_are_the_exact_score():
    t0, t1 = lik.default_times(VP)
    prior = _prior(VP, t1)

    def total(x):
        return lik.log_likelihood(GMM.denoiser(VP), x, prior=prior, adjoint=True, **TIGHT).log_p.sum()

    grad = jax.grad(total)(X[:2])
    np.testing.assert_allclose(grad, GMM.score(X[:2], VP, t0), atol=1e-4, rtol=0)


def test_new_weights_do_not_recompile():
    t1 = lik.default_times(VP)[1]
    lik.log_likelihood(GMM.denoiser(VP), X, prior=_prior(VP, t1))
    size = lik.pf_ode._solve._cache_size()
    other = dj.data.GaussianMixture(GMM.weights[::-1], GMM.means + 0.5, GMM.scales * 1.5)
    res = lik.log_likelihood(other.denoiser(VP), X, prior=_prior(VP, t1, other))
    assert lik.pf_ode._solve._cache_size() == size and np.all(np.isfinite(res.log_p))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(rtol=0.0), "rtol"),
        (dict(atol=float("nan")), "atol"),
        (dict(num_probes=0, divergence="hutchinson", key=jax.random.key(0)), "num_probes"),
        (dict(num_probes=2, divergence="hutch++", key=jax.random.key(0)), "num_probes"),
        (dict(method="rk4"), "method"),
        (dict(divergence="skilling"), "divergence"),
        (dict(probe="uniform", divergence="hutchinson", key=jax.random.key(0)), "probe"),
        (dict(divergence="hutchinson"), "key"),
        (dict(divergence="hutchinson", key=0), "key"),
        (dict(t0=0.5, t1=0.2), "t0"),
        (dict(prior=3.0), "prior"),
        (dict(adjoint="yes"), "adjoint"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lik.log_likelihood(GMM.denoiser(VP), X, **kwargs)


def test_non_finite_data_is_refused():
    with pytest.raises(ValueError, match="x must be finite"):
        lik.log_likelihood(GMM.denoiser(VP), X.at[0, 0].set(jnp.nan))


def test_a_uniform_density_on_the_cube_is_eight_bits_per_dim_after_dequantisation():
    d = 6
    grid = jnp.arange(256) / 255 * 2 - 1  # 8-bit data in [-1, 1]
    x = jax.random.choice(jax.random.key(0), grid, (100, d))
    x_deq = lik.dequantize(jax.random.key(1), x)
    assert jnp.all((x_deq >= -1) & (x_deq < 1))
    k = jnp.round((x + 1) / 2 * 255)  # each dequantised point lies in its own bin of width 2/256
    np.testing.assert_array_equal(jnp.floor((x_deq + 1) * 128), k)
    log_p = jnp.full((100,), -d * np.log(2.0))  # the uniform density on [-1, 1]^D
    np.testing.assert_allclose(lik.bits_per_dim(log_p, (d,)), 8.0, rtol=1e-14)
    np.testing.assert_allclose(lik.bits_per_dim(log_p, d, num_bins=None), 1.0, rtol=1e-14)
    # data in [0, 1]: the uniform density is 1, and the offset alone gives 8 bits/dim
    np.testing.assert_allclose(lik.bits_per_dim(jnp.zeros(3), (2, 3), data_range=(0.0, 1.0)), 8.0, rtol=1e-14)
    assert lik.bits_offset() == 7.0 and lik.bits_offset(256, (0.0, 1.0)) == 8.0


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: lik.dequantize(0, X), "key"),
        (lambda: lik.dequantize(jax.random.key(0), X, num_bins=1), "num_bins"),
        (lambda: lik.bits_per_dim(jnp.zeros(2), 0), "event_shape_or_dim"),
        (lambda: lik.bits_per_dim(jnp.zeros(2), 3, data_range=(1.0, -1.0)), "data_range"),
        (lambda: lik.probes(jax.random.key(0), 0, X), "num"),
        (lambda: lik.probes(jax.random.key(0), 2, X, "cauchy"), "dist"),
    ],
)
def test_bad_bits_and_probe_inputs_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
