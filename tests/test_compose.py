"""SuperDiff OR / AND (diffjax.compose.superdiff) on exact models (T-SD (b), (c)).

Models: p1 = N(mu1, 0.5^2 I), p2 = N(mu2, 1.5^2 I) in 2-D (one-component `GaussianMixture`s on
vp_linear, exact scores). Samples are classified by the sign of log p1(x) - log p2(x) (exact densities).

- OR, temperature 1: the samples must follow 1/2 p1 + 1/2 p2. The reference is 200 000 exact samples of
  that mixture at the grid's last time, classified the same way (its fraction 0.505 has SE 0.001).
  Asserted: the fraction of M = 512 samples within 5 sqrt(0.25 / M) = 0.11 of it, and per class the mean
  within 5 standard errors (s / sqrt(n_k)) and the variance within 5 sqrt(2 / (n_k - 1)) relative
  (normal-theory SE of a variance; the classes are not exactly Gaussian, so this is loose by design).
  With Euler-Maruyama (300 steps), DDPM (200) and DPM-Solver++(2M) (100, the ODE path with Hutchinson).
- OR with the oracle ell (kappa = softmax of the exact log p_m,t): its score is the exact mixture's score
  pointwise (float64 rounding, 1e-10), and its samples pass the same test.
- AND: final samples have |log p1(x) - log p2(x)| near 0 (the Apollonius circle). Measured median: 0.028
  (Euler, 200 steps), 0.055 (DPM-Solver++(2M), 100 steps); score averaging (kappa = 1/2): 3.25.
  Asserted: median < 0.2 for AND and > 2 for averaging (a gap of more than 10x).
  AND on an SDE path (DDPM, Euler-Maruyama) ends at a median |gap| of about 1.1 nat: its kappa depends on
  the step's noise and cancels the noise along s1 - s2, so the path's diffusion is no longer g and the
  Itô estimator is biased (the official code does the same); this is documented, not asserted.
- AND's requirement: for every solver AND accepts, one step with the kappa-mixed prediction equals the
  kappa-mix of the per-model steps with the same key (1e-12, after two warm-up steps so that multistep
  histories are non-trivial; kappa = (1.7, -0.7) outside [0, 1] on purpose); the others are refused.
- A new temperature or bias reuses the compiled sampler; bad inputs raise ValueError.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import diffjax as dj
from diffjax import compose
from diffjax.arrays import Value

SCHED = dj.schedules.vp_linear()
P1 = dj.data.GaussianMixture([1.0], [[2.0, 1.0]], [[0.5, 0.5]])
P2 = dj.data.GaussianMixture([1.0], [[-2.0, -1.0]], [[1.5, 1.5]])
MIXTURE = dj.data.GaussianMixture([0.5, 0.5], [[2.0, 1.0], [-2.0, -1.0]], [[0.5, 0.5], [1.5, 1.5]])
sd = importlib.import_module("diffjax.compose.superdiff")  # the module (compose.superdiff is the builder)
MODELS = compose.stack(P1.denoiser(SCHED), P2.denoiser(SCHED))
M = 512


def _gap(x):
    return P1.log_prob(x) - P2.log_prob(x)


def _draw(solver, denoiser, n, seed=0):
    ts = dj.timesteps.uniform(SCHED, n)
    x_T = dj.prior_sample(jax.random.key(seed), SCHED, ts, (M, 2))
    x, _ = dj.sample(solver, denoiser, ts, jax.random.key(seed + 1), x_T)
    return x, ts[-1]


@functools.cache
def _reference(t_end: float):
    return MIXTURE.sample(jax.random.key(7), 200_000, SCHED, t_end)


def _check_mixture(x, t_end):
    exact = _reference(float(t_end))
    first, first_exact = _gap(x) > 0, _gap(exact) > 0
    assert abs(float(first.mean()) - float(first_exact.mean())) < 5 * np.sqrt(0.25 / M)
    for mine, ref in ((first, first_exact), (~first, ~first_exact)):
        xs, rs = np.asarray(x[mine]), np.asarray(exact[ref])
        n = xs.shape[0]
        se = xs.std(0, ddof=1) / np.sqrt(n)
        assert np.all(np.abs(xs.mean(0) - rs.mean(0)) < 5 * se), (xs.mean(0), rs.mean(0), se)
        var, ref_var = xs.var(0, ddof=1), rs.var(0, ddof=1)
        assert np.all(np.abs(var / ref_var - 1) < 5 * np.sqrt(2 / (n - 1))), (var, ref_var)


@pytest.mark.parametrize(
    "inner,n",
    [(dj.solvers.euler_maruyama(), 300), (dj.solvers.ddpm(), 200), (dj.solvers.dpmpp_2m(), 100)],
    ids=["euler_maruyama", "ddpm", "dpmpp_2m"],
)
def test_or_samples_the_equal_weight_mixture(inner, n):
    x, t_end = _draw(compose.superdiff(inner, "or"), MODELS, n)
    _check_mixture(x, t_end)


@struct.dataclass(eq=False)
class OracleOr(Value):
    """OR with the exact ell: kappa = softmax(log p_m,t(x)) mixing the stack's predictions."""

    models: compose.Stack

    @property
    def schedule(self):
        return self.models.schedule

    def __call__(self, x, t, cond=None):
        ell = jnp.stack([P1.log_prob(x, SCHED, t), P2.log_prob(x, SCHED, t)], axis=-1)
        return compose.mix(self.models.predictions(x, t), jax.nn.softmax(ell, axis=-1), x.dtype)


def test_or_with_the_exact_log_densities_is_the_exact_mixture():
    oracle = OracleOr(MODELS)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)) * 2)
    for t in (0.01, 0.3, 0.9):
        np.testing.assert_allclose(oracle(x, t).score, MIXTURE.score(x, SCHED, t), rtol=1e-10, atol=1e-10)
    _check_mixture(*_draw(dj.solvers.euler_maruyama(), oracle, 300))


@pytest.mark.parametrize(
    "inner,n", [(dj.solvers.euler(), 200), (dj.solvers.dpmpp_2m(), 100)], ids=["euler", "dpmpp_2m"]
)
def test_and_lands_on_equal_densities_where_score_averaging_does_not(inner, n):
    x, _ = _draw(compose.superdiff(inner, "and"), MODELS, n)
    assert float(jnp.median(jnp.abs(_gap(x)))) < 0.2
    x_avg, _ = _draw(inner, compose.average(P1.denoiser(SCHED), P2.denoiser(SCHED)), n)
    assert float(jnp.median(jnp.abs(_gap(x_avg)))) > 2.0


AND_SOLVERS = [dj.solvers.ddim(), dj.solvers.ddim(eta=1.0), dj.solvers.ddpm(), dj.solvers.euler(),
               dj.solvers.euler_ancestral(), dj.solvers.euler_maruyama(), dj.solvers.dpmpp_2m_sde(),
               dj.solvers.dpmpp_2m(), dj.solvers.dpmpp_3m(), dj.solvers.deis(), dj.solvers.unipc()]  # fmt: skip


@pytest.mark.parametrize("solver", AND_SOLVERS, ids=repr)
def test_every_solver_and_accepts_steps_affinely_in_the_prediction(solver):
    compose.superdiff(solver, "and")  # accepted
    ts = dj.timesteps.uniform(SCHED, 6)
    x = dj.prior_sample(jax.random.key(0), SCHED, ts, (4, 2))
    state = solver.init(x, ts)
    for i in range(2):
        state, _ = solver.step(state, jax.random.key(i), ts[i], ts[i + 1], MODELS)
    t, key = ts[2], jax.random.key(9)
    preds = MODELS.predictions(state.x, t)
    kappa = jnp.array([1.7, -0.7])

    def step_with(pred):
        return solver.step(state, key, t, ts[3], sd._Frozen(SCHED, state.x, t, pred))[0].x

    mixed = step_with(compose.mix(preds, kappa))
    per_model = [step_with(jax.tree.map(lambda v, j=j: v[j], preds)) for j in range(2)]
    np.testing.assert_allclose(mixed, kappa[0] * per_model[0] + kappa[1] * per_model[1], rtol=1e-12, atol=1e-12)


REFUSED = [dj.solvers.heun(), dj.solvers.dpmpp_2s(), dj.solvers.dpm_solver(), dj.solvers.plms(), dj.solvers.pndm(),
           dj.solvers.predictor_corrector(), dj.solvers.deis(start="singlestep")]  # fmt: skip


@pytest.mark.parametrize("solver", REFUSED, ids=repr)
def test_and_refuses_solvers_that_evaluate_elsewhere(solver):
    with pytest.raises(ValueError, match="mode='and'"):
        compose.superdiff(solver, "and")
    if not isinstance(solver, type(dj.solvers.predictor_corrector())):  # its Langevin noise is not the SDE's
        compose.superdiff(solver, "or")  # OR takes every solver


def test_a_new_temperature_or_bias_reuses_the_compiled_sampler():
    from diffjax.sampling import _sample

    ts = dj.timesteps.uniform(SCHED, 5)
    x_T = jnp.zeros((3, 2))
    inner = dj.solvers.ddpm()
    dj.sample(compose.superdiff(inner, "or", temperature=1.0), MODELS, ts, jax.random.key(0), x_T)
    size = _sample._cache_size()
    for temperature, bias in ((2.0, 0.0), (0.5, 0.3)):
        dj.sample(
            compose.superdiff(inner, "or", temperature=temperature, bias=bias), MODELS, ts, jax.random.key(0), x_T
        )
    assert _sample._cache_size() == size
    assert compose.superdiff(inner, "or", temperature=2.0) == compose.superdiff(inner, "or", temperature=2.0)
    assert compose.superdiff(inner, "or", temperature=2.0) != compose.superdiff(inner, "or", temperature=3.0)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    inner = dj.solvers.ddpm()
    for kwargs, name in [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"bias": float("nan")}, "bias"),
        ({"bias": [0.0, 1.0, 2.0], "num_models": 2}, "bias"),
        ({"num_models": 1}, "num_models"),
        ({"num_probes": 0}, "num_probes"),
    ]:
        with pytest.raises(ValueError, match=name):
            compose.superdiff(inner, "or", **kwargs)
    with pytest.raises(ValueError, match="mode"):
        compose.superdiff(inner, "xor")
    with pytest.raises(ValueError, match="temperature"):
        compose.superdiff(inner, "and", temperature=2.0)
    with pytest.raises(ValueError, match="solver"):
        compose.superdiff("ddpm", "or")
    with pytest.raises(ValueError, match=r"denoisers\[1\]\.schedule"):
        compose.stack(P1.denoiser(SCHED), P2.denoiser(dj.schedules.ve()))
    with pytest.raises(ValueError, match="at least 2"):
        compose.stack(P1.denoiser(SCHED))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_and_weights_equalise_the_increments_and_sum_to_one(m):
    # kappa solves (A kappa + c)_i = (A kappa + c)_j for all i, j and sum kappa = 1: a linear system whose
    # solution is unique for a generic A (float64 rounding only: 1e-10)
    rng = np.random.default_rng(m)
    a, c = jnp.asarray(rng.normal(size=(5, m, m))), jnp.asarray(rng.normal(size=(5, m)))
    kappa = sd.and_weights(a, c)
    increments = jnp.einsum("bij,bj->bi", a, kappa) + c
    np.testing.assert_allclose(kappa.sum(-1), 1.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(increments - increments[:, :1], 0.0, rtol=0, atol=1e-10)


def test_and_of_three_models_keeps_their_log_densities_equal():
    # three exact Gaussians, Euler: equal starts and equalised increments keep the Itô estimates equal
    p3 = dj.data.GaussianMixture([1.0], [[0.0, 2.0]], [[1.0, 1.0]])
    models = compose.stack(P1.denoiser(SCHED), P2.denoiser(SCHED), p3.denoiser(SCHED))
    ts = dj.timesteps.uniform(SCHED, 50)
    x_T = dj.prior_sample(jax.random.key(0), SCHED, ts, (64, 2))
    solver = compose.superdiff(dj.solvers.euler(), "and", num_models=3)
    x, info = compose.sample_with_density(solver, models, ts, jax.random.key(1), x_T)
    assert np.all(np.isfinite(x)) and info.log_q.shape == (64, 3)
    np.testing.assert_allclose(info.log_q - info.log_q[:, :1], 0.0, rtol=0, atol=1e-8)
