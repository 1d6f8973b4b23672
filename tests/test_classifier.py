"""The project's classifier: its interface and its loss written out by hand (that it learns digits is
shown end to end in test_training.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.solvers.base import noise_like


def test_outputs_and_time_conditioning():
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    clean = dj.models.Classifier(num_classes=10, feature_dim=16)
    variables = clean.init(jax.random.key(1), x)
    out = clean.apply(variables, x)
    assert out.logits.shape == (3, 10) and out.features.shape == (3, 16)
    assert out.logits.dtype == jnp.float32 and np.all(np.isfinite(out.logits))
    noisy = dj.models.Classifier(num_classes=10, time_conditioned=True)
    variables = noisy.init(jax.random.key(1), x, jnp.zeros(3))
    # zero-initialised residual convs hide the time at init; any trained (here: perturbed) weights show it
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables = tree.unflatten([a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])
    a, b = (noisy.apply(variables, x, jnp.full(3, t)).logits for t in (0.1, 0.9))
    assert not np.allclose(a, b)  # the time input reaches the logits
    with pytest.raises(ValueError, match="t is required"):
        noisy.apply(variables, x)
    with pytest.raises(ValueError, match="t must be None"):
        clean.apply(clean.init(jax.random.key(1), x), x, jnp.zeros(3))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=10, channel_mults=()), "channel_mults"),
        (dict(num_classes=10, channels=30, num_groups=8), "num_groups"),
        (dict(num_classes=10, dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        dj.models.Classifier(**kwargs)


def linear_apply(params, x, time):
    """A classifier whose logits are a linear map of the pixels (plus the time, when given)."""
    logits = x.reshape(len(x), -1) @ params
    if time is not None:
        logits = logits + time[:, None]
    return dj.models.ClassifierOutput(logits, logits)


def test_clean_and_noisy_losses_are_the_cross_entropy_written_out():
    x0 = jax.random.normal(jax.random.key(0), (6, 4, 4, 1), jnp.float64)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    params = jax.random.normal(jax.random.key(1), (16, 3), jnp.float64)
    key = jax.random.key(2)

    def cross_entropy(x, time):
        logits = linear_apply(params, x, time).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    loss, aux = dj.training.classifier_loss()(params, linear_apply, x0, key, labels)
    np.testing.assert_allclose(loss, cross_entropy(x0, None), rtol=1e-13)
    assert aux.t is None and aux.accuracy == np.mean(np.argmax(linear_apply(params, x0, None).logits, -1) == labels)

    sched = dj.schedules.vp_cosine()
    loss, aux = dj.training.classifier_loss(sched)(params, linear_apply, x0, key, labels)
    key_t, key_eps = jax.random.split(key)
    t = dj.training.time_sampling.uniform()(key_t, 6, sched)
    x_t = sched.alpha(t)[:, None, None, None] * x0 + sched.sigma(t)[:, None, None, None] * noise_like(key_eps, x0)
    np.testing.assert_allclose(aux.t, t, rtol=0)
    np.testing.assert_allclose(loss, cross_entropy(x_t, sched.model_time(t)), rtol=1e-13)


def test_loss_needs_labels_and_a_schedule_for_times():
    x0 = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="labels"):
        dj.training.classifier_loss()(jnp.zeros((16, 3)), linear_apply, x0, jax.random.key(0), None)
    with pytest.raises(ValueError, match="time_sampler"):
        dj.training.classifier_loss(None, time_sampler="uniform")
