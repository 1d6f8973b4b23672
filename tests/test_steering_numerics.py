"""Steering numerics (issue 19): log-weights in float32 or wider for half-precision particles, +-inf
and NaN rewards, one warning for degenerate populations, and `debug_nans` for `sample`/`fk_steer`.

Everything runs on the exact two-component Gaussian mixture of 2-D points (its exact reverse kernel
or DDPM as the proposal) with K = 8 particles and 4 steps, so the answers are exact by construction:
importance sampling's weights are softmax(lmbda r(x0)) of the reported final rewards, and after
FK's last resampling every carried log-weight is 0, so the final weights are the final correction's.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import diffjax as dj
from diffjax.arrays import Value
from diffjax.steering import resampling
from helpers import mixture

WEIGHTS = np.array([0.6, 0.4])
MEANS = np.array([[-1.5, 0.0], [1.0, 0.5]])
SCALES = np.array([[0.4, 0.5], [0.3, 0.6]])
A = np.array([1.0, 0.5])
B, K, STEPS = 4, 8, 4
HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


@struct.dataclass(eq=False)
class Spiked(Value):
    """Test-only reward: r = a.x, but `spike` (a leaf: +inf, -inf or NaN) where x_0 < `below`."""

    direction: jax.Array
    spike: jax.Array
    below: jax.Array

    def __call__(self, x, cond=None):
        del cond
        r = x.reshape(x.shape[0], -1) @ jnp.asarray(self.direction, x.dtype)
        return jnp.where(x[:, 0] < self.below, jnp.asarray(self.spike, r.dtype), r)


@struct.dataclass(eq=False)
class AllNaN(Value):
    """Test-only reward: NaN for every particle."""

    def __call__(self, x, cond=None):
        del cond
        return jnp.full(x.shape[:1], jnp.nan, x.dtype)


def parts(dtype=jnp.float64, b=B, k=K, seed=0):
    gmm, sched = dj.data.GaussianMixture(WEIGHTS, MEANS, SCALES), dj.schedules.vp_linear()
    ts = dj.timesteps.uniform(sched, STEPS, t_min=1e-3)
    x_T = gmm.sample(jax.random.key(seed), b * k, sched, ts[0]).reshape(b, k, 2).astype(dtype)
    return gmm, sched, ts, x_T


def assert_valid_weights(p, k=K):
    """Weights sum to 1 within 1e-6 (float32 rounding of K exps, ~K * 6e-8, is far below it) and the
    ESS of every step lies in [1, K] up to the same float32 rounding (K * 1e-6)."""
    w = np.exp(np.asarray(p.log_weights, np.float64))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=0, atol=1e-6)
    ess = np.asarray(p.ess, np.float64)
    assert np.all(ess >= 1 - k * 1e-6) and np.all(ess <= k * (1 + 1e-6)), ess


# -- 1. weights in float32 or wider whatever the particles' dtype -------------------------------------


@pytest.mark.parametrize("name", sorted(HALF))
def test_fk_and_importance_sampling_weights_are_float32_for_half_precision_particles(name):
    # lmbda = +-1e4 makes the log-weights ~1e4 apart, beyond half precision's range of exact
    # integers (bf16 spacing at 1e4 is 64); in float32 they normalise to 1 within rounding
    gmm, sched, ts, x_T = parts(HALF[name])
    reward = dj.steering.rewards.linear(A)
    for lmbda in (1e4, -1e4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no degenerate population: nothing to warn about
            fk = dj.steering.fk_steer(dj.solvers.ddpm(), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward,
                                      lmbda=lmbda)  # fmt: skip
            imp = dj.steering.importance_sample(dj.solvers.ddpm(), gmm.denoiser(sched), ts, jax.random.key(1), x_T,
                                                reward, lmbda=lmbda)  # fmt: skip
        for p in (fk, imp):
            assert p.x.dtype == HALF[name] and p.log_weights.dtype == jnp.float32 and p.ess.dtype == jnp.float32
            assert np.all(np.isfinite(np.asarray(p.x, np.float64)))
            assert_valid_weights(p)
            assert np.all(np.asarray(p.degenerate) == 0)
        # importance sampling's weights are exactly softmax(lmbda r) of the reported rewards: the
        # float64 softmax of the same float32 rewards agrees to float32 rounding (1e-6 absolute)
        r = np.asarray(imp.rewards, np.float64)
        exact = np.exp(lmbda * r - np.logaddexp.reduce(lmbda * r, axis=1, keepdims=True))
        np.testing.assert_allclose(np.exp(np.asarray(imp.log_weights, np.float64)), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(HALF))
def test_the_resampling_helpers_work_in_float32_on_half_precision_log_weights(name):
    # half-precision log-weights near 1e4: the helpers take them to float32 exactly (every bf16/fp16
    # value is a float32), so the result equals the float32 computation on the same values bit for
    # bit, and the float64 softmax of those values to float32 rounding (rtol 1e-5: a handful of
    # float32 ops of relative error 6e-8 each, on weights down to 1e-9)
    offsets = np.array([0.0, -3.0, -7.5, -1.0, -20.0, -0.5, -2.0, -4.0])
    scale = 1e4 if name == "bfloat16" else 6e4  # fp16's largest value is 65504
    half = jnp.asarray(scale + offsets * (64 if name == "bfloat16" else 32), HALF[name])
    values = np.asarray(half, np.float64)
    exact = np.exp(values - np.logaddexp.reduce(values))
    n = resampling.normalise(half)
    assert n.log_weights.dtype == jnp.float32 and not bool(n.degenerate)
    np.testing.assert_allclose(np.exp(np.asarray(n.log_weights, np.float64)), exact, rtol=1e-5, atol=1e-12)
    assert abs(np.exp(np.asarray(n.log_weights, np.float64)).sum() - 1) < 1e-6
    np.testing.assert_allclose(float(resampling.ess(half)), 1 / np.sum(exact**2), rtol=1e-5)
    as_float32 = half.astype(jnp.float32)
    for scheme, resample in resampling.RESAMPLERS.items():
        np.testing.assert_array_equal(resample(jax.random.key(2), half), resample(jax.random.key(2), as_float32),
                                      err_msg=scheme)  # fmt: skip
    out = resampling.maybe_resample(jax.random.key(3), half, True, None)
    assert out.log_weights.dtype == jnp.float32 and out.log_z_increment.dtype == jnp.float32
    np.testing.assert_allclose(float(out.log_z_increment), np.logaddexp.reduce(values) - np.log(K), rtol=1e-6)


# -- 4. TDS (and SMCDiff) with half-precision particles ---------------------------------------------------------------


DTYPES = {**HALF, "float32": jnp.float32}


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_tds_runs_with_half_precision_and_float32_particles(name):
    # the carry of TDS's scan used to mix the particles' dtype with the float64 kernels' log-ratios (a
    # TypeError for bf16, fp16, and float32 under x64); now log-twists, log-weights and log Z-hat are
    # float32 while the particles keep their dtype
    gmm, sched, ts, x_T = parts(DTYPES[name])
    twist = dj.steering.reward_twist(dj.steering.rewards.linear(A), lmbda=2.0)
    p = dj.steering.tds(gmm.denoiser(sched), ts, jax.random.key(1), x_T, twist)
    assert p.x.dtype == DTYPES[name] and p.log_weights.dtype == jnp.float32 and p.log_z.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(p.x, np.float64))) and np.all(np.isfinite(np.asarray(p.log_z)))
    assert_valid_weights(p)
    assert np.all(np.asarray(p.degenerate) == 0)


@pytest.mark.parametrize("name", ["bfloat16", "float32"])
def test_smcdiff_runs_with_bfloat16_and_float32_particles(name):
    # SMCDiff shares the resampling step: its log-weights are float32 for these particles too
    gmm, sched, ts, x_T = parts(DTYPES[name], b=2)
    y = jnp.asarray([[0.5, 0.0], [1.0, 0.0]], DTYPES[name])
    p = dj.steering.smcdiff(gmm.denoiser(sched), ts, jax.random.key(1), x_T, y, jnp.array([1.0, 0.0]))
    assert p.x.dtype == DTYPES[name] and p.log_weights.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(p.x, np.float64)))
    np.testing.assert_array_equal(
        np.asarray(p.x[:, :, 0], np.float64), np.repeat(np.asarray(y[:, :1], np.float64), K, 1)
    )
    assert_valid_weights(p)


# -- 2. +inf rewards take all the weight, -inf and NaN none ---------------------------------------------

# (spike, lmbda, what the spiked particles get): lmbda r = +inf takes all the weight, shared equally;
# lmbda r = -inf and NaN get weight 0
SPIKES = [(np.inf, 1.5, "all"), (-np.inf, -1.5, "all"), (-np.inf, 1.5, "none"), (np.inf, -1.5, "none"),
          (np.nan, 1.5, "none"), (np.nan, -1.5, "none")]  # fmt: skip


def spiked_runs(spike, lmbda):
    gmm, sched, ts, x_T = parts()
    reward = Spiked(jnp.asarray(A), jnp.asarray(spike), jnp.asarray(-1.5))  # about a third of the particles
    args = (gmm.exact_solver(sched), gmm.denoiser(sched), ts, jax.random.key(1), x_T, reward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no population is all spiked here: nothing is degenerate
        return {"importance": dj.steering.importance_sample(*args, lmbda=lmbda),
                "fk": dj.steering.fk_steer(*args, lmbda=lmbda)}  # fmt: skip


@pytest.mark.parametrize("spike,lmbda,share", SPIKES)
def test_infinite_rewards_take_all_the_weight_and_minus_inf_or_nan_none(spike, lmbda, share):
    # exact: the spiked particles of a population (m of them, read off the reported rewards) get
    # weight 1/m each when lmbda r = +inf, the others 0; when it is -inf (or r is NaN) the spiked
    # ones get 0 and the others softmax(lmbda r) over the finite rewards (float64: 1e-12). In FK the
    # last step is never resampled, so the carried log-weights are 0 and the final weights are the
    # final correction's alone: the same answer for the +inf case. The +inf populations are not
    # degenerate (that flag means every weight was 0).
    for method, p in spiked_runs(spike, lmbda).items():
        r, w = np.asarray(p.rewards), np.exp(np.asarray(p.log_weights))
        spiked = np.isinf(r) if not np.isnan(spike) else np.isneginf(r)  # NaN rewards are reported as -inf
        m = spiked.sum(1)
        assert np.all(m < K), (method, m)  # precondition: some particle of every population is finite
        if method == "importance":
            assert m.max() >= 2, m  # precondition: some population shares the weight
        assert np.all(np.isfinite(p.x)) and np.all(np.asarray(p.degenerate) == 0), method
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=0, atol=1e-12)
        for b in range(B):
            if share == "all" and m[b] > 0:
                expected = np.where(spiked[b], 1.0 / m[b], 0.0)
            else:
                if method == "fk":  # after resampling the weights are the final correction's, not a softmax
                    np.testing.assert_array_equal(w[b][spiked[b]], 0.0)
                    continue
                tilt = np.where(spiked[b], -np.inf, lmbda * r[b])
                expected = np.exp(tilt - np.logaddexp.reduce(tilt))
            np.testing.assert_allclose(w[b], expected, rtol=1e-12, atol=1e-15, err_msg=f"{method} {b}")
        if share == "all" and method == "fk":
            assert np.all(np.asarray(p.ess) >= 1) and np.all(np.asarray(p.ess) <= K)


def test_normalise_gives_plus_inf_log_weights_all_the_weight():
    # exact: two +inf particles share the weight 1/2 each; the ESS is 2; every resampler picks only
    # them; the population is not degenerate and its log-sum-exp is +inf
    log_w = jnp.array([0.0, jnp.inf, -jnp.inf, jnp.nan, jnp.inf, 5.0, -3.0, 1e4])
    n = resampling.normalise(log_w)
    np.testing.assert_array_equal(np.exp(np.asarray(n.log_weights)), [0, 0.5, 0, 0, 0.5, 0, 0, 0])
    assert not bool(n.degenerate) and float(n.log_total) == np.inf
    np.testing.assert_allclose(float(resampling.ess(log_w)), 2.0, rtol=1e-15)
    for scheme, resample in resampling.RESAMPLERS.items():
        assert set(np.asarray(resample(jax.random.key(0), log_w)).tolist()) <= {1, 4}, scheme


# -- 3. all-NaN rewards: finite samples, uniform weights, exactly one warning ---------------------------


@pytest.mark.parametrize("method", ["fk", "importance"])
def test_all_nan_rewards_give_uniform_weights_and_exactly_one_warning(method):
    # every reward NaN at every scheduled step and at the end: every population has weight 0 on every
    # particle, falls back to uniform weights (exactly 1/K) and is counted degenerate at each of those
    # steps (fk: 3 scheduled + the end = 4; importance sampling: the end only = 1); one RuntimeWarning
    # per call, however many steps degenerate
    gmm, sched, ts, x_T = parts()
    run = dj.steering.fk_steer if method == "fk" else dj.steering.importance_sample
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = run(dj.solvers.ddpm(), gmm.denoiser(sched), ts, jax.random.key(1), x_T, AllNaN(), lmbda=1.0)
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "uniform weights" in str(runtime[0].message), [str(w.message) for w in caught]
    assert runtime[0].filename == __file__  # attributed to the caller's line
    assert np.all(np.isfinite(p.x))
    np.testing.assert_allclose(np.exp(np.asarray(p.log_weights)), 1 / K, rtol=1e-15)
    np.testing.assert_array_equal(p.degenerate, STEPS if method == "fk" else 1)


def test_the_degenerate_flag_comes_out_of_the_compiled_program_without_host_callbacks():
    # the warning is raised on the host from a bool the compiled call returns: the program has no
    # callback primitive, and its outputs are (particles, flag, None) by default
    gmm, sched, ts, x_T = parts()
    kernel = dj.steering.fk.fk(dj.solvers.ddpm(), AllNaN(), lmbda=1.0, num_particles=K, num_steps=STEPS)
    args = (kernel, gmm.denoiser(sched), ts, jax.random.key(1), x_T.reshape(B * K, 2), None)
    text = str(jax.make_jaxpr(dj.steering.fk._fk_steer)(*args))
    assert "callback" not in text
    particles, flag, finite = dj.steering.fk._fk_steer(*args)
    assert flag.dtype == jnp.bool_ and flag.shape == () and bool(flag) and finite is None


# -- 5. debug_nans ----------------------------------------------------------------------------------------


def _nan_below(params, x, t, cond):
    """eps = 0 (x0 = x / alpha), NaN wherever the network's time is below params (a test-only network)."""
    del cond
    return jnp.where((t < params)[:, None], jnp.nan, 0.0 * x)


def nan_denoiser(sched, ts, first_bad=None):
    """A denoiser that is NaN at the grid's times from ts[first_bad] on: step first_bad is the first
    to evaluate it there, so x becomes non-finite at step first_bad (None: never NaN, the same
    program with other data)."""
    threshold = -1.0 if first_bad is None else 0.5 * (float(ts[first_bad - 1]) + float(ts[first_bad]))
    return dj.Denoiser(_nan_below, jnp.asarray(threshold), schedule=sched, prediction="eps")


def test_debug_nans_in_sample_names_the_first_non_finite_step_and_its_times():
    # exact: the denoiser is NaN from ts[2] on, DDIM calls it at the step's start time, so x is finite
    # after steps 0 and 1 and NaN from step 2; the message names step 2 and t = ts[2] -> ts[3]
    gmm, sched, ts, x_T = parts()
    x_T = x_T.reshape(B * K, 2)
    bad = nan_denoiser(sched, ts, 2)
    x, _ = dj.sample(dj.solvers.ddim(), bad, ts, jax.random.key(0), x_T)  # default: no check, NaN out
    assert np.all(np.isnan(x))
    message = f"sample: x became non-finite at step 2 (t = {float(ts[2]):.4g} -> {float(ts[3]):.4g})"
    with pytest.raises(FloatingPointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dj.sample(dj.solvers.ddim(), bad, ts, jax.random.key(0), x_T, debug_nans=True)
    # a finite run: no error, and the same bits as the default program (the switch only adds outputs)
    good = nan_denoiser(sched, ts)
    x_default, info = dj.sample(dj.solvers.ddim(), good, ts, jax.random.key(0), x_T)
    x_debug, info_debug = dj.sample(dj.solvers.ddim(), good, ts, jax.random.key(0), x_T, debug_nans=True)
    assert np.all(np.isfinite(x_debug))
    np.testing.assert_array_equal(x_debug, x_default)
    assert int(info_debug.nfe) == int(info.nfe) == STEPS


def test_debug_nans_in_fk_steer_names_the_first_non_finite_step():
    # the same NaN network from ts[3] on: every particle is NaN after step 3 (DDPM evaluates it at the
    # step's start); the error comes before any warning about the NaN rewards it causes
    gmm, sched, ts, x_T = parts()
    reward = dj.steering.rewards.linear(A)
    bad = nan_denoiser(sched, ts, 3)
    message = f"fk_steer: x became non-finite at step 3 (t = {float(ts[3]):.4g} -> {float(ts[4]):.4g})"
    with pytest.raises(FloatingPointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dj.steering.fk_steer(dj.solvers.ddpm(), bad, ts, jax.random.key(1), x_T, reward, lmbda=1.0, debug_nans=True)
    good = nan_denoiser(sched, ts)
    default = dj.steering.fk_steer(dj.solvers.ddpm(), good, ts, jax.random.key(1), x_T, reward, lmbda=1.0)
    debug = dj.steering.fk_steer(dj.solvers.ddpm(), good, ts, jax.random.key(1), x_T, reward, lmbda=1.0,
                                 debug_nans=True)  # fmt: skip
    assert np.all(np.isfinite(debug.x))
    for got, want in zip(jax.tree.leaves(debug), jax.tree.leaves(default)):
        np.testing.assert_array_equal(got, want)


def test_tds_warns_once_for_a_population_that_degenerates():
    """A twist that is NaN everywhere gives every particle weight 0 at every step: the populations fall
    back to uniform weights (finite samples), count the steps, and each call warns exactly once."""
    sched = dj.schedules.vp_cosine()
    den = mixture().denoiser(sched)
    ts = dj.timesteps.uniform(sched, 3)
    x_T = jax.random.normal(jax.random.key(0), (2, 3, 3))

    def nan_twist(x_t, x0, t, y):
        return jnp.full(x_t.shape[:1], jnp.nan)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        particles = dj.steering.tds(den, ts, jax.random.key(1), x_T, nan_twist)
    assert [w.category for w in caught] == [RuntimeWarning] and "tds:" in str(caught[0].message)
    assert np.all(np.isfinite(particles.x)) and np.all(np.asarray(particles.degenerate) > 0)
