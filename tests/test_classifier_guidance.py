"""Classifier guidance against exact oracles, and with a noise-aware classifier trained by diffjax.

Exact: the classes of a Gaussian mixture are its components, so the exact noisy classifier is
log p(c | x_t) = log w_c + log p_t(x | c) - log p_t(x) (its logits: log w_c + log p_t(x | c)), and
classifier guidance with scale w must equal classifier-free guidance with the same w, whose score is
that of p_t(x | c)^w p_t(x)^(1 - w).

Learned: a small time-conditioned MLP classifier trained on x_t by `training.classifier_loss(schedule)`
and `make_train_step` guides the exact unconditional denoiser of a 2-class mixture towards class 1,
raising the fraction of samples that land in that class from about one half.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax.guidance import classifier

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0]])
SCALES = np.array([[0.4, 0.8, 0.3], [0.6, 0.2, 0.9]])
NULL = 2
SCHED = dj.schedules.vp_linear()
MIXTURE = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES)
PARTS = [dj.data.GaussianMixture([1.0], MEANS[k : k + 1], SCALES[k : k + 1]) for k in range(2)] + [MIXTURE]
X = jax.random.normal(jax.random.key(0), (5, 3))
TIMES = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9])
LABELS = jnp.array([0, 1, 0, 1, 1])


def conditional_apply(params, x, t, cond):
    x0 = jnp.stack([g.x0_mean(x, SCHED, t) for g in params])  # (3, B, d)
    return jnp.take_along_axis(x0, cond[None, :, None], axis=0)[0]


def exact_logits(x, t):
    """log w_c + log p_t(x | c): log-softmax of these is the exact log p(c | x_t)."""
    return jnp.stack([jnp.log(w) + PARTS[k].log_prob(x, SCHED, t) for k, w in enumerate(WEIGHTS)], axis=-1)


CONDITIONAL = dj.Denoiser(conditional_apply, PARTS, schedule=SCHED, prediction="x0", time_fn=lambda t: t)
UNCONDITIONAL = MIXTURE.denoiser(SCHED)
evaluate = jax.jit(lambda den, x, t, cond: den(x, t, cond))


def assert_views_close(a, b, rtol=1e-10, atol=1e-12):
    for name, u, v in zip(a._fields, a, b):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("scale", [0.5, 1.0, 4.0])
def test_exact_classifier_guidance_is_classifier_free_guidance(scale):
    guided = classifier.classifier_guidance(UNCONDITIONAL, exact_logits, scale)
    cfg = dj.guidance.classifier_free(CONDITIONAL, scale, NULL)
    # both are float64 closed forms of the same score: agreement to rounding, in every view
    assert_views_close(evaluate(guided, X, TIMES, LABELS), evaluate(cfg, X, TIMES, LABELS))
    # a fixed target is the same as labels all equal to it
    target = classifier.classifier_guidance(UNCONDITIONAL, exact_logits, scale, target=1)
    assert_views_close(evaluate(target, X, TIMES, None), evaluate(cfg, X, TIMES, jnp.ones(5, jnp.int32)))


def test_labels_can_condition_the_denoiser_too():
    # score(x | c) + w grad log p(c | x) = (1 + w) score(x | c) - w score(x): CFG with scale 1 + w
    guided = classifier.classifier_guidance(CONDITIONAL, exact_logits, 2.0, condition_denoiser=True)
    cfg = dj.guidance.classifier_free(CONDITIONAL, 3.0, NULL)
    assert_views_close(evaluate(guided, X, TIMES, LABELS), evaluate(cfg, X, TIMES, LABELS))


def test_scale_zero_is_the_denoiser_and_the_views_are_consistent():
    guided = classifier.classifier_guidance(UNCONDITIONAL, exact_logits, 0.0)
    # scale 0 adds an exact zero to every view (compiled apart, XLA may still round the model differently)
    assert_views_close(evaluate(guided, X, TIMES, LABELS), evaluate(UNCONDITIONAL, X, TIMES, None), 1e-15, 0)
    got = evaluate(guided.replace(scale=jnp.asarray(3.0)), X, TIMES, LABELS)
    alpha, sigma = SCHED.alpha(TIMES)[:, None], SCHED.sigma(TIMES)[:, None]
    np.testing.assert_allclose(alpha * got.x0 + sigma * got.eps, X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.score, -got.eps / sigma, rtol=1e-12)
    np.testing.assert_allclose(got.v, alpha * got.eps - sigma * got.x0, rtol=1e-12, atol=1e-12)


@jax.custom_vjp
def not_differentiable(x):
    return x


def _refuse(x):
    raise AssertionError("the denoiser was differentiated")


not_differentiable.defvjp(_refuse, _refuse)


def test_only_the_classifier_is_differentiated_and_each_sample_is_alone():
    def apply(params, x, t, cond):
        del cond
        return not_differentiable(MIXTURE.x0_mean(x, SCHED, t))

    den = dj.Denoiser(apply, None, schedule=SCHED, prediction="x0", time_fn=lambda t: t)
    guided = classifier.classifier_guidance(den, exact_logits, 3.0)
    together = evaluate(guided, X, TIMES, LABELS)  # differentiating the denoiser would raise
    alone = evaluate(guided, X[:2], TIMES[:2], LABELS[:2])
    for name, a, b in zip(alone._fields, alone, together):
        np.testing.assert_allclose(a, b[:2], rtol=1e-13, atol=1e-15, err_msg=name)


# -- a learned noise-aware classifier ----------------------------------------------------------------

TWO = dj.data.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [[0.6, 0.6], [0.6, 0.6]])


class NoisyMLP(nn.Module):
    """(x_t, time) -> ClassifierOutput: a time-conditioned MLP classifier of 2-D points."""

    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, t[:, None], jnp.sin(3.0 * t)[:, None]], axis=-1)
        for _ in range(2):
            h = nn.silu(nn.Dense(32)(h))
        return dj.models.ClassifierOutput(nn.Dense(2)(h), h)


def two_class_data(seed, n):
    """n labels uniform on {0, 1} and x0 drawn from their components (NumPy: nothing to compile)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return np.asarray(TWO.means)[labels] + np.asarray(TWO.scales)[labels] * rng.normal(size=(n, 2)), labels


@jax.jit
def train_noisy_classifier(sched, x0, labels, test_x, test_labels):
    """Adam on `classifier_loss(sched)`, one step per batch of x0 (steps, B, 2), and the accuracy on
    clean held-out points (seen at t = 0.01)."""
    module = NoisyMLP()
    params = module.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1))
    optimizer = optax.adam(1e-2)
    step = dj.training.make_train_step(dj.training.classifier_loss(sched), lambda key: module.apply, optimizer, 0.0)
    state = dj.training.init_state(params, optimizer, jax.random.key(1))
    state, metrics = dj.training.scan_steps(step)(state, x0, labels)
    logits = module.apply(state.params, test_x, jnp.full(test_x.shape[:1], sched.model_time(0.01))).logits
    return state.params, metrics["loss"], jnp.mean(jnp.argmax(logits, -1) == test_labels)


def test_a_trained_noisy_classifier_guides_samples_to_its_class():
    sched = dj.schedules.vp_cosine()
    x0, labels = two_class_data(0, 300 * 256)  # 300 steps of 256
    test_x, test_labels = two_class_data(1, 1024)
    params, loss, accuracy = train_noisy_classifier(
        sched, x0.reshape(300, 256, 2), labels.reshape(300, 256), test_x, test_labels
    )
    # the Bayes accuracy of clean points is Phi(1 / 0.6) = 0.952
    assert np.isfinite(loss) and accuracy > 0.9, (loss, accuracy)
    ts = dj.timesteps.uniform(sched, 25)
    x_T = dj.prior_sample(jax.random.key(6), sched, ts, (1024, 2))
    run = lambda d: dj.sample(dj.solvers.ddim(), d, ts, jax.random.key(7), x_T)[0]
    hit = lambda x: float(jnp.mean(x[:, 0] > 0))  # class 1 (mean (1, 0)) is the right half-plane
    plain = hit(run(TWO.denoiser(sched)))
    # the same exact denoiser, counted: a new scale and new classifier weights reuse the compiled sampler
    oracle = lambda mixture, x, t, cond: mixture.x0_mean(x, sched, t)
    den = dj.Denoiser(chex.assert_max_traces(oracle, n=1), TWO, schedule=sched, prediction="x0", time_fn=lambda t: t)
    guided = {}
    for scale, weights in [(2.0, params), (1.0, jax.tree.map(lambda a: 0.5 * a, params))]:
        logits = dj.steering.rewards.classifier_logits(NoisyMLP(), weights, schedule=sched)
        guided[scale] = hit(run(classifier.classifier_guidance(den, logits, scale, target=1)))
    # unguided: one half (sd 0.016 over 1024 samples); guided at scale 2 almost all samples land in
    # class 1 (0.996 when written; 1.0 with the exact classifier log p_t(x | c), which reaches 0.96 at
    # scale 1, where the learned one, less sharp at high noise, reaches 0.81)
    assert abs(plain - 0.5) < 0.06, plain
    assert guided[2.0] > 0.9 and plain < guided[1.0] < guided[2.0], (plain, guided)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="denoiser"):
        classifier.classifier_guidance(lambda x, t: x, exact_logits, 1.0)
    with pytest.raises(ValueError, match="logits_fn"):
        classifier.classifier_guidance(UNCONDITIONAL, None, 1.0)
    for scale in (float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="scale"):
            classifier.classifier_guidance(UNCONDITIONAL, exact_logits, scale)
    with pytest.raises(ValueError, match="target"):
        classifier.classifier_guidance(UNCONDITIONAL, exact_logits, 1.0, target=-1)
    with pytest.raises(ValueError, match="condition_denoiser"):
        classifier.classifier_guidance(UNCONDITIONAL, exact_logits, 1.0, condition_denoiser=1)
    with pytest.raises(ValueError, match="labels"):
        classifier.classifier_guidance(UNCONDITIONAL, exact_logits, 1.0)(X, TIMES)
