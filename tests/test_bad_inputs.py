"""Inputs checked at the door (issue 19): bad input to the public API raises a ValueError naming the
argument, the value and what is allowed, before any sampler is traced or compiled.

Every case of `BEFORE_TRACING` runs with the samplers' compiled entry points replaced by a function
that fails the test (`no_sampler`), so a check that fires only while tracing would be caught. The
few checks that rely on static shapes (a network's output, a verifier's or reward's output) run in
`AT_TRACE_TIME`: they raise while tracing, before anything is compiled. The positive cases at the
end compile tiny programs.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import specs
from diffjax.steering import resampling, search
from diffjax.steering.fk import fk as fk_kernel

S, T = dj.schedules, dj.timesteps
SCHED = S.vp_linear()
GMM = dj.data.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]])
DEN = GMM.denoiser(SCHED)
TS = jnp.asarray([0.9, 0.5, 0.2, 0.01])  # 3 steps
KEY = jax.random.key(0)
X = jnp.zeros((2, 2))  # (B, *event)
XP = jnp.zeros((2, 3, 2))  # (B, K, *event)
SDE = dj.solvers.ddim(eta=1.0)
REWARD = dj.steering.rewards.linear([1.0, 0.0])
TWIST = dj.steering.reward_twist(REWARD, 1.0)
VERIFIER = dj.steering.verifiers.constant()
IDENTITY = search.identity_generator
NUM_CLASSES = 3
# a class-conditional network (never initialised: the checks fire before it is called)
CDEN = dj.Denoiser(dj.models.apply_fn(dj.models.MLP(width=8, depth=1, num_classes=NUM_CLASSES)), None, schedule=SCHED)
BAD_GRID = jnp.asarray([1.0, 0.5, 0.2])  # vp_cosine is undefined at t = 1 (alpha = cos(pi/2) < 0 in floats)
BOTH_ZERO = S.interpolant(lambda t: (1 - t) ** 2, lambda t: t * (1 - t))  # alpha = sigma = 0 at t = 1


def _nan(shape, where=0):
    return jnp.zeros(shape).reshape(-1).at[where].set(jnp.nan).reshape(shape)


def _inf(shape):
    return jnp.zeros(shape).reshape(-1).at[-1].set(jnp.inf).reshape(shape)


def not_a_denoiser(x, t):
    """A plain function: callable, but without a .schedule."""
    return x


def sample(**kw):
    args = dict(solver=SDE, denoiser=DEN, timesteps=TS, key=KEY, x_T=X) | kw
    return lambda: dj.sample(args.pop("solver"), args.pop("denoiser"), args.pop("timesteps"), args.pop("key"),
                             args.pop("x_T"), **args)  # fmt: skip


def prior(**kw):
    args = dict(key=KEY, schedule=SCHED, timesteps=TS, shape=(2, 2)) | kw
    return lambda: dj.prior_sample(args.pop("key"), args.pop("schedule"), args.pop("timesteps"), args.pop("shape"),
                                   **args)  # fmt: skip


def fk(**kw):
    args = dict(solver=SDE, denoiser=DEN, timesteps=TS, key=KEY, x_T=XP, reward=REWARD, lmbda=1.0) | kw
    pos = [args.pop(n) for n in ("solver", "denoiser", "timesteps", "key", "x_T", "reward")]
    return lambda: dj.steering.fk_steer(*pos, **args)


def importance(**kw):
    args = dict(solver=SDE, denoiser=DEN, timesteps=TS, key=KEY, x_T=XP, reward=REWARD, lmbda=1.0) | kw
    pos = [args.pop(n) for n in ("solver", "denoiser", "timesteps", "key", "x_T", "reward")]
    return lambda: dj.steering.importance_sample(*pos, **args)


def tds(**kw):
    args = dict(denoiser=DEN, timesteps=TS, key=KEY, x_T=XP, log_twist=TWIST) | kw
    pos = [args.pop(n) for n in ("denoiser", "timesteps", "key", "x_T", "log_twist")]
    return lambda: dj.steering.tds(*pos, **args)


def smcdiff(**kw):
    args = dict(denoiser=DEN, timesteps=TS, key=KEY, x_T=XP, y=X, mask=jnp.array([1.0, 0.0])) | kw
    pos = [args.pop(n) for n in ("denoiser", "timesteps", "key", "x_T", "y", "mask")]
    return lambda: dj.steering.smcdiff(*pos, **args)


def random(**kw):
    args = dict(generator=IDENTITY, verifier=VERIFIER, key=KEY, shape=(2, 2), num_candidates=2) | kw
    pos = [args.pop(n) for n in ("generator", "verifier", "key", "shape")]
    return lambda: dj.steering.random_search(*pos, **args)


def zero_order(**kw):
    args = dict(generator=IDENTITY, verifier=VERIFIER, key=KEY, shape=(2, 2), rounds=1) | kw
    pos = [args.pop(n) for n in ("generator", "verifier", "key", "shape")]
    return lambda: dj.steering.zero_order_search(*pos, **args)


def path(**kw):
    args = dict(solver=dj.solvers.ddim(), denoiser=DEN, timesteps=TS, key=KEY, verifier=VERIFIER, shape=(2, 2),
                num_paths=2, branches=2, start=1, forward=1, backward=2) | kw  # fmt: skip
    pos = [args.pop(n) for n in ("solver", "denoiser", "timesteps", "key", "verifier", "shape")]
    return lambda: dj.steering.path_search(*pos, **args)


def noise(**kw):
    args = dict(denoiser=DEN, timesteps=TS, key=KEY, x_T=X, verifier=VERIFIER, num_candidates=2) | kw
    pos = [args.pop(n) for n in ("denoiser", "timesteps", "key", "x_T", "verifier")]
    return lambda: dj.steering.noise_search(*pos, **args)


def mixture(weights=(0.5, 0.5), means=((0.0,), (1.0,)), scales=((1.0,), (1.0,))):
    return lambda: dj.data.GaussianMixture(weights, means, scales)


def parse(spec):
    return lambda: specs.parse("config.sample.solver", spec, {"ddim": dj.solvers.ddim})


CFG = dj.guidance.classifier_free(CDEN, 2.0, NUM_CLASSES)
LABELS = jnp.array([0, 2])
DEEP = "ddim(eta=" + "[" * 25 + "1" + "]" * 25 + ")"

BEFORE_TRACING = [
    # sample: x_T
    ("sample-xT-nan", sample(x_T=_nan((2, 2))), r"x_T must be finite"),
    ("sample-xT-inf", sample(x_T=_inf((2, 2))), r"x_T must be finite"),
    ("sample-xT-int", sample(x_T=jnp.zeros((2, 2), jnp.int32)), r"x_T must have a floating dtype"),
    ("sample-xT-bool", sample(x_T=jnp.zeros((2, 2), bool)), r"x_T must have a floating dtype"),
    ("sample-xT-B0", sample(x_T=jnp.zeros((0, 2))), r"x_T must not be empty.*B = 0"),
    ("sample-xT-event0", sample(x_T=jnp.zeros((2, 0))), r"x_T must not be empty"),
    ("sample-xT-scalar", sample(x_T=jnp.zeros(())), r"x_T must have shape \(B, \*event\)"),
    ("sample-xT-none", sample(x_T=None), r"x_T must be an array"),
    ("sample-xT-key", sample(x_T=jax.random.key(1)), r"x_T must be an array"),
    # sample: the grid under the schedule
    ("sample-grid-cosine-t1", sample(denoiser=GMM.denoiser(S.vp_cosine()), timesteps=BAD_GRID), r"timesteps\[0\]"),
    (
        "sample-grid-edm-negative",
        sample(denoiser=GMM.denoiser(S.edm()), timesteps=jnp.array([1.0, 0.5, -0.1])),
        r"timesteps\[2\].*EDM is undefined",
    ),  # fmt: skip
    (
        "sample-grid-alpha-sigma-zero",
        sample(denoiser=GMM.denoiser(BOTH_ZERO), timesteps=jnp.array([1.0, 0.5, 0.1])),
        r"timesteps\[0\].*alpha=.*0\.0, sigma=.*0\.0",
    ),  # fmt: skip
    ("sample-grid-inf", sample(timesteps=jnp.array([jnp.inf, 0.5, 0.1])), r"timesteps must be finite"),
    ("sample-grid-nan", sample(timesteps=jnp.array([0.9, jnp.nan, 0.1])), r"timesteps must decrease"),
    ("sample-grid-increasing", sample(timesteps=jnp.array([0.1, 0.5])), r"timesteps must decrease"),
    ("sample-grid-2d", sample(timesteps=jnp.ones((2, 2))), r"timesteps must be a 1-D"),
    # sample: cond
    ("sample-cond-batch", sample(denoiser=CDEN, cond=jnp.array([0, 1, 2])), r"cond has batch 3 but x_T has batch 2"),
    (
        "sample-cond-label-high",
        sample(denoiser=CDEN, cond=jnp.array([0, 4])),
        r"cond must hold class labels in \[0, 3\]",
    ),
    ("sample-cond-label-negative", sample(denoiser=CDEN, cond=jnp.array([-1, 0])), r"cond must hold class labels"),
    ("sample-cond-scalar-label", sample(denoiser=CDEN, cond=jnp.int32(9)), r"cond must hold class labels.*\[9\]"),
    ("sample-cfg-cond-label", sample(denoiser=CFG, cond=jnp.array([0, 7])), r"cond must hold class labels in \[0, 3\]"),
    (
        "sample-cfg-cond-batch",
        sample(denoiser=CFG, cond=jnp.array([0, 1, 2, 0])),
        r"cond has batch 4 but x_T has batch 2",
    ),
    ("cfg-null-label", lambda: dj.guidance.classifier_free(CDEN, 2.0, 5), r"null_cond must hold class labels"),
    ("cfgpp-null-label", lambda: dj.guidance.classifier_free_pp(CDEN, 0.5, -1), r"null_cond must hold class labels"),
    ("sample-denoiser-function", sample(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("sample-key-int", sample(key=0), r"key must be a typed PRNG key"),
    # prior_sample
    ("prior-shape-negative", prior(shape=(2, -1)), r"shape must be a non-empty tuple of integers >= 1"),
    ("prior-shape-float", prior(shape=(2, 1.5)), r"shape must be"),
    ("prior-shape-empty", prior(shape=()), r"shape must be"),
    ("prior-shape-zero", prior(shape=(0, 2)), r"shape must be"),
    ("prior-shape-int", prior(shape=4), r"shape must be"),
    ("prior-shape-bool", prior(shape=(True, 2)), r"shape must be"),
    ("prior-dtype-int", prior(dtype=jnp.int32), r"dtype must be a floating dtype"),
    ("prior-schedule", prior(schedule="vp"), r"schedule must be a diffjax schedule"),
    ("prior-grid-undefined", prior(schedule=S.vp_cosine(), timesteps=BAD_GRID), r"timesteps\[0\]"),
    ("prior-data-std", prior(data_std=-1.0), r"data_std"),
    # fk_steer
    ("fk-xT-nan", fk(x_T=_nan((2, 3, 2), 5)), r"x_T must be finite"),
    ("fk-xT-int", fk(x_T=jnp.zeros((2, 3, 2), jnp.int32)), r"x_T must have a floating dtype"),
    ("fk-xT-K0", fk(x_T=jnp.zeros((2, 0, 2))), r"x_T must not be empty.*K = 0"),
    ("fk-xT-B0", fk(x_T=jnp.zeros((0, 3, 2))), r"x_T must not be empty.*B = 0"),
    ("fk-xT-2d", fk(x_T=X), r"x_T must have shape \(B, K, \*event\)"),
    ("fk-lmbda-nan", fk(lmbda=float("nan")), r"lmbda must be a finite number"),
    ("fk-lmbda-inf", fk(lmbda=np.inf), r"lmbda must be a finite number"),
    ("fk-lmbda-jnp-nan", fk(lmbda=jnp.float32(jnp.nan)), r"lmbda must be a finite number"),
    ("fk-lmbda-string", fk(lmbda="1"), r"lmbda must be a finite number"),
    ("fk-lmbda-vector", fk(lmbda=jnp.ones(2)), r"lmbda must be a finite number"),
    ("fk-denoiser-function", fk(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("fk-denoiser-none", fk(denoiser=None), r"denoiser must be callable"),
    ("fk-cond-batch", fk(denoiser=CDEN, cond=jnp.array([0, 1, 2])), r"cond has batch 3 but x_T has batch 2"),
    ("fk-cond-label", fk(denoiser=CDEN, cond=jnp.array([0, 3 + 1])), r"cond must hold class labels"),
    ("fk-grid-undefined", fk(denoiser=GMM.denoiser(S.vp_cosine()), timesteps=BAD_GRID), r"timesteps\[0\]"),
    ("fk-schedule-length", fk(schedule=resampling.resampling_schedule(5)), r"schedule must cover the grid's 3 steps"),
    ("fk-resampler", fk(resampler="best"), r"resampler must be one of"),
    ("fk-reward", fk(reward="r"), r"reward must be callable"),
    ("fk-potential", fk(potential="min"), r"potential must be one of"),
    ("fk-reward-on", fk(reward_on="x1"), r"reward_on must be one of"),
    ("fk-x0-std", fk(x0_std=-0.5), r"x0_std must be > 0"),
    ("fk-num-x0-samples", fk(num_x0_samples=0), r"num_x0_samples must be an integer >= 1"),
    ("fk-reward-chunk", fk(reward_chunk=4), r"reward_chunk must divide"),
    ("fk-solver", fk(solver="ddim"), r"solver"),
    # importance_sample
    ("importance-xT-nan", importance(x_T=_nan((2, 3, 2))), r"x_T must be finite"),
    ("importance-xT-K0", importance(x_T=jnp.zeros((2, 0, 2))), r"x_T must not be empty.*K = 0"),
    ("importance-xT-bool", importance(x_T=jnp.zeros((2, 3, 2), bool)), r"x_T must have a floating dtype"),
    ("importance-lmbda-nan", importance(lmbda=np.nan), r"lmbda must be a finite number"),
    ("importance-denoiser", importance(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("importance-grid-scalar", importance(timesteps=jnp.float32(1.0)), r"timesteps must be a 1-D"),
    ("importance-cond-batch", importance(denoiser=CDEN, cond=jnp.array([1])), r"cond has batch 1 but x_T has batch 2"),
    # tds
    ("tds-xT-nan", tds(x_T=_nan((2, 3, 2))), r"x_T must be finite"),
    ("tds-xT-int", tds(x_T=jnp.ones((2, 3, 2), jnp.int8)), r"x_T must have a floating dtype"),
    ("tds-xT-K0", tds(x_T=jnp.zeros((2, 0, 2))), r"x_T must not be empty.*K = 0"),
    ("tds-denoiser", tds(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("tds-log-twist", tds(log_twist=3.0), r"log_twist must be callable"),
    ("tds-y-batch", tds(y=jnp.zeros((5, 2))), r"y has batch 5 but x_T has batch 2"),
    ("tds-cond-batch", tds(denoiser=CDEN, cond=jnp.array([0, 1, 2])), r"cond has batch 3 but x_T has batch 2"),
    ("tds-twist-chunk", tds(twist_chunk=0), r"twist_chunk must be an integer >= 1"),
    ("tds-grid-undefined", tds(denoiser=GMM.denoiser(S.vp_cosine()), timesteps=BAD_GRID), r"timesteps\[0\]"),
    # smcdiff
    ("smcdiff-xT-nan", smcdiff(x_T=_nan((2, 3, 2))), r"x_T must be finite"),
    ("smcdiff-xT-int", smcdiff(x_T=jnp.zeros((2, 3, 2), jnp.int32)), r"x_T must have a floating dtype"),
    ("smcdiff-xT-B0", smcdiff(x_T=jnp.zeros((0, 3, 2))), r"x_T must not be empty.*B = 0"),
    ("smcdiff-y-shape", smcdiff(y=jnp.zeros((3, 2))), r"y must have shape"),
    ("smcdiff-mask", smcdiff(mask=jnp.array([0.5, 1.0])), r"mask must be 0/1"),
    ("smcdiff-denoiser", smcdiff(denoiser=None), r"denoiser must be callable"),
    # random_search
    ("random-num-candidates", random(num_candidates=0), r"num_candidates must be an integer >= 1"),
    ("random-rounds", random(rounds=0), r"rounds must be an integer >= 1"),
    ("random-shape-negative", random(shape=(2, -2)), r"shape must be"),
    ("random-shape-1d", random(shape=(4,)), r"shape must be \(B, \*event\)"),
    ("random-verifier", random(verifier=None), r"verifier must be callable"),
    ("random-generator", random(generator=not_a_denoiser), r"generator must be"),
    ("random-cond-batch", random(cond=jnp.array([0, 1, 2])), r"cond has batch 3 but shape has batch 2"),
    ("random-seed-bank", random(seed_bank=dj.steering.SeedBank((1,), (0.0,))), r"seed_bank has 1 seeds"),
    # zero_order_search
    ("zero-order-cosine-high", zero_order(cosine=1.5), r"cosine must lie in \[-1.0, 1.0\]"),
    ("zero-order-cosine-nan", zero_order(cosine=float("nan")), r"cosine must be a finite number"),
    ("zero-order-num-neighbors", zero_order(num_neighbors=0), r"num_neighbors must be an integer >= 1"),
    ("zero-order-rounds", zero_order(rounds=0), r"rounds must be an integer >= 1"),
    ("zero-order-pivot-shape", zero_order(pivot=jnp.ones((3, 2))), r"pivot must have shape \(2, 2\)"),
    ("zero-order-pivot-nan", zero_order(pivot=_nan((2, 2))), r"pivot must be finite"),
    ("zero-order-pivot-int", zero_order(pivot=jnp.ones((2, 2), jnp.int32)), r"pivot must have a floating dtype"),
    ("zero-order-pivot-zero-row", zero_order(pivot=jnp.zeros((2, 2)).at[0].set(1.0)), r"pivot must have a nonzero"),
    # path_search
    ("path-num-paths", path(num_paths=0), r"num_paths must be an integer >= 1"),
    ("path-branches", path(branches=0), r"branches must be an integer >= 1"),
    ("path-backward", path(forward=2, backward=2, start=2), r"backward must exceed forward"),
    ("path-start", path(start=3), r"start must be a grid index"),
    ("path-denoiser", path(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("path-shape", path(shape=(2, 0)), r"shape must be"),
    ("path-cond-batch", path(denoiser=CDEN, cond=jnp.array([0, 1, 2])), r"cond has batch 3 but shape has batch 2"),
    ("path-cond-label", path(denoiser=CDEN, cond=jnp.array([0, 9])), r"cond must hold class labels"),
    ("path-grid-undefined", path(denoiser=GMM.denoiser(S.vp_cosine()), timesteps=BAD_GRID), r"timesteps\[0\]"),
    # noise_search
    ("noise-choices-high", noise(choices=jnp.full((3, 2), 2)), r"choices must hold candidate indices in \[0, num"),
    ("noise-choices-negative", noise(choices=jnp.full((3, 2), -1)), r"choices must hold candidate indices"),
    ("noise-choices-float", noise(choices=jnp.zeros((3, 2))), r"choices must hold candidate indices.*float"),
    ("noise-choices-shape", noise(choices=jnp.zeros((2, 2), jnp.int32)), r"choices must have shape \(steps, B\)"),
    ("noise-num-candidates", noise(num_candidates=0), r"num_candidates must be an integer >= 1"),
    ("noise-xT-nan", noise(x_T=_nan((2, 2))), r"x_T must be finite"),
    ("noise-xT-B0", noise(x_T=jnp.zeros((0, 2))), r"x_T must not be empty"),
    ("noise-denoiser", noise(denoiser=not_a_denoiser), r"denoiser must be callable"),
    ("noise-eta", noise(eta=2.0), r"eta must lie in"),
    ("noise-deterministic", noise(solver=dj.solvers.ddim()), r"solver must be stochastic"),
    ("noise-cond-batch", noise(denoiser=CDEN, cond=jnp.array([0, 1, 2])), r"cond has batch 3 but x_T has batch 2"),
    # resampling schedules
    (
        "schedule-start-after-end",
        lambda: resampling.resampling_schedule(10, start=5, end=3),
        r"resampling_schedule selects no step: start=5, end=3",
    ),  # fmt: skip
    (
        "schedule-start-past-default-end",
        lambda: resampling.resampling_schedule(10, start=9),
        r"resampling_schedule selects no step: start=9, end=8",
    ),  # fmt: skip
    ("schedule-end-past-grid", lambda: resampling.resampling_schedule(10, end=10), r"start and end must be"),
    ("schedule-interval", lambda: resampling.resampling_schedule(10, interval=0), r"interval must be an integer"),
    ("schedule-threshold", lambda: resampling.resampling_schedule(10, threshold=1.5), r"threshold must lie in"),
    # GaussianMixture
    ("gmm-weights-negative", mixture(weights=(-0.5, 1.5)), r"weights must be a 1-D array of positive finite"),
    ("gmm-weights-sum", mixture(weights=(0.5, 0.6)), r"weights must sum to 1"),
    ("gmm-weights-unnormalised", mixture(weights=(1.0, 1.0)), r"weights must sum to 1"),
    ("gmm-weights-nan", mixture(weights=(np.nan, 0.5)), r"weights must be"),
    ("gmm-weights-2d", mixture(weights=((0.5, 0.5),)), r"weights must be a 1-D"),
    ("gmm-weights-string", mixture(weights=("a", "b")), r"weights must be an array of real numbers"),
    ("gmm-means-count", mixture(means=((0.0,), (1.0,), (2.0,))), r"means must have shape \(K, d\) = \(2, d >= 1\)"),
    ("gmm-means-1d", mixture(means=(0.0, 1.0)), r"means must have shape"),
    ("gmm-means-nan", mixture(means=((0.0,), (np.nan,))), r"means must be finite"),
    ("gmm-scales-shape", mixture(scales=((1.0, 1.0), (1.0, 1.0))), r"scales must have the shape of means \(2, 1\)"),
    ("gmm-scales-zero", mixture(scales=((1.0,), (0.0,))), r"scales \(per-dimension stds\) must be positive"),
    ("gmm-scales-negative", mixture(scales=((-1.0,), (1.0,))), r"scales \(per-dimension stds\) must be positive"),
    (
        "gmm-scales-inf",
        mixture(scales=((np.inf,), (1.0,))),
        r"scales \(per-dimension stds\) must be positive and finite",
    ),
    # specs.parse
    ("spec-too-long", parse("ddim(eta=" + "0" * 1000 + ")"), r"config\.sample\.solver must be a spec of at most 1000"),
    ("spec-too-deep", parse(DEEP), r"config\.sample\.solver must nest at most 20 levels"),
    ("spec-parser-limit", parse("ddim(eta=" + "(" * 300 + "1" + ")" * 300 + ")"), r"config\.sample\.solver"),
    ("spec-name", parse("euler"), r"config\.sample\.solver must name one of"),
]


@pytest.fixture
def no_sampler(monkeypatch):
    """Replace every compiled sampler entry point by a failure: the checks must fire before them."""

    def fail(*args, **kwargs):
        raise AssertionError("a sampler was traced: the check did not fire at the door")

    for module, name in [("diffjax.sampling", "_sample"), ("diffjax.steering.fk", "_fk_steer"),
                         ("diffjax.steering.twisted", "_tds"), ("diffjax.steering.inpaint", "_smcdiff"),
                         ("diffjax.steering.search", "_random_search"), ("diffjax.steering.search", "_zero_order"),
                         ("diffjax.steering.search", "_path_search"),
                         ("diffjax.steering.search", "_noise_search")]:  # fmt: skip
        monkeypatch.setattr(sys.modules[module], name, fail)


@pytest.mark.parametrize("call, match", [c[1:] for c in BEFORE_TRACING], ids=[c[0] for c in BEFORE_TRACING])
def test_refused_before_tracing(no_sampler, call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _wide_output(p, x, t, c):
    return jnp.concatenate([x, x], axis=-1)


def _raises_type_error(p, x, t, c):
    raise TypeError("unsupported operand")


def _raises_value_error(p, x, t, c):
    raise ValueError("bad conv dimensions")


def _first_column(x, cond=None):
    return x[:, :1]  # (N, 1), not (N,)


AT_TRACE_TIME = [
    (
        "denoiser-output-shape",
        lambda: dj.Denoiser(_wide_output, None, schedule=SCHED)(X, 0.5),
        r"apply_fn must return an output of x's shape \(2, 2\).*got shape \(2, 4\)",
    ),  # fmt: skip
    (
        "denoiser-type-error",
        lambda: dj.Denoiser(_raises_type_error, None, schedule=SCHED)(X, 0.5),
        r"apply_fn failed on x of shape \(2, 2\) \(batch 2, event shape \(2,\)\).*TypeError: unsupported",
    ),  # fmt: skip
    (
        "denoiser-value-error",
        lambda: dj.Denoiser(_raises_value_error, None, schedule=SCHED)(X, 0.5),
        r"apply_fn failed on x of shape \(2, 2\).*ValueError: bad conv",
    ),  # fmt: skip
    (
        "random-verifier-shape",
        random(verifier=_first_column),
        r"verifier must return one score per sample, shape \(4,\)",
    ),
    ("zero-order-verifier-shape", zero_order(verifier=_first_column), r"verifier must return one score per sample"),
    ("fk-reward-shape", fk(reward=_first_column, timesteps=TS[:2]), r"reward must return one score per sample, shape"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in AT_TRACE_TIME], ids=[c[0] for c in AT_TRACE_TIME])
def test_refused_while_tracing(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_network_error_is_chained():
    with pytest.raises(ValueError) as info:
        dj.Denoiser(_raises_type_error, None, schedule=SCHED)(X, 0.5)
    assert isinstance(info.value.__cause__, TypeError)


BANKS = [
    ("seeds-negative", {"seeds": [1, -2], "scores": [0.0, 1.0]}, r"seeds\[1\] must be an integer in \[0, 2\*\*32\)"),
    ("seeds-too-large", {"seeds": [2**32], "scores": [0.0]}, r"seeds\[0\] must be an integer in \[0, 2\*\*32\)"),
    ("seeds-float", {"seeds": [1.5], "scores": [0.0]}, r"seeds\[0\] must be an integer.*1\.5"),
    ("seeds-string", {"seeds": ["7"], "scores": [0.0]}, r"seeds\[0\] must be an integer.*'7'"),
    ("seeds-bool", {"seeds": [True], "scores": [0.0]}, r"seeds\[0\] must be an integer"),
    ("seeds-duplicate", {"seeds": [3, 4, 3], "scores": [0.0, 1.0, 2.0]}, r"seeds must be distinct.*\[3\]"),
    ("seeds-scores-length", {"seeds": [1, 2], "scores": [0.0]}, r"2 seeds and 1 scores"),
    ("scores-string", {"seeds": [1], "scores": ["high"]}, r"scores\[0\] must be a number"),
    ("seeds-not-list", {"seeds": 5, "scores": [0.0]}, r"seeds and scores must be lists"),
    ("missing-scores", {"seeds": [1]}, r"must be a JSON object with 'seeds' and 'scores'"),
    ("not-an-object", [1, 2], r"must be a JSON object"),
    ("description", {"seeds": [1], "scores": [0.0], "description": 3}, r"description must be a string"),
    ("not-json", "{seeds: [1", r"not a JSON seed bank"),
]


@pytest.mark.parametrize("content, match", [b[1:] for b in BANKS], ids=[b[0] for b in BANKS])
def test_seed_bank_load_refuses_bad_files(tmp_path, content, match):
    path = tmp_path / "bank.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match) as info:
        dj.steering.SeedBank.load(path)
    assert str(path) in str(info.value)


def test_case_count():
    assert len(BEFORE_TRACING) + len(AT_TRACE_TIME) + len(BANKS) >= 90


# --- what must stay valid ------------------------------------------------------------------------


def test_grids_outside_the_schedule_range_stay_valid(no_sampler):
    # karras under vp_linear ends at t = 0 < t_min, uniform(rectified_flow, t_min=0) at alpha = 1, sigma = 0
    flow = S.rectified_flow()
    grids = [(SCHED, T.karras(SCHED, 3)), (flow, T.uniform(flow, 3, t_min=0.0)),
             (S.ve(), T.karras(S.ve(), 3, append_zero=False)), (S.edm(), T.karras(S.edm(), 3))]  # fmt: skip
    for schedule, grid in grids:
        dj.sampling.check_inputs(GMM.denoiser(schedule), grid, X)
        dj.prior_sample(KEY, schedule, grid, (2, 2))


def test_karras_and_flow_grids_sample():
    for schedule, grid in [
        (SCHED, T.karras(SCHED, 2)),
        (S.rectified_flow(), T.uniform(S.rectified_flow(), 2, t_min=0.0)),
    ]:
        x, _ = dj.sample(
            dj.solvers.ddim(), GMM.denoiser(schedule), grid, KEY, dj.prior_sample(KEY, schedule, grid, (2, 2))
        )
        assert np.all(np.isfinite(np.asarray(x)))


def test_fk_accepts_a_zero_dimensional_lmbda():
    out = dj.steering.fk_steer(SDE, DEN, TS[:3], KEY, jnp.ones((1, 2, 2)), REWARD, lmbda=jnp.float32(1))
    assert out.x.shape == (1, 2, 2) and np.all(np.isfinite(np.asarray(out.x)))
    assert float(fk_kernel(SDE, REWARD, lmbda=np.float64(2), num_particles=2, num_steps=2).lmbda) == 2.0


def test_labels_in_range_and_the_null_label_pass(no_sampler):
    dj.sampling.check_inputs(CDEN, TS, X, jnp.array([0, NUM_CLASSES]))
    dj.sampling.check_inputs(CFG, TS, X, LABELS)
    dj.sampling.check_inputs(CDEN, TS, X, jnp.int32(1))  # a scalar label broadcasts


def test_random_search_flags_an_all_nan_verifier():
    def all_nan(x, cond=None):
        return jnp.full(x.shape[:1], jnp.nan)

    result = dj.steering.random_search(IDENTITY, all_nan, KEY, (2, 2), num_candidates=3, rounds=2)
    assert np.all(np.asarray(result.score) == -np.inf)
    np.testing.assert_array_equal(result.choices, -np.ones((2, 2), int))
    # x is the first candidate (the identity generator's x is its noise), not zeros posing as a sample
    np.testing.assert_array_equal(result.x, result.noise)
    assert np.all(np.asarray(result.x) != 0)


def test_valid_inputs_at_the_edges():
    assert resampling.resampling_schedule(1).steps.tolist() == [False]  # one step: nothing before the last
    assert resampling.resampling_schedule(10, start=9, final=True).steps.tolist() == [False] * 9 + [True]
    assert float(dj.data.ring(3).weights.sum()) == pytest.approx(1.0)
    dj.data.GaussianMixture(jnp.array([0.2, 0.5, 0.3], jnp.float32), np.zeros((3, 1)), np.ones((3, 1)))
    specs.parse("config.sample.solver", "ddim(eta=" + "[" * 19 + "1" + "]" * 19 + ")", {"ddim": dj.solvers.ddim})


def test_seed_bank_round_trip(tmp_path):
    bank = dj.steering.SeedBank((5, 2**32 - 1, 0), (1.0, 0.5, -2.0), "ok")
    bank.save(tmp_path / "bank.json")
    assert dj.steering.SeedBank.load(tmp_path / "bank.json") == bank


def test_a_grid_that_passed_is_not_checked_again_unless_it_can_change(monkeypatch):
    """`_checks.grid_on` remembers passing (schedule, grid) pairs of immutable objects (a sampling loop
    pays the ~0.4 ms host check once); a numpy grid, which can change in place, is checked every time."""
    calls = []
    monkeypatch.setattr(dj._checks, "_check_grid_on", lambda *args: calls.append(args))
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 4)
    for _ in range(3):
        dj._checks.grid_on(sched, ts)
    assert len(calls) == 1
    host = np.asarray(ts)
    for _ in range(2):
        dj._checks.grid_on(sched, host)
    assert len(calls) == 3
