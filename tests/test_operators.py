"""Measurement operators against dense matrices built independently in numpy (T-OP).

Each operator kind is checked on (8, 8, 1) and (4, 4, 3) images in float64 against a reference
matrix written from its definition (row selection, block averages, circular convolution loops, the
matrix itself): the operator, its adjoint, its SVD pieces and its pseudo-inverse must match it to
rounding (1e-12). Pseudo-inverses are compared with `np.linalg.pinv` under the same threshold.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.arrays import noise_like
from diffjax.guidance import operators as ops

SHAPES = [(8, 8, 1), (4, 4, 3)]
BINOMIAL = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
TOL = 1e-12  # float64 rounding of sums over <= 192 terms of size <= 1


def downsample_matrix(shape, f):
    h, w, c = shape
    a = np.zeros((h // f, w // f, c) + shape)
    for i, j, k, p, q in np.ndindex(h // f, w // f, c, f, f):
        a[i, j, k, f * i + p, f * j + q, k] = 1.0 / f**2
    return a.reshape(-1, math.prod(shape))


def convolution_matrix(kernel, shape):
    """y[i, j] = sum_{a, b} k[a, b] x[i - a + ch, j - b + cw] (indices mod H, W): circular convolution."""
    h, w, c = shape
    ch, cw = kernel.shape[0] // 2, kernel.shape[1] // 2
    a = np.zeros(shape + shape)
    for i, j, k, p, q in np.ndindex(h, w, c, *kernel.shape):
        a[i, j, k, (i - p + ch) % h, (j - q + cw) % w, k] += kernel[p, q]
    return a.reshape(math.prod(shape), -1)


def weights(shape, m, rank=None, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, math.prod(shape)))
    if rank is not None:
        a = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, math.prod(shape)))
    return a


METHODS = ("__call__", "transpose", "pinv", "to_spectral", "from_spectral")
METHODS += ("measurement_to_spectral", "spectral_to_measurement")
_call = jax.jit(lambda op, method, a: getattr(op, method)(a), static_argnums=1)


class Jitted:
    """An operator whose methods run jitted: one program per method and shape instead of one per primitive."""

    def __init__(self, op):
        self.op = op

    def __call__(self, a):
        return _call(self.op, "__call__", a)

    def __getattr__(self, name):
        if name in METHODS:
            return lambda a: _call(self.op, name, a)
        return getattr(self.op, name)


def case(kind, shape):
    """(operator with jitted methods, reference dense matrix, relative pinv threshold)."""
    op, a, rcond = _case(kind, shape)
    return Jitted(op), a, rcond


def _case(kind, shape):
    d = math.prod(shape)
    if kind == "identity":
        return ops.identity(shape), np.eye(d), 1e-15
    if kind in ("random_mask", "box_mask"):
        mask = (
            ops.random_mask(jax.random.key(1), shape, 0.5) if kind == "random_mask" else ops.box_mask(shape, 1, 0, 2, 3)
        )
        return ops.inpainting(mask), np.diag(np.asarray(mask).ravel()), 1e-15
    if kind.startswith("downsample"):
        f = int(kind[-1])
        return ops.downsample(shape, f), downsample_matrix(shape, f), 1e-15
    if kind.startswith("blur"):
        kernel = {
            "blur_gauss": ops.gaussian_kernel(3, 0.8),
            "blur_binomial": BINOMIAL,
            "blur_motion": ops.motion_kernel(jax.random.key(2), 3, 0.5),
        }[kind]
        return ops.blur(kernel, shape), convolution_matrix(kernel, shape), 1e-3
    if kind == "matrix_wide":
        a = weights(shape, 5)
        return ops.matrix(a, shape), a, 1e-10
    if kind == "matrix_low_rank":
        a = weights(shape, d + 2, rank=4)
        return ops.matrix(a, shape), a, 1e-10
    if kind == "linear":
        w = weights(shape, 6).reshape((6, *shape))
        return (
            ops.linear(lambda v: jnp.tensordot(jnp.asarray(w, v.dtype), v, axes=len(shape)), shape),
            w.reshape(6, -1),
            1e-10,
        )
    raise AssertionError(kind)


# one variant per feature: a mask, blocks, an exact spectral zero (binomial), an asymmetric kernel
# (motion: convolution, not correlation), a wide and a tall rank-deficient matrix
SVD_KINDS = ["identity", "random_mask", "downsample2", "blur_binomial", "blur_motion", "matrix_wide", "matrix_low_rank"]
KINDS = SVD_KINDS + ["linear"]
CASES = [(k, s) for k in KINDS for s in SHAPES]
SVD_CASES = [(k, s) for k in SVD_KINDS for s in SHAPES]


def basis(shape):
    d = math.prod(shape)
    return np.eye(d).reshape((d, *shape))


def columns(out):
    """The (D_out, N) matrix whose columns are a batch of N outputs (N, *out_shape)."""
    out = np.asarray(out)
    return out.reshape(out.shape[0], -1).T


def rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("kind,shape", CASES)
def test_operator_adjoint_and_pinv_equal_the_reference_matrix(kind, shape):
    op, a, rcond = case(kind, shape)
    assert op.linear and op.event_shape == shape
    assert a.shape == (math.prod(op.measurement_shape), math.prod(shape))
    d, m = a.shape[1], a.shape[0]
    np.testing.assert_allclose(columns(op(basis(shape))), a, atol=TOL)
    np.testing.assert_allclose(columns(op.transpose(basis(op.measurement_shape))), a.T, atol=TOL)
    # <A x, y> = <x, A^T y> for every pair of d random x and m random y
    x, y = rand((d, *shape), 0), rand((m, *op.measurement_shape), 1)
    np.testing.assert_allclose(columns(op(x)).T @ columns(y), columns(x).T @ columns(op.transpose(y)), atol=TOL)
    pinv = np.linalg.pinv(a, rcond=rcond)
    np.testing.assert_allclose(columns(op.pinv(basis(op.measurement_shape))), pinv, atol=1e-10)


@pytest.mark.parametrize("kind,shape", SVD_CASES)
def test_svd_pieces_are_orthonormal_and_reproduce_the_operator(kind, shape):
    op, a, rcond = case(kind, shape)
    d, s = math.prod(shape), np.asarray(op.singular_values)
    assert s.shape == shape and np.isrealobj(s) and np.all(s >= 0)
    # the exact singular values: those of the reference matrix, thresholded like the pinv, padded to D
    exact = np.linalg.svd(a, compute_uv=False)
    exact = np.where(exact > rcond * exact.max(), exact, 0)[:d]
    np.testing.assert_allclose(np.sort(s.ravel()), np.sort(np.pad(exact, (0, d - exact.size))), atol=TOL)
    c = np.asarray(op.to_spectral(basis(shape)))  # rows: V^T e_i, complex for blur
    np.testing.assert_allclose(columns(c).conj().T @ columns(c), np.eye(d), atol=TOL)  # V^T V = I
    np.testing.assert_allclose(op.from_spectral(c), basis(shape), atol=TOL)  # V V^T = I
    cy = np.asarray(op.measurement_to_spectral(basis(op.measurement_shape)))  # rows: U^T e_j on the support
    support = (s.ravel() > 0).astype(float)
    np.testing.assert_allclose(columns(cy) @ columns(cy).conj().T, np.diag(support), atol=TOL)  # U^T U = I there
    np.testing.assert_allclose(columns(op.spectral_to_measurement(s * c)), a, atol=TOL)  # U diag(s) V^T = A
    ys = np.asarray(op(basis(shape)))  # U U^T is the identity on the range of A
    np.testing.assert_allclose(op.spectral_to_measurement(op.measurement_to_spectral(ys)), ys, atol=TOL)
    # A^+ and the PiGDM gain A^T (r^2 A A^T + sigma^2 I)^-1 from the SVD, against dense algebra
    via_svd = op.from_spectral(np.where(s > 0, cy / np.where(s > 0, s, 1), 0))
    np.testing.assert_allclose(columns(via_svd), np.linalg.pinv(a, rcond=rcond), atol=1e-10)
    r2, sigma2 = 0.7, 0.05
    gain = a.T @ np.linalg.inv(r2 * a @ a.T + sigma2 * np.eye(a.shape[0]))
    np.testing.assert_allclose(columns(op.from_spectral(s / (r2 * s**2 + sigma2) * cy)), gain, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_closed_forms(shape, factor):
    op = ops.downsample(shape, factor)
    s = np.asarray(op.singular_values)
    assert np.count_nonzero(s) == math.prod(op.measurement_shape)
    np.testing.assert_array_equal(s[::factor, ::factor], 1.0 / factor)
    y = rand((2, *op.measurement_shape), 4)
    replicated = np.repeat(np.repeat(y, factor, axis=1), factor, axis=2)
    np.testing.assert_allclose(op.pinv(y), replicated, atol=TOL)
    np.testing.assert_allclose(op.transpose(y), replicated / factor**2, atol=TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_blur_singular_values_are_the_kernel_spectrum(shape):
    for kernel in (ops.gaussian_kernel(3, 0.8), BINOMIAL, ops.motion_kernel(jax.random.key(5), 3)):
        padded = np.zeros(shape[:2])
        padded[:3, :3] = kernel
        spectrum = np.abs(np.fft.fft2(np.roll(padded, (-1, -1), axis=(0, 1))))
        s = np.asarray(ops.blur(kernel, shape).singular_values)
        np.testing.assert_allclose(np.sort(s[..., 0].ravel()), np.sort(spectrum.ravel()), atol=1e-15)
    # the binomial kernel vanishes at Nyquist: that coefficient is unobserved
    s = np.asarray(ops.blur(BINOMIAL, shape).singular_values)
    assert (
        s[shape[0] // 2, shape[1] // 2, 0] == 0.0 and np.count_nonzero(s == 0) == (shape[0] + shape[1] - 1) * shape[2]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_leading_axes_equal_a_loop(kind):
    op, _, _ = case(kind, (4, 4, 3))
    x, y = rand((2, 3, 4, 4, 3), 6), rand((2, 3, *op.measurement_shape), 7)
    # per sample: each sample's output is that of the sample alone (other samples do not matter)
    methods = [(op, x), (op.transpose, y), (op.pinv, y)]
    if op.has_svd:
        c = op.to_spectral(x)
        methods += [(op.to_spectral, x), (op.from_spectral, c), (op.measurement_to_spectral, y)]
        methods += [(op.spectral_to_measurement, c)]
    for method, arg in methods:
        out, arg = method(arg), np.asarray(arg)
        loop = np.stack([np.stack([method(arg[b, k]) for k in range(3)]) for b in range(2)])
        np.testing.assert_allclose(out, loop, atol=TOL)


def test_equal_operators_compare_and_hash_equal_and_compile_once():
    shape = (4, 4, 3)
    m1, m2 = ops.box_mask(shape, 0, 0, 2, 2), ops.box_mask(shape, 1, 1, 3, 2)
    assert ops.inpainting(m1) == ops.inpainting(m1.copy()) and hash(ops.inpainting(m1)) == hash(ops.inpainting(m2))
    assert ops.inpainting(m1) != ops.inpainting(m2) and ops.inpainting(m1) != ops.identity(shape)
    assert ops.downsample(shape, 2) == ops.downsample(shape, 2) != ops.downsample(shape, 4)
    k1, k2 = ops.gaussian_kernel(3, 1.0), ops.gaussian_kernel(3, 0.5)
    assert ops.blur(k1, shape) == ops.blur(k1, shape) != ops.blur(k2, shape)
    assert ops.matrix(weights(shape, 4), shape) == ops.matrix(weights(shape, 4), shape)
    x = rand((2, *shape), 8)
    pairs = [
        (ops.inpainting(m1), ops.inpainting(ops.random_mask(jax.random.key(0), shape, 0.3))),
        (ops.blur(k1, shape), ops.blur(k2, shape)),
        (ops.matrix(weights(shape, 4, seed=1), shape), ops.matrix(weights(shape, 4, seed=2), shape)),
    ]
    for first, second in pairs:
        traces = []

        @jax.jit
        def solve(op, y, traces=traces):
            traces.append(type(op).__name__)
            return op.pinv(y) + op.transpose(y) + op.measurement_size

        for op in (first, second):
            y = op(x)
            np.testing.assert_allclose(solve(op, y), op.pinv(y) + op.transpose(y) + op.measurement_size, atol=TOL)
        assert len(traces) == 1  # the second operator of the kind and shape reuses the program


def test_operators_can_be_built_inside_jit():
    mask, x = ops.box_mask((4, 4, 3), 0, 0, 2, 2), rand((2, 4, 4, 3), 12)

    @jax.jit
    def restore(mask, kernel, x):
        inpaint, deblur = ops.inpainting(mask), ops.blur(kernel, (4, 4, 3))
        return inpaint.pinv(inpaint(x)) / inpaint.measurement_size, deblur.pinv(deblur(x))

    masked, deblurred = restore(mask, ops.gaussian_kernel(3, 0.7), x)
    np.testing.assert_allclose(masked, mask * x / mask.sum(), atol=TOL)
    np.testing.assert_allclose(deblurred, x, atol=1e-10)  # this kernel has no zero in its spectrum


def test_masks_and_measurement_size():
    mask = ops.box_mask((4, 6, 3), 1, 2, 2, 3)
    assert mask.shape == (4, 6, 3) and mask.sum() == 3 * (24 - 6) and np.all(mask[1:3, 2:5] == 0)
    random = np.asarray(ops.random_mask(jax.random.key(3), (8, 8, 3), 0.25))
    assert np.all(random == random[..., :1]) and random[..., 0].sum() == 48
    np.testing.assert_array_equal(random, ops.random_mask(jax.random.key(3), (8, 8, 3), 0.25))
    assert ops.random_mask(jax.random.key(3), (10,), 0.3).sum() == 7
    assert ops.inpainting(random).measurement_size == 144
    shared = ops.inpainting(random[..., :1], event_shape=(8, 8, 3))
    assert shared == ops.inpainting(random) and shared.event_shape == (8, 8, 3)
    assert (
        ops.downsample((8, 8, 3), 2).measurement_size == 48 and ops.matrix(np.ones((5, 4)), (4,)).measurement_size == 5
    )


def test_measure_adds_noise_on_measured_values_only():
    key, x = jax.random.key(4), rand((2, 4, 4, 3), 9)
    op = ops.downsample((4, 4, 3), 2)
    np.testing.assert_allclose(ops.measure(op, key, x, 0.1), op(x) + 0.1 * noise_like(key, op(x)), atol=TOL)
    np.testing.assert_array_equal(ops.measure(op, key, x, 0), op(x))
    mask = ops.box_mask((4, 4, 3), 0, 0, 2, 2)
    y = ops.measure(ops.inpainting(mask), key, x, 0.5)
    assert np.all(np.asarray(y)[:, mask == 0] == 0) and np.all(
        np.asarray(y)[:, mask == 1] != np.asarray(x)[:, mask == 1]
    )


def test_kernels_are_normalised_and_deterministic():
    g = ops.gaussian_kernel(5, 1.2)
    assert g.shape == (5, 5) and abs(g.sum() - 1) < 1e-15 and g.argmax() == 12 and np.allclose(g, g.T)
    m = ops.motion_kernel(jax.random.key(0), 9, 0.7)
    assert m.shape == (9, 9) and abs(m.sum() - 1) < 1e-12 and np.all(m >= 0)
    np.testing.assert_array_equal(m, ops.motion_kernel(jax.random.key(0), 9, 0.7))
    assert not np.allclose(m, ops.motion_kernel(jax.random.key(1), 9, 0.7))
    line = ops.motion_kernel(jax.random.key(0), 9, 0.0)
    # intensity 0 is a straight segment through the centre: its weighted covariance is thin and long
    grid = np.stack(np.meshgrid(np.arange(9), np.arange(9), indexing="ij"), -1).reshape(-1, 2)
    mean = line.ravel() @ grid
    spread = np.linalg.eigvalsh((grid - mean).T @ ((grid - mean) * line.reshape(-1, 1)))
    assert np.allclose(mean, 4) and spread[0] < 0.3 and spread[1] > 3


def test_linear_and_nonlinear_functions():
    op = ops.linear(lambda v: v[::2] - v[1::2], (6,))
    assert op.measurement_shape == (3,) and not op.has_svd
    with pytest.raises(ValueError, match="has no SVD"):
        op.to_spectral(jnp.ones(6))
    with pytest.raises(ValueError, match="prod\\(event_shape\\) <= 4096"):
        ops.linear(lambda v: v, (4097,)).pinv(jnp.ones(4097))
    phase = ops.nonlinear(lambda v: jnp.abs(jnp.fft.fft(v)), (8,), (8,))
    x = rand((2, 3, 8), 10)
    assert not phase.linear and not hasattr(phase, "transpose") and phase.measurement_size == 8
    np.testing.assert_allclose(phase(x), jnp.abs(jnp.fft.fft(x)), atol=TOL)
    with pytest.raises(ValueError, match="measurement_shape must be fn's output shape"):
        ops.nonlinear(lambda v: v.sum(), (8,), (1,))


def test_float32_inputs_stay_float32():
    x = rand((2, 4, 4, 3), 11).astype(jnp.float32)
    for kind in ("random_mask", "downsample2", "blur_motion", "matrix_wide", "linear"):
        op, _, _ = case(kind, (4, 4, 3))
        y = op(x)
        assert y.dtype == jnp.float32 and op.transpose(y).dtype == jnp.float32 and op.pinv(y).dtype == jnp.float32
        if op.has_svd:
            assert op.from_spectral(op.to_spectral(x)).dtype == jnp.float32


BAD = [
    (lambda: ops.inpainting(np.full((4, 4), 0.5)), "mask must hold only 0"),
    (lambda: ops.inpainting(np.float64(1.0)), "mask must be an array"),
    (lambda: ops.inpainting(np.ones((4, 2)), event_shape=(4, 4, 3)), "must broadcast to event_shape"),
    (lambda: ops.box_mask((4, 4, 1), 3, 0, 2, 2), "must lie inside"),
    (lambda: ops.box_mask((4,), 0, 0, 1, 1), "event_shape must be a tuple of >= 2"),
    (lambda: ops.random_mask(jax.random.PRNGKey(0), (4, 4, 1), 0.5), "typed PRNG key"),
    (lambda: ops.random_mask(jax.random.key(0), (4, 4, 1), 1.5), "missing must lie in"),
    (lambda: ops.downsample((6, 8, 1), 4), "factor must divide H and W"),
    (lambda: ops.downsample((8, 8, 1), 0), "factor must be an integer >= 1"),
    (lambda: ops.blur(np.ones((2, 2)) / 4, (8, 8, 1)), "kernel must be 2-D of odd sizes"),
    (lambda: ops.blur(np.ones(3) / 3, (8, 8, 1)), "kernel must be 2-D of odd sizes"),
    (lambda: ops.blur(np.ones((9, 9)), (8, 8, 1)), "at most"),
    (lambda: ops.gaussian_kernel(4, 1.0), "size must be odd"),
    (lambda: ops.gaussian_kernel(5, 0.0), "std must be > 0"),
    (lambda: ops.motion_kernel(jax.random.key(0), 5, 2.0), "intensity must lie in"),
    (lambda: ops.matrix(np.ones((3, 10)), (4, 4, 1)), "a must be a finite \\(m, 16\\) matrix"),
    (lambda: ops.matrix(np.full((3, 4), np.nan), (4,)), "a must be a finite"),
    (lambda: ops.identity((4, 0)), "event_shape must be a tuple"),
    (lambda: ops.linear("not a function", (4,)), "fn must be callable"),
    (lambda: ops.measure(ops.identity((4,)), jax.random.key(0), jnp.ones(4), -0.1), "sigma_y must lie in"),
    (lambda: ops.measure(ops.identity((4,)), jax.random.key(0), jnp.ones(4), math.nan), "sigma_y must be a finite"),
    (lambda: ops.measure(lambda x: x, jax.random.key(0), jnp.ones(4), 0.1), "op must be an Operator"),
    (lambda: ops.downsample((8, 8, 1), 2)(jnp.ones((2, 8, 8))), "x must have shape \\(\\*lead, \\*\\(8, 8, 1\\)\\)"),
    (lambda: ops.downsample((8, 8, 1), 2).transpose(jnp.ones((8, 8, 1))), "y must have shape"),
    (lambda: ops.blur(BINOMIAL, (8, 8, 1)).pinv(jnp.ones((8, 8, 3))), "y must have shape"),
    (lambda: ops.matrix(np.ones((3, 4)), (4,)).from_spectral(jnp.ones(3)), "c must have shape"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_input_raises_a_value_error_naming_it(build, message):
    with pytest.raises(ValueError, match=message):
        build()
