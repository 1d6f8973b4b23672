"""Classifier-free guidance against a class-conditional Gaussian mixture, where every score is exact.

Classes are the mixture's components: p_t(x | c) is component c diffused, p_t(x) the whole mixture
(the null label). Guidance with scale w must give the score of p_t(x | c)^w p_t(x)^(1 - w), i.e.
w grad log p_t(x | c) + (1 - w) grad log p_t(x), computed here by autodiff of the exact log-densities.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0]])
SCALES = np.array([[0.4, 0.8, 0.3], [0.6, 0.2, 0.9]])
NULL = 2


def conditional_denoiser(schedule, wrap=lambda f: f):
    """A Denoiser whose cond picks component c (0, 1) or the whole mixture (the null label 2)."""
    parts = [dj.data.GaussianMixture([1.0], MEANS[k : k + 1], SCALES[k : k + 1]) for k in range(2)]
    parts.append(dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES))

    def apply_fn(params, x, t, cond):
        x0 = jnp.stack([g.x0_mean(x, schedule, t) for g in params])  # (3, B, d)
        return jnp.take_along_axis(x0, cond[None, :, None], axis=0)[0]

    return dj.Denoiser(wrap(apply_fn), parts, schedule=schedule, prediction="x0", time_fn=lambda t: t), parts


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guided_score_is_the_score_of_the_tilted_density(scale):
    sched = dj.schedules.vp_linear()
    den, parts = conditional_denoiser(sched)
    guided = dj.guidance.classifier_free(den, scale, NULL)
    x = jax.random.normal(jax.random.key(0), (5, 3))
    t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9])
    labels = jnp.array([0, 1, 0, 1, 1])

    def log_tilted(xi, ti, c):
        log_c = jnp.where(
            c == 0, parts[0].log_prob(xi[None], sched, ti[None]), parts[1].log_prob(xi[None], sched, ti[None])
        )
        return (scale * log_c + (1 - scale) * parts[2].log_prob(xi[None], sched, ti[None]))[0]

    exact = jax.vmap(jax.grad(log_tilted))(x, t, labels)
    got = guided(x, t, labels)
    # float64 closed forms on both sides: only rounding separates them
    np.testing.assert_allclose(got.score, exact, rtol=1e-10, atol=1e-12)
    # the other views are the same guided model: eps = -sigma score, x0 = (x - sigma eps) / alpha
    sigma, alpha = sched.sigma(t)[:, None], sched.alpha(t)[:, None]
    np.testing.assert_allclose(got.eps, -sigma * exact, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.x0, (x + sigma**2 * exact) / alpha, rtol=1e-10, atol=1e-12)


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    sched = dj.schedules.vp_cosine()
    den, _ = conditional_denoiser(sched)
    x = jax.random.normal(jax.random.key(1), (4, 3))
    labels = jnp.array([1, 0, 0, 1])
    conditional = dj.guidance.classifier_free(den, 1.0, NULL)(x, 0.4, labels)
    unconditional = dj.guidance.classifier_free(den, 0.0, NULL)(x, 0.4, labels)
    np.testing.assert_allclose(conditional.x0, den(x, 0.4, labels).x0, rtol=1e-13)
    np.testing.assert_allclose(unconditional.x0, den(x, 0.4, jnp.full(4, NULL)).x0, rtol=1e-13)


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
