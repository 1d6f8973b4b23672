"""Decentralized expert ensembles (`diffjax.compose.ensemble`) against the exact mixture they split.

Exact: p_0 = sum_j w_j N(m_j, diag s_j^2), four components split into two experts {0, 1} and {2, 3}
with shares W = (w_0 + w_1, w_2 + w_3). For every schedule the exact ensemble (the experts' exact
denoisers, mixed by the exact router gamma_k = W_k p_{k,t} / p_t) must be the full mixture's exact
denoiser in every view, pointwise: float64 closed forms that differ only in the order of sums, so the
tolerance is rounding, 1e-12 relative to the view's size. Hence a sampler run with the same keys from
the same start gives the same samples (1e-9: rounding amplified over 100 steps), and the samples'
partition fractions match W within 5 standard errors sqrt(W (1 - W) / N) (N = 2000; the modes are 10
standard deviations apart, so assigning a sample to its nearest mean errs with probability < 1e-20).
top_k = 1 is exactly the expert with the largest router weight.

Learned: a small time-conditioned classifier on 2-D points (defined here: diffjax has no 2-D
classifier), trained 400 steps by `make_train_step` with `classifier_loss(schedule)` on the partition
labels, must reach an accuracy on fresh (x_t, t ~ U[t_min, t_max]) within 0.03 of the exact
router's (the Bayes classifier's; measured: 0.901 learned, 0.902 Bayes, chance 0.6), and the
ensemble with it must sample the share W_1 = 0.4 within 0.05 (measured: 0.379; the exact ensemble
with the same keys gives 0.4005, so about 0.02 is the learned router's bias at intermediate t and
the rest Monte Carlo error, SE = 0.011 at N = 2000: the allowance is about 4.5 SE).

Configs: `configs/ensemble.py` builds for every argument (2-step runs of both experts and the router
through `experiments/train.py`, combined by `experiments/compose.py`, are in tests/test_training.py).
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax.compose.ensemble import (
    Ensemble,
    classifier_router,
    ensemble,
    exact_ensemble,
    exact_router,
    logits_router,
    partition_mixture,
)
from diffjax.models.classifier import ClassifierOutput
from diffjax.training import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANGLES = np.pi / 2 * np.arange(4)
MIXTURE = dj.data.GaussianMixture(
    [0.25, 0.35, 0.15, 0.25],
    3.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], -1),
    [[0.3, 0.2], [0.2, 0.3], [0.25, 0.25], [0.3, 0.15]],
)
GROUPS = ((0, 1), (2, 3))
SHARES = np.array([0.6, 0.4])
SCHED = dj.schedules.vp_cosine()
X = jax.random.normal(jax.random.key(0), (7, 2), jnp.float64) * 2.0


@jax.jit
def _call(den, x, t):
    return den(x, t)


@jax.jit
def _weights(den, x, t):
    return den.log_weights(x, t)


@jax.jit
def _experts(den, x, t):
    return den.expert_predictions(x, t)


def _partition_of(x):
    """The group of each sample's nearest component mean."""
    nearest = jnp.argmin(jnp.sum((x[:, None] - MIXTURE.means) ** 2, -1), -1)
    return np.isin(np.asarray(nearest), GROUPS[1]).astype(int)


@pytest.mark.parametrize("name", ["vp_cosine", "ve", "edm", "rectified_flow", "discrete_linear"])
def test_exact_experts_with_the_exact_router_are_the_mixtures_denoiser(name):
    sched = {n: s for n, s, _ in __import__("helpers").all_schedules()}[name]
    den, full = exact_ensemble(MIXTURE, GROUPS, sched), MIXTURE.denoiser(sched)
    times = [0.02, 0.3, 0.9, jnp.linspace(0.05, 0.95, 7)] if name != "edm" else [0.01, 1.0, 30.0]
    for t in times:
        got, want = _call(den, X, jnp.asarray(t)), _call(full, X, jnp.asarray(t))
        for view, a, b in zip(want._fields, got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * (1 + float(jnp.max(jnp.abs(b)))), err_msg=view)
        alpha, sigma = (dj.arrays.broadcast_to_x(f(jnp.asarray(t)), X) for f in (sched.alpha, sched.sigma))
        np.testing.assert_allclose(alpha * got.x0 + sigma * got.eps, X, atol=1e-10)


def test_the_exact_router_is_the_component_posterior_summed_over_each_group():
    den = exact_ensemble(MIXTURE, GROUPS, SCHED)
    for t in (0.1, 0.6):
        post = MIXTURE.posterior(X, SCHED, t)
        want = jnp.stack([post[:, list(g)].sum(-1) for g in GROUPS], -1)
        np.testing.assert_allclose(jnp.exp(_weights(den, X, jnp.asarray(t))), want, atol=1e-13)


N = 2000
TS = dj.timesteps.uniform(SCHED, 100)
X_T = dj.prior_sample(jax.random.key(1), SCHED, TS, (N, 2), dtype=jnp.float64)


@jax.jit
def _sample(den, key):
    return dj.sample(dj.solvers.ddpm(), den, TS, key, X_T)[0]


@pytest.fixture(scope="module")
def exact_samples():
    return _sample(exact_ensemble(MIXTURE, GROUPS, SCHED), jax.random.key(2))


def test_the_exact_ensemble_samples_as_the_full_mixture_with_the_same_keys(exact_samples):
    full = _sample(MIXTURE.denoiser(SCHED), jax.random.key(2))
    np.testing.assert_allclose(exact_samples, full, atol=1e-9)


def test_the_exact_ensemble_samples_the_partition_shares_within_5_se(exact_samples):
    fraction = _partition_of(exact_samples).mean()
    assert abs(fraction - SHARES[1]) < 5 * np.sqrt(SHARES[1] * SHARES[0] / N), fraction
    comps = np.bincount(np.argmin(np.sum((exact_samples[:, None] - MIXTURE.means) ** 2, -1), -1), minlength=4) / N
    w = np.asarray(MIXTURE.weights)
    assert np.all(np.abs(comps - w) < 5 * np.sqrt(w * (1 - w) / N)), comps


def test_other_solvers_and_fk_steering_use_the_ensemble_as_the_full_mixture():
    ts = dj.timesteps.logsnr_uniform(SCHED, 8)
    reward = lambda x, cond: -jnp.sum((x - jnp.array([3.0, 0.0])) ** 2, -1)

    @jax.jit
    def run(den):
        heun = dj.sample(dj.solvers.heun(), den, ts, jax.random.key(3), X_T[:16])[0]
        fk = dj.steering.fk_steer(dj.solvers.ddpm(), den, ts, jax.random.key(4), X_T[:12].reshape(3, 4, 2), reward,
                                  lmbda=2.0)  # fmt: skip
        return heun, fk.x, fk.log_weights

    for a, b in zip(run(exact_ensemble(MIXTURE, GROUPS, SCHED)), run(MIXTURE.denoiser(SCHED))):
        np.testing.assert_allclose(a, b, atol=1e-8)


def test_top_1_routing_is_the_expert_with_the_largest_weight():
    den = exact_ensemble(MIXTURE, GROUPS, SCHED, top_k=1)
    full = exact_ensemble(MIXTURE, GROUPS, SCHED)
    t = jnp.asarray(0.4)
    best = jnp.argmax(_weights(full, X, t), -1)
    got, experts = _call(den, X, t), _experts(full, X, t)
    for a, stacked in zip(got, experts):
        np.testing.assert_allclose(a, stacked[jnp.arange(len(X)), best], atol=1e-14)
    np.testing.assert_array_equal(jnp.exp(_weights(den, X, t)).max(-1), 1.0)


def test_router_weights_without_information_are_uniform_not_nan():
    nan_router = lambda x, t: jnp.full(x.shape[:1] + (2,), jnp.nan)
    parts, _ = partition_mixture(MIXTURE, GROUPS)
    den = ensemble([m.denoiser(SCHED) for m in parts], nan_router)
    out, experts = _call(den, X, jnp.asarray(0.5)), _experts(den, X, jnp.asarray(0.5))
    np.testing.assert_allclose(out.x0, experts.x0.mean(1), atol=1e-14)


def test_new_router_parameters_do_not_recompile():
    parts, w = partition_mixture(MIXTURE, GROUPS)
    traces = []

    @jax.jit
    def f(den, x):
        traces.append(1)
        return den(x, 0.5).x0

    f(exact_ensemble(MIXTURE, GROUPS, SCHED), X)
    f(ensemble([m.denoiser(SCHED) for m in parts], exact_router(parts, [0.3, 0.7], SCHED)), X)
    assert len(traces) == 1
    assert exact_ensemble(MIXTURE, GROUPS, SCHED) == exact_ensemble(MIXTURE, GROUPS, SCHED)
    assert isinstance(exact_ensemble(MIXTURE, GROUPS, SCHED), Ensemble)


# --- a learned router ------------------------------------------------------------------------------


class PointRouter(nn.Module):
    """A noise-conditional classifier of 2-D points: x and Fourier features of the time, 2 hidden layers."""

    num_classes: int = 2
    width: int = 64

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.asarray([1.0, 3.0, 9.0])
        t = jnp.broadcast_to(t, x.shape[:1])[:, None] * freqs
        h = jnp.concatenate([x, jnp.sin(t), jnp.cos(t)], -1).astype(jnp.float32)
        for _ in range(2):
            h = nn.silu(nn.Dense(self.width)(h))
        logits = nn.Dense(self.num_classes)(h)
        return ClassifierOutput(logits, h)


POINTS = 4000


@pytest.fixture(scope="module")
def learned_router():
    parts, _ = partition_mixture(MIXTURE, GROUPS)
    counts = np.round(SHARES * POINTS).astype(int)
    keys = jax.random.split(jax.random.key(5), 2)
    x0 = jnp.concatenate([p.sample(k, n) for p, k, n in zip(parts, keys, counts)]).astype(jnp.float32)
    labels = jnp.repeat(jnp.arange(2), counts)
    module = PointRouter()
    params = module.init(jax.random.key(6), x0[:2], jnp.zeros(2))
    optimizer = optax.adam(3e-3)
    train_step = dj.training.make_train_step(
        dj.training.classifier_loss(SCHED), lambda key: module.apply, optimizer, ema=0.0
    )

    @jax.jit
    def train(state):
        def body(state, i):
            idx = jax.random.randint(jax.random.fold_in(jax.random.key(7), i), (256,), 0, POINTS)
            return train_step(state, x0[idx], labels[idx])[0], None

        return jax.lax.scan(body, state, jnp.arange(400))[0]

    state = train(dj.training.init_state(params, optimizer, jax.random.key(8)))
    return module, state.params


def test_a_learned_router_is_nearly_as_accurate_as_the_exact_one(learned_router):
    module, params = learned_router
    parts, w = partition_mixture(MIXTURE, GROUPS)
    key_t, key_x = jax.random.split(jax.random.key(9))
    n = 4000
    t = jax.random.uniform(key_t, (n,), minval=SCHED.t_min, maxval=SCHED.t_max)
    labels = (jax.random.uniform(key_x, (n,)) < SHARES[1]).astype(int)
    keys = jax.random.split(key_x, 2)
    x_t = jnp.where(labels[:, None] == 1, parts[1].sample(keys[1], n, SCHED, t[:, None]),
                    parts[0].sample(keys[0], n, SCHED, t[:, None]))  # fmt: skip
    learned = jnp.argmax(classifier_router(module, params, SCHED)(x_t, t), -1)
    bayes = jnp.argmax(exact_router(parts, w, SCHED)(x_t, t), -1)
    acc_learned, acc_bayes = float(jnp.mean(learned == labels)), float(jnp.mean(bayes == labels))
    assert acc_learned > SHARES.max() + 0.2 and acc_learned > acc_bayes - 0.03, (acc_learned, acc_bayes)


def test_the_ensemble_with_a_learned_router_samples_the_partition_shares(learned_router):
    module, params = learned_router
    parts, _ = partition_mixture(MIXTURE, GROUPS)
    den = ensemble([m.denoiser(SCHED) for m in parts], classifier_router(module, params, SCHED))
    fraction = _partition_of(_sample(den, jax.random.key(2))).mean()
    assert abs(fraction - SHARES[1]) < 0.05, fraction


# --- bad inputs ------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_argument():
    parts, w = partition_mixture(MIXTURE, GROUPS)
    experts = [m.denoiser(SCHED) for m in parts]
    router = exact_router(parts, w, SCHED)
    cases = [
        (lambda: ensemble(experts[:1], router), "experts"),
        (lambda: ensemble([experts[0], parts[1].denoiser(dj.schedules.ve())], router), "experts[1].schedule"),
        (lambda: ensemble([experts[0], parts[1].denoiser(dj.schedules.vp_cosine(s=0.01))], router),
         "experts[1].schedule"),
        (lambda: ensemble([experts[0], "model"], router), "experts[1]"),
        (lambda: ensemble(experts, exact_router(parts, w, dj.schedules.ve())), "router.schedule"),
        (lambda: ensemble(experts + experts[:1], router), "router routes over 2 experts"),
        (lambda: ensemble(experts, 3.0), "router"),
        (lambda: ensemble(experts, router, top_k=3), "top_k"),
        (lambda: ensemble(experts, router, top_k=0), "top_k"),
        (lambda: exact_router(parts, [1.0], SCHED), "weights"),
        (lambda: exact_router(parts, [1.0, -1.0], SCHED), "weights"),
        (lambda: exact_router(parts, [1.0, np.nan], SCHED), "weights"),
        (lambda: exact_router(parts[:1], [1.0], SCHED), "mixtures"),
        (lambda: exact_router([parts[0], dj.data.GaussianMixture([1.0], [[0.0]], [[1.0]])], w, SCHED), "mixtures[1]"),
        (lambda: exact_router(parts, w, "vp"), "schedule"),
        (lambda: logits_router("logits"), "logits_fn"),
        (lambda: logits_router(lambda x, t: x, num_experts=1), "num_experts"),
        (lambda: classifier_router(PointRouter(), {"params": {}}, "vp"), "schedule"),
        (lambda: partition_mixture(MIXTURE, ((0, 1), (1, 2, 3))), "groups"),
        (lambda: partition_mixture(MIXTURE, ((0, 1, 2, 3),)), "groups"),
        (lambda: partition_mixture(MIXTURE, ((0, 1), (2,))), "groups"),
    ]  # fmt: skip
    for make, name in cases:
        with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
            make()


# --- configs and runs ------------------------------------------------------------------------------


def _config(arg):
    spec = __import__("importlib.util").util.spec_from_file_location("ensemble_config", f"{ROOT}/configs/ensemble.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_config_builds_with_its_partition():
    for arg, classes, num_classes in [("expert0", set(range(5)), None), ("expert1", set(range(5, 10)), None),
                                      ("router", {0, 1}, 2)]:  # fmt: skip
        data, training, module = build.build(_config(arg))
        assert data.num_classes == num_classes and set(np.unique(data.evaluation[1])) == classes, arg
        assert isinstance(training.schedule, dj.schedules.VPCosine)
    with pytest.raises(ValueError, match="argument"):
        _config("expert2")
