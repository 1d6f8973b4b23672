"""diffjax.models: shapes, conditioning, precision, compilation, sampling and learning of MLP, UNet and DiT.

Networks have no golden numbers; what is exact here is exact (embedding values, DiT's zero initial
output, None = the null label); the rest is shapes, invariances and a loss that falls.
Compilation dominates the time on a CPU, so each configuration's `apply` is compiled once and shared.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import diffjax as dj
from diffjax import models
from diffjax.models import MLP, DiT, UNet

F32 = jnp.float32
# XLA's lowest backend optimisation level compiles these tiny networks 2-3x faster and runs them as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# Tiny configurations with every feature of each model file: the 8x8 and 2-D ones are
# class-conditional with dropout, the 32x32 ones unconditional.
CONFIGS = {
    "mlp": (functools.partial(MLP, width=32, depth=2, num_classes=3, dropout=0.1), (8, 2)),
    "unet_8x8x1": (
        functools.partial(
            UNet,
            channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(),  # the middle's only; the 32x32 configuration has attention at 16x16
            num_heads=2,
            num_groups=4,
            num_classes=3,
            dropout=0.1,
        ),
        (4, 8, 8, 1),
    ),
    "unet_32x32x3": (
        functools.partial(
            UNet, channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(16,), num_groups=4
        ),
        (2, 32, 32, 3),
    ),
    "dit_8x8x1": (
        functools.partial(DiT, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=3),
        (4, 8, 8, 1),
    ),
    "dit_32x32x3": (functools.partial(DiT, patch_size=4, hidden_size=32, depth=2, num_heads=4), (2, 32, 32, 3)),
}
NAMES = list(CONFIGS)
CONDITIONAL = ["mlp", "unet_8x8x1", "dit_8x8x1"]


def random_variables(net, x, cond, seed=0):
    """Variables of `net`'s shapes drawn with numpy: kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), other
    vectors N(0, 0.1^2). Unlike `net.init` no layer is zero, so every input visibly reaches the output, and
    nothing is compiled (`init` compiles a random draw per parameter, seconds for a small UNet on a CPU).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x, jnp.zeros(x.shape[0], F32), cond)

    def draw(path, s):
        z = rng.standard_normal(s.shape)
        if len(s.shape) >= 2:
            z = z / np.sqrt(np.prod(s.shape[:-1]))
        else:
            z = 1 + 0.1 * z if jax.tree_util.keystr(path).endswith("['scale']") else 0.1 * z
        return jnp.asarray(z, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


class Case(NamedTuple):
    net: nn.Module
    variables: Any  # random_variables: nothing zero
    x: jax.Array  # float32 input
    cond: jax.Array | None  # null labels for a conditional configuration, else None
    apply: Callable  # jit(net.apply), shared by the tests so that each configuration compiles once
    traces: list  # one entry per trace of `apply`


@functools.cache
def setup(name, **kwargs):
    """The `Case` of configuration `name`, with fields overridden by `kwargs`."""
    make, shape = CONFIGS[name]
    net = make(**kwargs)
    x = jax.random.normal(jax.random.key(0), shape, F32)
    cond = None if net.num_classes is None else jnp.full(shape[0], net.num_classes, jnp.int32)
    traces = []

    def apply(*args, **kwargs):
        traces.append(None)
        return net.apply(*args, **kwargs)

    return Case(net, random_variables(net, x, cond), x, cond, jit(apply, static_argnames="train"), traces)


@functools.cache
def initialized(name):
    """`net.init` variables of a configuration (from an "rbg" key: threefry compiles ~3x slower)."""
    case = setup(name)
    return jit(case.net.init)(jax.random.key(1, impl="rbg"), case.x, jnp.zeros(case.x.shape[0], F32), case.cond)


def times(b, low, high):
    return jnp.linspace(low, high, b, dtype=F32)


def labels(b, label):
    return jnp.full(b, label, jnp.int32)


# --- embeddings -------------------------------------------------------------------------------


def test_sinusoidal_features_are_cos_then_sin_at_geometric_frequencies():
    t = jnp.array([0.0, 0.5, 3.0])
    # dim 4, max_period 100: frequencies 1 and 0.1.
    got = models.sinusoidal(t, 4, time_scale=2.0, max_period=100.0)
    want = np.stack([np.cos(2 * t), np.cos(0.2 * t), np.sin(2 * t), np.sin(0.2 * t)], axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.dtype == F32  # float32 whatever the input precision


def test_fourier_features_are_fixed_by_the_seed_and_lie_on_unit_circles():
    t = jnp.linspace(-2.0, 1.0, 7)
    a = models.fourier(t, 16)
    np.testing.assert_array_equal(a, models.fourier(t, 16))
    assert not np.allclose(a, models.fourier(t, 16, seed=1))
    np.testing.assert_allclose(a[:, :8] ** 2 + a[:, 8:] ** 2, 1.0, rtol=0, atol=1e-6)


def test_class_embedding_treats_none_as_the_null_label_and_broadcasts_a_scalar():
    emb = models.ConditionEmbedding(8, num_classes=3)
    t = jnp.zeros(5, F32)
    variables = emb.init(jax.random.key(0), t, None, 5)
    np.testing.assert_array_equal(emb.apply(variables, t, None, 5), emb.apply(variables, t, labels(5, 3), 5))
    np.testing.assert_array_equal(emb.apply(variables, t, 1, 5), emb.apply(variables, t, labels(5, 1), 5))


def test_drop_labels_uses_the_null_label():
    y = jnp.arange(10) % 3
    key = jax.random.key(0)
    np.testing.assert_array_equal(models.drop_labels(key, y, 3, 0.0), y)
    np.testing.assert_array_equal(models.drop_labels(key, y, 3, 1.0), 3)
    half = models.drop_labels(key, jnp.zeros(4000, jnp.int32), 3, 0.5)
    assert set(np.unique(half)) == {0, 3} and abs(float(jnp.mean(half == 3)) - 0.5) < 0.03


class _Lookup(nn.Module):
    @nn.compact
    def __call__(self, ids):
        return models.embeddings.embed(3, 2, ids, jnp.bfloat16)


def test_embed_matches_a_bfloat16_lookup_and_sums_its_gradient_in_float32():
    ids = jnp.zeros(4096, jnp.int32)  # one row looked up 4096 times
    variables = _Lookup().init(jax.random.key(0), ids)
    reference = nn.Embed(3, 2, dtype=jnp.bfloat16).apply({"params": variables["params"]["Embed_0"]}, ids)
    out = _Lookup().apply(variables, ids)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, reference)  # gather-then-cast is cast-then-gather, bit for bit
    grad = jax.grad(lambda v: _Lookup().apply(v, ids).astype(F32).sum())(variables)["params"]["Embed_0"]
    # Each lookup adds a cotangent of 1 to row 0: 4096 exactly, where a bfloat16 running sum stalls at 256
    # (8 significant bits: 256 + 1 rounds back to 256). The other rows are never looked up.
    np.testing.assert_array_equal(grad["embedding"], [[4096.0, 4096.0], [0.0, 0.0], [0.0, 0.0]])


# --- shapes and initial output ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_output_has_the_input_shape_and_dtype(name):
    net, variables, x, cond, apply, _ = setup(name)
    assert all(p.dtype == F32 for p in jax.tree.leaves(variables))
    out = apply(variables, x, times(x.shape[0], 0.0, 1.0), cond)
    assert out.shape == x.shape and out.dtype == F32
    x64 = jax.eval_shape(net.apply, variables, x.astype(jnp.float64), jnp.zeros(x.shape[0]), cond)
    assert x64.dtype == jnp.float64  # returned in x's dtype


@pytest.mark.parametrize("name", CONDITIONAL)
def test_untrained_output_is_exactly_zero(name):
    # DiT's adaLN-Zero final layer, ADM's zero-initialised output conv, the MLP's zero output layer.
    _, _, x, cond, apply, _ = setup(name)
    np.testing.assert_array_equal(apply(initialized(name), x, times(x.shape[0], 0.0, 1.0), cond), 0.0)


@pytest.mark.parametrize("name", ["unet_8x8x1", "dit_8x8x1"])
def test_out_channels(name):
    net, _, x, cond, _, _ = setup(name)
    out, _ = jax.eval_shape(
        net.clone(out_channels=3).init_with_output, jax.random.key(0), x, jnp.zeros(x.shape[0]), cond
    )
    assert out.shape == x.shape[:-1] + (3,)


# --- conditioning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_time_conditioning_matters_any_real_time_is_finite_and_new_times_never_retrace(name):
    _, variables, x, cond, apply, traces = setup(name)
    b = x.shape[0]
    out_a = apply(variables, x, times(b, 0.2, 0.2), cond)
    n_traces = len(traces)
    out_b = apply(variables, x, times(b, 0.8, 0.8), cond)
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 0.01 * float(jnp.max(jnp.abs(out_a)))
    # continuous t in [0, 1], DDPM indices in [0, 999], EDM's c_noise = log(sigma)/4 < 0
    for low, high in ((0.0, 1.0), (0.0, 999.0), (-2.0, 1.0)):
        assert bool(jnp.all(jnp.isfinite(apply(variables, x, times(b, low, high), cond))))
    assert len(traces) == n_traces


def test_fourier_time_embedding_conditions_on_time():
    _, variables, x, cond, apply, _ = setup("mlp", time_embedding="fourier")
    b = x.shape[0]
    assert not np.allclose(apply(variables, x, times(b, 0.2, 0.2), cond), apply(variables, x, times(b, 0.8, 0.8), cond))


@pytest.mark.parametrize("name", CONDITIONAL)
def test_class_conditioning_matters_and_labels_are_checked(name):
    net, variables, x, _, apply, traces = setup(name)
    b = x.shape[0]
    t = times(b, 0.5, 0.5)
    out = [apply(variables, x, t, labels(b, y)) for y in range(4)]
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[3])  # 3 = num_classes: the null label
    with pytest.raises(ValueError, match=r"cond must hold labels in \[0, 3\]"):
        net.apply(variables, x, t, labels(b, 4))
    with pytest.raises(ValueError, match="cond must be integer"):
        net.apply(variables, x, t, jnp.full(b, 1.0))
    with pytest.raises(ValueError, match="num_classes=None"):
        net.clone(num_classes=None).apply(variables, x, t, labels(b, 0))


# --- dropout, precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "unet_8x8x1"])
def test_dropout_in_training_draws_from_the_dropout_key(name):
    # Without train=True (every other test) no key is needed and the output is deterministic.
    # (An "rbg" key compiles faster than threefry on a CPU; any typed key works.)
    _, variables, x, cond, apply, _ = setup(name)
    t = times(x.shape[0], 0.5, 0.5)
    drop = lambda seed: apply(variables, x, t, cond, train=True, rngs={"dropout": jax.random.key(seed, impl="rbg")})
    np.testing.assert_array_equal(drop(0), drop(0))
    assert not np.allclose(drop(0), drop(1))


@pytest.mark.parametrize("name", CONDITIONAL)
def test_bfloat16_compute_is_close_to_float32_with_float32_params(name):
    net, variables, x, cond, apply, _ = setup(name)
    net16 = net.clone(dtype=jnp.bfloat16)
    shapes16 = jax.eval_shape(net16.init, jax.random.key(1), x, jnp.zeros(x.shape[0]), cond)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes16) == jax.tree.map(lambda p: (p.shape, p.dtype), variables)
    t = times(x.shape[0], 0.0, 1.0)
    out32, out16 = apply(variables, x, t, cond), jit(net16.apply)(variables, x, t, cond)
    assert out16.dtype == F32  # returned in x's dtype
    rel = float(jnp.sqrt(jnp.mean((out16 - out32) ** 2) / jnp.mean(out32**2)))
    assert 0 < rel < 0.03, rel  # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding


# --- with diffjax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONDITIONAL)
def test_denoiser_samples_with_ddim_on_vp_cosine(name):
    net, variables, x, _, _, _ = setup(name)
    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.uniform(sched, 4)
    x_T = dj.prior_sample(jax.random.key(2), sched, ts, x.shape, dtype=F32)
    den = dj.Denoiser(models.apply_fn(net), variables, schedule=sched, prediction="eps")
    x0, info = dj.sample(dj.solvers.ddim(), den, ts, jax.random.key(3), x_T, cond=jnp.arange(x.shape[0]) % 4)
    assert x0.shape == x.shape and x0.dtype == F32 and int(info.nfe) == 4
    assert bool(jnp.all(jnp.isfinite(x0)))
    # apply_fn is equal for equal modules: a rebuilt denoiser has the same treedef, so no new compile.
    den2 = dj.Denoiser(models.apply_fn(net.clone()), variables, schedule=sched, prediction="eps")
    assert jax.tree.structure(den2) == jax.tree.structure(den)


# --- learning ----------------------------------------------------------------------------------------

# eps-MSE on a fixed batch (4 to 8 samples with fixed noise, times and labels) falls from ~1 by at least this
# factor in 300 Adam steps at lr 3e-3, judged by the median of the last 20 steps (near 1e-6 Adam spikes now and
# then, by up to 100x). Measured: MLP 5e5, UNet 3e5, DiT 7e4 (2e4 to 2e5 already after 100 steps).
OVERFIT_FACTOR = 1000


@pytest.mark.parametrize("name", CONDITIONAL)
def test_overfits_a_fixed_batch_from_its_initialisation(name):
    net, _, x0, _, _, _ = setup(name)
    sched = dj.schedules.vp_cosine()
    eps = jax.random.normal(jax.random.key(4), x0.shape, F32)
    t = jax.random.uniform(jax.random.key(5), x0.shape[:1], F32, 0.05, 0.95)
    y = jnp.arange(x0.shape[0]) % 4
    coef = lambda a: dj.denoiser.broadcast_to_x(a, x0).astype(F32)
    x_t = coef(sched.alpha(t)) * x0 + coef(sched.sigma(t)) * eps
    loss_fn = lambda v: jnp.mean((net.apply(v, x_t, t, y) - eps) ** 2)
    opt = optax.adam(3e-3)

    @jit
    def step(v, state):
        loss, grads = jax.value_and_grad(loss_fn)(v)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(v, updates), state, loss

    variables, state, losses = initialized(name), opt.init(initialized(name)), []
    for _ in range(300):
        variables, state, loss = step(variables, state)
        losses.append(loss)
    first, last = float(losses[0]), float(np.median(losses[-20:]))
    assert first > 0.5 and last < first / OVERFIT_FACTOR, (first, last)


# --- configuration errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MLP(width=0), "width must be an integer >= 1"),
        (lambda: MLP(dropout=1.5), r"dropout must lie in \[0.0, 1.0\]"),
        (lambda: MLP(time_embedding="learned"), "time_embedding must be one of"),
        (lambda: MLP(time_scale=-1.0), "time_scale must be > 0"),
        (lambda: MLP(num_classes=0), "num_classes must be an integer >= 1"),
        (lambda: UNet(channel_mults=()), "channel_mults must name at least one level"),
        (lambda: UNet(channels=48, num_groups=32), "num_groups=32 must divide every width"),
        (lambda: DiT(hidden_size=30, num_heads=3), "hidden_size must be divisible by 4"),
        (lambda: DiT(hidden_size=32, num_heads=3), "num_heads=3 must divide hidden_size=32"),
        (lambda: models.ConditionEmbedding(8, frequency_dim=7), "frequency_dim must be even"),
        (lambda: models.apply_fn(lambda p, x, t, c: x), "module must be a flax.linen Module"),
    ],
)
def test_bad_configuration_raises_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "net, shape, match",
    [
        (MLP(), (4, 8, 8, 1), r"x must have shape \(B, D\)"),
        (
            UNet(channels=8, num_groups=4, channel_mults=(1, 2), attention_resolutions=(16,)),
            (2, 8, 8, 1),
            "never reaches",
        ),
        (UNet(channels=8, num_groups=4, channel_mults=(1, 1, 1, 1), attention_resolutions=()), (2, 12, 12, 1), "by 8"),
        (
            UNet(channels=12, num_groups=4, channel_mults=(1, 2), attention_resolutions=(8,), num_heads=8),
            (2, 8, 8, 1),
            "num_heads=8",
        ),
        (DiT(patch_size=3, hidden_size=32, num_heads=4, depth=1), (2, 8, 8, 1), "divisible by patch_size=3"),
    ],
)
def test_bad_input_shape_raises_at_the_first_call(net, shape, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros(shape, F32), jnp.zeros(shape[0], F32))


def test_a_time_of_the_wrong_shape_raises():
    net, variables, x, cond, _, _ = setup("mlp")
    with pytest.raises(ValueError, match=r"t must be a scalar or of shape \(8,\)"):
        net.apply(variables, x, jnp.zeros(3), cond)


@pytest.mark.parametrize("size", [12, 28, 20])
def test_unet_takes_any_size_its_halvings_divide(size):
    # (1, 2, 2) halves twice: 12 -> 6 -> 3, 28 -> 14 -> 7, 20 -> 10 -> 5.
    net = UNet(channels=8, num_groups=4, channel_mults=(1, 2, 2), attention_resolutions=(size // 2,))
    out, _ = jax.eval_shape(net.init_with_output, jax.random.key(0), jnp.zeros((2, size, size, 3)), jnp.zeros(2))
    assert out.shape == (2, size, size, 3)
