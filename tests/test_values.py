"""Rewards, verifiers and twists are values: equal builds are equal, and a jitted function taking
one as an argument compiles once for all parameter values of the same shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.steering import rewards, twists, verifiers
from helpers import counting_jit

X = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
RTOL = 1e-6  # the classifier computes in float32: jit and eager round differently


def classifier(seed=1, time_conditioned=False):
    module = dj.models.Classifier(num_classes=3, channels=8, channel_mults=(1,), num_groups=4, feature_dim=8,
                                  time_conditioned=time_conditioned)  # fmt: skip
    args = (X, jnp.zeros(len(X))) if time_conditioned else (X,)
    params = module.init(jax.random.key(0), *args)
    # zero-initialised residual convs: perturb every weight so that new parameters change the outputs
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return module, tree.unflatten([a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def assert_same_program(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert hash(a) == hash(b)


def test_classifier_reward_is_a_value_whose_parameters_are_traced():
    module, params = classifier(1)
    _, new_params = classifier(2)
    reward = rewards.classifier_reward(module, params, target=2, scale=2.0)
    expected = jax.nn.log_softmax(2.0 * module.apply(params, X).logits, axis=-1)[:, 2]
    np.testing.assert_allclose(reward(X, None), expected, rtol=RTOL)
    assert reward == rewards.classifier_reward(module, params, target=2, scale=2.0)
    assert reward == rewards.classifier_reward(module, jax.tree.map(jnp.copy, params), target=2, scale=2.0)
    assert reward == rewards.class_log_prob(rewards.classifier_logits(module, params), target=2, scale=2.0)
    other = rewards.classifier_reward(module, new_params, target=2, scale=2.0)
    assert other != reward  # other values,
    assert_same_program(other, reward)  # one program
    assert jax.tree.structure(rewards.classifier_reward(module, params, target=1)) != jax.tree.structure(reward)

    score, traces = counting_jit(lambda r, x: r(x, None))
    np.testing.assert_allclose(score(reward, X), reward(X, None), rtol=RTOL)
    np.testing.assert_allclose(score(other, X), other(X, None), rtol=RTOL)
    assert not np.allclose(other(X, None), reward(X, None))
    assert len(traces) == 1
    # the logits value alone, and labels from the condition
    logits = rewards.classifier_logits(module, params)
    assert logits(X.astype(jnp.float32)).dtype == jnp.float32 and logits(X).dtype == X.dtype
    labels = jnp.array([0, 1, 2, 0])
    by_label = rewards.classifier_reward(module, params)(X, labels)
    np.testing.assert_allclose(by_label, jax.nn.log_softmax(logits(X), -1)[jnp.arange(4), labels], rtol=RTOL)


def test_a_noisy_classifiers_logits_see_the_schedules_model_time():
    module, params = classifier(3, time_conditioned=True)
    sched = dj.schedules.discrete(num_train_timesteps=100)  # model_time(t) = 100 t - 1, not t
    logits = rewards.classifier_logits(module, params, schedule=sched)
    expected = module.apply(params, X, jnp.broadcast_to(sched.model_time(jnp.asarray(0.3)), (4,))).logits
    np.testing.assert_allclose(logits(X, 0.3), expected, rtol=RTOL)
    twist = twists.classifier_twist(logits, noisy=True)
    y = jnp.array([0, 1, 2, 1])
    np.testing.assert_allclose(twist(X, None, 0.3, y), jax.nn.log_softmax(expected, -1)[jnp.arange(4), y], rtol=RTOL)
    with pytest.raises(ValueError, match="schedule"):
        rewards.classifier_logits(module, params)
    with pytest.raises(ValueError, match="time_conditioned"):
        rewards.classifier_reward(module, params, target=0)
    with pytest.raises(ValueError, match="module"):
        rewards.classifier_logits(lambda x: x, params)


def test_feature_similarity_over_classifier_features_is_a_value():
    module, params = classifier(1)
    _, new_params = classifier(2)
    target = np.linspace(-1.0, 1.0, 8)
    verifier = verifiers.feature_similarity(rewards.classifier_features(module, params), target=target)
    f = np.asarray(module.apply(params, X).features)
    expected = f @ target / np.linalg.norm(f, axis=-1) / np.linalg.norm(target)
    np.testing.assert_allclose(verifier(X), expected, rtol=RTOL)
    assert verifier == verifiers.feature_similarity(rewards.classifier_features(module, params), target=list(target))
    assert verifier != verifiers.feature_similarity(rewards.classifier_features(module, params), target=target + 1)
    other = verifiers.feature_similarity(rewards.classifier_features(module, new_params), target=target)
    assert_same_program(other, verifier)
    score, traces = counting_jit(lambda v, x: v(x, None))
    np.testing.assert_allclose(score(verifier, X), verifier(X), rtol=RTOL)
    np.testing.assert_allclose(score(other, X), other(X), rtol=RTOL)
    assert len(traces) == 1


def test_ensembles_and_constants_are_values():
    reference = jax.random.normal(jax.random.key(4), (50, 2))
    build = lambda ref, mode="rank": verifiers.ensemble([rewards.linear([1.0, 0.0]), rewards.linear([0.0, 1.0])],  # noqa: E731
                                                        ref, mode=mode)  # fmt: skip
    ranked = build(reference)
    assert ranked == build(reference) and ranked != build(reference + 1.0)
    assert_same_program(ranked, build(reference + 1.0))
    assert jax.tree.structure(ranked) != jax.tree.structure(build(reference, "zscore"))
    score, traces = counting_jit(lambda v, x: v(x, None))
    x = jnp.array([[0.0, 0.0], [3.0, 3.0]])
    for ref in (reference, reference + 1.0):
        np.testing.assert_allclose(score(build(ref), x), build(ref)(x), rtol=1e-12)
    assert len(traces) == 1
    assert verifiers.constant(1.0) == verifiers.constant(1.0) != verifiers.constant(2.0)
    assert_same_program(verifiers.constant(1.0), verifiers.constant(2.0))


def test_reward_twists_take_lambda_as_a_leaf():
    module, params = classifier(1)
    _, new_params = classifier(2)
    reward = rewards.classifier_reward(module, params, target=0)
    twist = twists.reward_twist(reward, 1.5)
    assert twist == twists.reward_twist(rewards.classifier_reward(module, params, target=0), 1.5)
    assert twist != twists.reward_twist(reward, 2.0)
    apply, traces = counting_jit(lambda h, x: h(x, x, 0.5, None))
    for lmbda, p in [(1.5, params), (2.0, params), (2.0, new_params)]:
        h = twists.reward_twist(rewards.classifier_reward(module, p, target=0), lmbda)
        assert_same_program(h, twist)
        np.testing.assert_allclose(apply(h, X), lmbda * rewards.classifier_reward(module, p, target=0)(X), rtol=RTOL)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="lmbda"):
        twists.reward_twist(reward, float("nan"))
    with pytest.raises(ValueError, match="reward"):
        twists.reward_twist(None, 1.0)


def test_inpainting_and_classifier_twists_are_values():
    sched = dj.schedules.vp_linear()
    twist = twists.inpainting_twist(sched, np.array([1.0, 0.0]), sigma_y=0.1)
    assert twist == twists.inpainting_twist(sched, [1, 0], sigma_y=0.1)
    assert twist != twists.inpainting_twist(sched, [0, 1], sigma_y=0.1)
    assert jax.tree.structure(twist) != jax.tree.structure(twists.inpainting_twist(sched, [1, 0], sigma_y=0.2))
    apply, traces = counting_jit(lambda h, x0, y: h(None, x0, 0.3, y))
    x0, y = jnp.array([[0.1, 5.0], [0.9, -3.0]]), jnp.array([[0.5, 0.0], [0.5, 0.0]])
    for mask in ([1, 0], [0, 1], [1, 1]):
        h = twists.inpainting_twist(sched, mask, sigma_y=0.1)
        np.testing.assert_allclose(apply(h, x0, y), h(None, x0, 0.3, y), rtol=1e-12)
    assert len(traces) == 1
    logits = lambda x: x @ jnp.array([[1.0, -1.0], [0.5, 0.2]])  # noqa: E731
    assert twists.classifier_twist(logits, scale=2.0) == twists.classifier_twist(logits, scale=2.0)
    assert twists.classifier_twist(logits) != twists.classifier_twist(lambda x: logits(x))
    with pytest.raises(ValueError, match="noisy"):
        twists.classifier_twist(logits, noisy="yes")


def test_options_are_static_and_equal_builds_hash_equal():
    builds = (
        lambda: rewards.colour_fraction("red", width=0.5),
        lambda: rewards.linear([1.0, 2.0]),
        lambda: rewards.quadratic([0.0, 1.0], 2.0),
        lambda: rewards.chunked(rewards.linear([1.0]), 4),
    )
    for build in builds:
        assert build() == build() and hash(build()) == hash(build())
    assert rewards.colour_fraction("red") != rewards.colour_fraction("blue")
    assert jax.tree.leaves(rewards.colour_fraction("red")) == []
    assert rewards.linear([1.0, 2.0]) != rewards.linear([1.0, 3.0]) != rewards.linear([1.0, 3.0, 0.0])
    assert {rewards.colour_fraction("red"): 1}[rewards.colour_fraction("red")] == 1
    fn = lambda x, cond: x[:, 0]  # noqa: E731
    assert rewards.chunked(fn, 2) == rewards.chunked(fn, 2) != rewards.chunked(fn, 4)
    assert dj.steering.chunked(fn, 2) == rewards.chunked(fn, 2)
    x = jax.random.normal(jax.random.key(5), (8, 3))
    whole = rewards.quadratic([0.0, 1.0, 2.0], 0.5)
    np.testing.assert_allclose(rewards.chunked(whole, 2)(x), whole(x), rtol=1e-12)
    with pytest.raises(ValueError, match="chunk_size"):
        rewards.chunked(whole, 0)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        rewards.chunked(whole, 3)(x)


def test_the_registry_builds_config_rewards():
    module, params = classifier(1)
    spec = dj.specs.parse("config.reward", "classifier(target=1)", rewards.REGISTRY)
    assert spec(module, params) == rewards.classifier_reward(module, params, target=1)
    assert dj.specs.parse("config.reward", "linear(direction=(1.0, 0.0))", rewards.REGISTRY)() == rewards.linear([1, 0])
    assert dj.specs.parse("config.reward", "colour(colour='red')", rewards.REGISTRY)() == rewards.colour_fraction("red")
    quad = dj.specs.parse("config.reward", "quadratic(center=(1.0, 0.0), precision=2.0)", rewards.REGISTRY)()
    assert quad == rewards.quadratic([1.0, 0.0], 2.0)
    with pytest.raises(ValueError, match="config.reward"):
        dj.specs.parse("config.reward", "tilt(a=1)", rewards.REGISTRY)
