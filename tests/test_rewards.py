"""Reward builders against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import shapes
from diffjax.steering import rewards


def test_linear_and_quadratic_rewards_are_their_formulas():
    x = jax.random.normal(jax.random.key(0), (5, 2, 3), jnp.float64)
    a, c, q = np.arange(6.0).reshape(2, 3), np.full((2, 3), 0.5), np.linspace(0.0, 2.0, 6).reshape(2, 3)
    xs = np.asarray(x)
    np.testing.assert_allclose(rewards.linear(a)(x), (xs * a).sum((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(rewards.quadratic(c, q)(x), -0.5 * (q * (xs - c) ** 2).sum((1, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="precision"):
        rewards.quadratic(0.0, -1.0)


def test_class_log_prob_takes_labels_from_the_condition_or_a_target():
    w = jnp.array([[1.0, -1.0, 0.5], [0.2, 0.3, -2.0]])
    logits = lambda x: x @ w  # noqa: E731
    x, labels = jnp.array([[0.5, 1.0], [-1.0, 2.0]]), jnp.array([2, 0])
    log_p = jax.nn.log_softmax(2.0 * logits(x), axis=-1)
    np.testing.assert_allclose(rewards.class_log_prob(logits, scale=2.0)(x, labels), log_p[jnp.arange(2), labels])
    np.testing.assert_allclose(rewards.class_log_prob(logits, target=1, scale=2.0)(x, None), log_p[:, 1])
    with pytest.raises(ValueError, match="labels"):
        rewards.class_log_prob(logits)(x, None)


def test_colour_fraction_is_the_painted_fraction_of_a_shapes_image():
    # palette colours are >= 2 apart, so the soft count of a rendered image equals its hard count
    # to exp(-4 / (2 * 0.25^2)) = 1e-14 per pixel
    images, scenes = shapes.sample(jax.random.key(3), 8)
    reward = rewards.colour_fraction("red")
    red = shapes.PALETTE_NAMES.index("red")
    hard = np.all(np.asarray(images) == np.asarray(shapes.PALETTE[red], np.float32), axis=-1).mean((1, 2))
    np.testing.assert_allclose(reward(images), hard, atol=1e-6)
    assert np.any(hard > 0) and np.any(hard == 0)
    with pytest.raises(ValueError, match="colour"):
        rewards.colour_fraction("purple")
