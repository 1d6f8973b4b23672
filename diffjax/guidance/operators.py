r"""Measurement operators of inverse problems y = A x + sigma_y n, as values with their SVDs.

Every operator is an `Operator`, an `arrays.Value`: a `flax.struct` dataclass whose arrays (a
mask, a kernel's spectrum, a matrix) are pytree leaves and whose shapes and options are static. A
jitted sampler therefore compiles once per operator kind and shape, and a new mask or kernel
reuses the program. Every method takes (*lead, *shape) inputs with any number of leading axes
(B, or B, K) and raises a ValueError, before tracing, when the trailing axes are not the shape.

A linear operator with an SVD, A = U diag(s) V^T, exposes it in spectral coordinates laid out in
the event's shape (DDRM's `H_functions`; Kawar et al. 2022):

    to_spectral(x) = V^T x,    from_spectral(c) = V c,    singular_values = s  (event shape, >= 0)
    measurement_to_spectral(y) = U^T y on the coordinates with s > 0, zeros elsewhere
    spectral_to_measurement(c) = U c restricted to s > 0:  A x = spectral_to_measurement(s V^T x)
    A^+ y = from_spectral(where(s > 0, measurement_to_spectral(y) / s, 0))
    A^T (r^2 A A^T + sigma^2 I)^-1 v = from_spectral(s / (r^2 s^2 + sigma^2) measurement_to_spectral(v))

Circular blur is diagonal in the unitary Fourier basis: V^T = fft2(., norm="ortho") (complex
coordinates), s = |k_hat| and U = V diag(phase) with phase = k_hat / |k_hat|, so that
measurement_to_spectral(y) / s = y_hat / k_hat. Coefficients that depend on s only are real and even
in frequency, so results stay real.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, as_pytree, noise_like

WITH_SVD = "identity, inpainting, downsample, blur, matrix"
DENSE_PINV_MAX = 4096  # largest event size for which `linear(fn).pinv` builds a dense Jacobian
_STATIC = {"pytree_node": False}


def _shape(name: str, shape, min_rank: int = 1) -> tuple:
    """`shape` as a tuple of >= min_rank ints >= 1, else a ValueError naming `name`."""
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) < min_rank or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise ValueError(f"{name} must be a tuple of >= {min_rank} positive ints, got {shape!r}")
    return tuple(int(n) for n in shape)


def _lead(name: str, a, shape: tuple):
    """`a` as an array and its leading shape; a ValueError unless its trailing axes are `shape`."""
    a = jnp.asarray(a)
    if a.ndim < len(shape) or tuple(a.shape[a.ndim - len(shape) :]) != shape:
        raise ValueError(f"{name} must have shape (*lead, *{shape}), got {a.shape}")
    return a, a.shape[: a.ndim - len(shape)]


def _method(impl: str, arg: str, shape: str, doc: str, svd: bool = False):
    """A public method: check the argument's trailing axes (and that there is an SVD), then run `impl`."""

    def method(self, a):
        if svd and not self.has_svd:
            raise ValueError(f"{type(self).__name__} has no SVD; operators with one: {WITH_SVD}")
        return getattr(self, impl)(_lead(arg, a, getattr(self, shape))[0])

    no_svd = " or the operator has no SVD" if svd else ""
    method.__doc__ = f"{doc}\n\nRaises:\n  ValueError: if {arg} does not end in `{shape}`{no_svd}.\n"
    return method


def _vmapped(fn, x, shape: tuple):
    """fn, defined on one unbatched input of `shape`, applied over all leading axes of x."""
    lead = x.shape[: x.ndim - len(shape)]
    out = jax.vmap(fn)(x.reshape((-1, *shape)))
    return out.reshape(lead + out.shape[1:])


def _complex(dtype):
    """The complex dtype of a real or complex dtype's precision."""
    return jnp.result_type(jnp.finfo(dtype).dtype, jnp.complex64)


class Operator(Value):
    """Base class of measurement operators x -> A(x): subclasses are `flax.struct.dataclass(eq=False)`
    values with a static `event_shape` (one x) and a `measurement_shape` (one y), and define `_apply`."""

    linear = False
    __call__ = _method("_apply", "x", "event_shape", "A(x): (*lead, *event_shape) -> (*lead, *measurement_shape).")

    @property
    def measurement_size(self):
        """The number d_y of real measured values (an int; a traced scalar inside jit for a mask)."""
        return math.prod(self.measurement_shape)

    def _measured(self, noise):
        return noise  # the measurement noise that lands on measured values (all, but for masks)


class LinearOperator(Operator):
    """Base class of linear operators: `transpose`, `pinv` and, when `has_svd`, `singular_values`
    and the four spectral maps (subclasses define `_transpose` and the underscored SVD pieces)."""

    linear = True
    has_svd = True
    transpose = _method(
        "_transpose", "y", "measurement_shape", "A^T y: (*lead, *measurement_shape) -> (*lead, *event)."
    )
    pinv = _method("_pinv", "y", "measurement_shape", "A^+ y, the thresholded pseudo-inverse (s = 0 dropped).")
    to_spectral = _method("_to_spectral", "x", "event_shape", "V^T x, event-shaped (complex for blur).", svd=True)
    from_spectral = _method("_from_spectral", "c", "event_shape", "V c, real and event-shaped.", svd=True)
    measurement_to_spectral = _method(
        "_measurement_to_spectral", "y", "measurement_shape", "U^T y on the coordinates with s > 0.", svd=True
    )
    spectral_to_measurement = _method(
        "_spectral_to_measurement", "c", "event_shape", "U c restricted to s > 0: (*lead, *measurement).", svd=True
    )

    def _pinv(self, y):
        s = self.singular_values.astype(y.dtype)
        return self._from_spectral(jnp.where(s > 0, self._measurement_to_spectral(y) / jnp.where(s > 0, s, 1), 0))


@struct.dataclass(eq=False)
class Identity(LinearOperator):
    """A = I (denoising): s = 1, U = V = I. Attributes: event_shape (static)."""

    event_shape: tuple = struct.field(**_STATIC)

    @property
    def measurement_shape(self):
        """The event shape."""
        return self.event_shape

    @property
    def singular_values(self):
        """Ones of the event shape."""
        return jnp.ones(self.event_shape)

    def _apply(self, x):
        return x

    _transpose = _to_spectral = _from_spectral = _measurement_to_spectral = _spectral_to_measurement = _apply


def identity(event_shape) -> Identity:
    """The identity operator A = I (denoising).

    Args:
      event_shape: the shape of one x, a tuple of positive ints.

    Returns:
      An `Identity`; y has the event shape.

    Raises:
      ValueError: if `event_shape` is not a tuple of positive ints.
    """
    return Identity(_shape("event_shape", event_shape))


@struct.dataclass(eq=False)
class Inpainting(LinearOperator):
    """y = mask * x, event-shaped with zeros where unobserved; A = A^T = A^+ = diag(mask), V = U = I,
    s = mask. Attributes: mask (0/1 of the event shape, leaf), event_shape (static)."""

    mask: jax.Array
    event_shape: tuple = struct.field(**_STATIC)

    @property
    def measurement_shape(self):
        """The event shape."""
        return self.event_shape

    @property
    def measurement_size(self):
        """The number of observed entries, mask.sum() (an int; a traced scalar inside jit)."""
        return int(np.sum(self.mask)) if _checks.is_concrete(self.mask) else jnp.sum(self.mask)

    @property
    def singular_values(self):
        """The mask."""
        return self.mask

    def _apply(self, x):
        return self.mask.astype(x.dtype) * x

    def _to_spectral(self, x):
        return x

    _transpose = _measurement_to_spectral = _spectral_to_measurement = _measured = _apply
    _from_spectral = _to_spectral


def inpainting(mask, *, event_shape=None) -> Inpainting:
    """Inpainting: observe the entries where `mask` is 1. y = mask * x keeps the event shape and
    `measurement_size` is mask.sum().

    Args:
      mask: a 0/1 array, 1 = observed (`box_mask`, `random_mask`).
      event_shape: the shape of one x to broadcast the mask to (e.g. an (H, W, 1) mask over C
        channels); by default the mask's shape.

    Returns:
      An `Inpainting`; masks of one shape share compiled programs.

    Raises:
      ValueError: if the mask has rank 0, does not broadcast to `event_shape`, or (when concrete)
        holds values other than 0 and 1.
    """
    mask = jnp.asarray(mask)
    if mask.ndim == 0:
        raise ValueError(f"mask must be an array of the event shape (rank >= 1), got shape {mask.shape}")
    shape = mask.shape if event_shape is None else _shape("event_shape", event_shape)
    if mask.ndim > len(shape) or any(m not in (1, n) for m, n in zip(mask.shape[::-1], shape[::-1])):
        raise ValueError(f"mask of shape {mask.shape} must broadcast to event_shape {shape}")
    if _checks.is_concrete(mask) and not np.all((np.asarray(mask) == 0) | (np.asarray(mask) == 1)):
        raise ValueError(f"mask must hold only 0 (missing) and 1 (observed), got values {np.unique(mask)[:8]}")
    dtype = mask.dtype if jnp.issubdtype(mask.dtype, jnp.floating) else jnp.zeros(()).dtype
    return Inpainting(jnp.broadcast_to(mask.astype(dtype), shape), tuple(shape))


def box_mask(event_shape, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A mask of ones with a missing box, zeros at [top : top + height, left : left + width] of the
    two spatial axes, over all channels.

    Args:
      event_shape: (H, W, *channels).
      top: the box's first row, an int >= 0.
      left: the box's first column, an int >= 0.
      height: the box's height, an int >= 1 (the box inside the image).
      width: the box's width, an int >= 1 (the box inside the image).

    Returns:
      A float numpy array of `event_shape`, 1 = observed, 0 = missing.

    Raises:
      ValueError: if `event_shape` has rank < 2 or the box does not lie inside the image.
    """
    shape = _shape("event_shape", event_shape, min_rank=2)
    top, left = _checks.positive_int("top", top, 0), _checks.positive_int("left", left, 0)
    height, width = _checks.positive_int("height", height), _checks.positive_int("width", width)
    if top + height > shape[0] or left + width > shape[1]:
        raise ValueError(
            f"the box top={top}, height={height}, left={left}, width={width} must lie inside the "
            f"{shape[0]} x {shape[1]} image of event_shape {shape}"
        )
    mask = np.ones(shape)
    mask[top : top + height, left : left + width] = 0.0
    return mask


def random_mask(key, event_shape, missing: float) -> jax.Array:
    """A mask with exactly round(missing * P) of its P pixels missing, drawn uniformly: pixels are
    the positions of event_shape[:-1] (shared over the last, channel axis), or the entries of a
    rank-1 event.

    Args:
      key: a typed PRNG key (`jax.random.key`).
      event_shape: the shape of one x.
      missing: the fraction of missing pixels, in [0, 1].

    Returns:
      A float array of `event_shape`, 1 = observed, 0 = missing.

    Raises:
      ValueError: if `key` is not typed, `event_shape` not a shape or `missing` not in [0, 1].
    """
    _checks.typed_key("key", key)
    shape = _shape("event_shape", event_shape)
    missing = _checks.in_range("missing", missing, 0.0, 1.0)
    pixels = shape[:-1] if len(shape) >= 2 else shape
    n = math.prod(pixels)
    drop = jax.random.permutation(key, n)[: round(missing * n)]
    mask = jnp.ones(n).at[drop].set(0.0).reshape(pixels + (1,) * (len(shape) - len(pixels)))
    return jnp.broadcast_to(mask, shape)


def _channels(x, shape: tuple):
    """x (*lead, H, W, *ch) as (N, H, W, C), and its lead shape."""
    lead = x.shape[: x.ndim - len(shape)]
    return x.reshape((-1, *shape[:2], math.prod(shape[2:]))), lead


@struct.dataclass(eq=False)
class Downsample(LinearOperator):
    """The mean of each f x f block of the spatial axes, per channel: (H, W, *ch) -> (H/f, W/f, *ch).

    SVD per block (pixels row-major): V = `basis`, orthonormal with first column 1/f; coordinate k
    of a block sits at its pixel (k // f, k % f), so coordinate 0 (top-left) is the block mean with
    s = 1/f and the others have s = 0; U = 1. A^T = replication / f^2, A^+ = replication.

    Attributes:
      basis: V as an (f, f, f, f) array V[i, j, p, q] (leaf).
      event_shape: (H, W, *channels) (static).
      factor: f (static).
    """

    basis: jax.Array
    event_shape: tuple = struct.field(**_STATIC)
    factor: int = struct.field(**_STATIC)

    @property
    def measurement_shape(self):
        """(H / f, W / f, *channels)."""
        h, w, *ch = self.event_shape
        return (h // self.factor, w // self.factor, *ch)

    @property
    def singular_values(self):
        """1/f at each block's top-left pixel, 0 elsewhere."""
        s = np.zeros(self.event_shape)
        s[:: self.factor, :: self.factor] = 1.0 / self.factor
        return jnp.asarray(s)

    def _blocks(self, x):
        x, lead = _channels(x, self.event_shape)
        (h, w), f = self.measurement_shape[:2], self.factor
        return x.reshape(x.shape[0], h, f, w, f, x.shape[-1]), lead

    def _apply(self, x):
        b, lead = self._blocks(x)
        return b.mean(axis=(2, 4)).reshape(lead + self.measurement_shape)

    def _pinv(self, y):
        y, lead = _channels(y, self.measurement_shape)
        return jnp.repeat(jnp.repeat(y, self.factor, axis=1), self.factor, axis=2).reshape(lead + self.event_shape)

    def _transpose(self, y):
        return self._pinv(y) / self.factor**2

    def _to_spectral(self, x):
        b, lead = self._blocks(x)
        return jnp.einsum("naibjc,ijpq->napbqc", b, self.basis.astype(x.dtype)).reshape(lead + self.event_shape)

    def _from_spectral(self, c):
        b, lead = self._blocks(c)
        return jnp.einsum("napbqc,ijpq->naibjc", b, self.basis.astype(c.dtype)).reshape(lead + self.event_shape)

    def _measurement_to_spectral(self, y):
        y, lead = _channels(y, self.measurement_shape)
        n, h, w, c = y.shape
        out = jnp.zeros((n, h, self.factor, w, self.factor, c), y.dtype).at[:, :, 0, :, 0].set(y)
        return out.reshape(lead + self.event_shape)

    def _spectral_to_measurement(self, c):
        b, lead = self._blocks(c)
        return b[:, :, 0, :, 0].reshape(lead + self.measurement_shape)


def downsample(event_shape, factor: int) -> Downsample:
    """Super-resolution's operator: the mean of each factor x factor block, per channel.

    Args:
      event_shape: (H, W, *channels), H and W divisible by `factor`.
      factor: the block size f, an int >= 1.

    Returns:
      A `Downsample`: y of shape (H / f, W / f, *channels), s = 1/f, A^+ = nearest-neighbour replication.

    Raises:
      ValueError: if `event_shape` has rank < 2 or `factor` is not an int >= 1 dividing H and W.
    """
    shape = _shape("event_shape", event_shape, min_rank=2)
    f = _checks.positive_int("factor", factor)
    if shape[0] % f or shape[1] % f:
        raise ValueError(f"factor must divide H and W of event_shape {shape}, got factor={f}")
    q, r = np.linalg.qr(np.concatenate([np.ones((f * f, 1)), np.eye(f * f)[:, 1:]], axis=1))
    q = q * np.sign(np.diag(r))  # first column +1/f
    return Downsample(jnp.asarray(q.reshape(f, f, f, f)), shape, f)


@struct.dataclass(eq=False)
class Blur(LinearOperator):
    """Circular convolution of each channel with a centred 2-D kernel over the spatial axes:
    A x = ifft2(k_hat fft2(x)), A^T y = ifft2(conj(k_hat) fft2(y)); y has the event shape.

    SVD: V^T = fft2(., "ortho"), s = |k_hat| with values <= tol set to 0 (the SVD and `pinv` then
    describe A without those frequencies), U^T y = fft2(y, "ortho") conj(phase).

    Attributes:
      kernel_hat: fft2 of the kernel zero-padded to (H, W), its centre rolled to (0, 0) (leaf).
      spectrum: |kernel_hat| thresholded, (H, W) (leaf).
      event_shape: (H, W, *channels) (static).
    """

    kernel_hat: jax.Array
    spectrum: jax.Array
    event_shape: tuple = struct.field(**_STATIC)

    @property
    def measurement_shape(self):
        """The event shape."""
        return self.event_shape

    @property
    def singular_values(self):
        """The thresholded |k_hat| of each frequency, the same for every channel."""
        return jnp.broadcast_to(self._grid(self.spectrum), self.event_shape)

    def _grid(self, a):
        return a.reshape(a.shape + (1,) * (len(self.event_shape) - 2))

    def _fft(self, a, inverse=False, norm=None):
        axes = (-len(self.event_shape), 1 - len(self.event_shape))
        return jnp.fft.ifft2(a, axes=axes, norm=norm) if inverse else jnp.fft.fft2(a, axes=axes, norm=norm)

    def _phase(self, dtype):
        k, s = self.kernel_hat.astype(_complex(dtype)), self.spectrum
        return self._grid(jnp.where(s > 0, k / jnp.where(s > 0, jnp.abs(k), 1), 1))

    def _apply(self, x):
        return self._fft(self._fft(x) * self._grid(self.kernel_hat.astype(_complex(x.dtype))), True).real

    def _transpose(self, y):
        return self._fft(self._fft(y) * self._grid(jnp.conj(self.kernel_hat).astype(_complex(y.dtype))), True).real

    def _to_spectral(self, x):
        return self._fft(x, norm="ortho")

    def _from_spectral(self, c):
        return self._fft(c, True, "ortho").real

    def _measurement_to_spectral(self, y):
        return jnp.where(self._grid(self.spectrum) > 0, self._to_spectral(y) * jnp.conj(self._phase(y.dtype)), 0)

    def _spectral_to_measurement(self, c):
        return self._from_spectral(jnp.where(self._grid(self.spectrum) > 0, c, 0) * self._phase(c.dtype))


def blur(kernel, event_shape, *, tol: float | None = None) -> Blur:
    """Deblurring's operator: circular (periodic) convolution of each channel with `kernel`,
    y[n] = sum_m kernel[m] x[n - m + centre] (a true convolution: asymmetric kernels are flipped).

    Args:
      kernel: a 2-D array of odd sizes, at most (H, W) (`gaussian_kernel`, `motion_kernel`).
      event_shape: (H, W, *channels).
      tol: Fourier coefficients with |k_hat| <= tol count as unobserved (s = 0); default 1e-3 max |k_hat|
        (the binomial kernel has an exact zero at Nyquist).

    Returns:
      A `Blur`; kernels of one image shape share compiled programs.

    Raises:
      ValueError: if the kernel is not 2-D, of odd sizes at most (H, W) and finite, `event_shape`
        has rank < 2 or `tol` is not a finite number >= 0.
    """
    shape = _shape("event_shape", event_shape, min_rank=2)
    kernel = jnp.asarray(kernel)
    kh, kw = kernel.shape if kernel.ndim == 2 else (0, 0)
    if kh % 2 == 0 or kw % 2 == 0 or kh > shape[0] or kw > shape[1]:
        raise ValueError(f"kernel must be 2-D of odd sizes at most {shape[:2]}, got shape {kernel.shape}")
    if _checks.is_concrete(kernel) and not np.all(np.isfinite(np.asarray(kernel))):
        raise ValueError("kernel must have finite entries")
    padded = jnp.zeros(shape[:2], kernel.dtype).at[:kh, :kw].set(kernel)
    k_hat = jnp.fft.fft2(jnp.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1)))
    size = jnp.abs(k_hat)
    cut = 1e-3 * jnp.max(size) if tol is None else _checks.in_range("tol", tol, 0.0, math.inf)
    return Blur(k_hat, jnp.where(size > cut, size, 0.0), shape)


def _odd(name: str, size) -> int:
    if _checks.positive_int(name, size) % 2 == 0:
        raise ValueError(f"{name} must be odd, got {size}")
    return int(size)


def gaussian_kernel(size: int, std: float) -> np.ndarray:
    """The (size, size) Gaussian kernel exp(-r^2 / (2 std^2)) / Z, r the distance to the centre.

    Args:
      size: the odd kernel size.
      std: the standard deviation in pixels, > 0.

    Returns:
      A float64 numpy kernel summing to 1.

    Raises:
      ValueError: if `size` is not an odd int >= 1 or `std` is not > 0.
    """
    size, std = _odd("size", size), _checks.positive("std", std)
    g = np.exp(-0.5 * ((np.arange(size) - size // 2) / std) ** 2)
    return np.outer(g, g) / np.sum(g) ** 2


def motion_kernel(key, size: int, intensity: float = 0.5) -> np.ndarray:
    """A (size, size) motion-blur kernel: a random camera path, drawn with bilinear weights.

    The path takes 4 size unit steps from a direction theta_0 ~ U[0, 2 pi) that turns by
    intensity * pi / sqrt(steps) * N(0, 1) per step (intensity 0: a straight segment); it is centred
    on its mean and scaled to reach the kernel's border. A simple stand-in for DPS's `motionblur`
    package, deterministic given the key.

    Args:
      key: a concrete typed PRNG key.
      size: the odd kernel size, >= 3.
      intensity: how much the path turns, in [0, 1].

    Returns:
      A float64 numpy kernel >= 0 summing to 1.

    Raises:
      ValueError: if `key` is not typed, `size` not an odd int >= 3 or `intensity` not in [0, 1].
    """
    _checks.typed_key("key", key)
    size, intensity = (
        _odd("size", _checks.positive_int("size", size, 3)),
        _checks.in_range("intensity", intensity, 0, 1),
    )
    steps, (k_angle, k_turns) = 4 * size, jax.random.split(key)
    turns = np.cumsum(np.asarray(jax.random.normal(k_turns, (steps,), jnp.float32), np.float64))
    theta = 2 * np.pi * float(jax.random.uniform(k_angle)) + intensity * np.pi / np.sqrt(steps) * turns
    path = np.cumsum(np.stack([np.cos(theta), np.sin(theta)], axis=1), axis=0)
    path = (path - path.mean(axis=0)) * (size // 2) / np.abs(path - path.mean(axis=0)).max() + size // 2
    base = np.clip(np.floor(path).astype(int), 0, size - 2)
    frac, kernel = path - base, np.zeros((size, size))
    for di in (0, 1):
        for dj in (0, 1):
            weight = np.abs(1 - di - frac[:, 0]) * np.abs(1 - dj - frac[:, 1])
            np.add.at(kernel, (base[:, 0] + di, base[:, 1] + dj), weight)
    return kernel / kernel.sum()


@struct.dataclass(eq=False)
class Matrix(LinearOperator):
    """y = a x_flat for an (m, D) matrix on the row-major flattened event; a = U diag(s) V^T.

    Spectral coordinates are V^T x_flat reshaped to the event shape; U^T y fills the first min(m, D)
    of them (zeros where s = 0 and beyond).

    Attributes:
      a: the (m, D) matrix; u: U (m, m); vt: V^T (D, D); s: the singular values, <= tol max(s) set
        to 0, padded with zeros to D (leaves). event_shape: the shape of one x (static).
    """

    a: jax.Array
    u: jax.Array
    vt: jax.Array
    s: jax.Array
    event_shape: tuple = struct.field(**_STATIC)

    @property
    def measurement_shape(self):
        """(m,)."""
        return (self.a.shape[0],)

    @property
    def singular_values(self):
        """The singular values laid out in the event shape."""
        return self.s.reshape(self.event_shape)

    def _flat(self, x):
        return x.reshape(x.shape[: x.ndim - len(self.event_shape)] + (-1,))

    def _event(self, flat):
        return flat.reshape(flat.shape[:-1] + self.event_shape)

    def _apply(self, x):
        return self._flat(x) @ self.a.T.astype(x.dtype)

    def _transpose(self, y):
        return self._event(y @ self.a.astype(y.dtype))

    def _to_spectral(self, x):
        return self._event(self._flat(x) @ self.vt.T.astype(x.dtype))

    def _from_spectral(self, c):
        return self._event(self._flat(c) @ self.vt.astype(c.dtype))

    def _measurement_to_spectral(self, y):
        k = min(self.a.shape)
        c = (y @ self.u[:, :k].astype(y.dtype)) * (self.s[:k] > 0)
        return self._event(jnp.pad(c, [(0, 0)] * (y.ndim - 1) + [(0, self.s.shape[0] - k)]))

    def _spectral_to_measurement(self, c):
        k = min(self.a.shape)
        return (self._flat(c)[..., :k] * (self.s[:k] > 0)) @ self.u[:, :k].T.astype(c.dtype)


def matrix(a, event_shape, *, tol: float = 1e-10) -> Matrix:
    """Any dense linear measurement y = a x_flat (x_flat the event flattened row-major); the SVD is
    computed by numpy in float64 at build time.

    Args:
      a: a concrete (m, D) matrix, D = prod(event_shape).
      event_shape: the shape of one x.
      tol: singular values <= tol * max(s) count as 0; a finite number >= 0.

    Returns:
      A `Matrix`, y of shape (m,); matrices of one shape share compiled programs.

    Raises:
      ValueError: if `a` is not a finite 2-D matrix with prod(event_shape) columns or `tol` < 0.
    """
    shape = _shape("event_shape", event_shape)
    tol = _checks.in_range("tol", tol, 0.0, math.inf)
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[1] != math.prod(shape) or not np.all(np.isfinite(a)):
        raise ValueError(f"a must be a finite (m, {math.prod(shape)}) matrix for event_shape {shape}, got {a.shape}")
    u, s, vt = np.linalg.svd(a, full_matrices=True)
    s = np.pad(np.where(s > tol * s.max(initial=0.0), s, 0.0), (0, vt.shape[0] - s.shape[0]))
    return Matrix(*(jnp.asarray(v) for v in (a, u, vt, s)), shape)


@struct.dataclass(eq=False)
class Linear(LinearOperator):
    """A x = fn(x), fn linear on one unbatched x, vmapped over leading axes; A^T by
    `jax.linear_transpose`; no SVD; `pinv` from the dense Jacobian (event size <= DENSE_PINV_MAX).

    Attributes:
      fn: the function (a pytree value, or an `arrays.Static`); event_shape, measurement_shape and
        tol, the relative threshold of `pinv` (static).
    """

    fn: Callable
    event_shape: tuple = struct.field(**_STATIC)
    measurement_shape: tuple = struct.field(**_STATIC)
    tol: float = struct.field(**_STATIC)

    has_svd = False

    def _apply(self, x):
        return _vmapped(self.fn, x, self.event_shape)

    def _transpose(self, y):
        adjoint = jax.linear_transpose(self.fn, jax.ShapeDtypeStruct(self.event_shape, y.dtype))
        return _vmapped(lambda v: adjoint(v)[0], y, self.measurement_shape)

    def _pinv(self, y):
        d = math.prod(self.event_shape)
        if d > DENSE_PINV_MAX:
            raise ValueError(
                f"pinv of linear(fn) builds a dense Jacobian, allowed for prod(event_shape) <= {DENSE_PINV_MAX}, "
                f"got {d}; operators with a closed-form pinv: {WITH_SVD}"
            )
        jac = jax.vmap(self.fn)(jnp.eye(d, dtype=y.dtype).reshape((d, *self.event_shape))).reshape(d, -1)
        flat = y.reshape(y.shape[: y.ndim - len(self.measurement_shape)] + (-1,))
        return (flat @ jnp.linalg.pinv(jac.T, rtol=self.tol).T).reshape(flat.shape[:-1] + self.event_shape)


def linear(fn: Callable, event_shape, *, tol: float = 1e-10) -> Linear:
    """Any linear operator given as a function of one unbatched x (linearity is not checked:
    `transpose` fails inside `jax.linear_transpose` if fn is not linear).

    Args:
      fn: `fn(x) -> y` for x of `event_shape`: a pytree value or any function (static, compiled
        once per function object).
      event_shape: the shape of one x.
      tol: `pinv` drops singular values <= tol * max(s); a finite number >= 0.

    Returns:
      A `Linear` (`has_svd` False), its `measurement_shape` found by `jax.eval_shape`.

    Raises:
      ValueError: if `fn` is not callable, `event_shape` not a shape or `tol` < 0.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable as fn(x) -> y, got {fn!r}")
    shape = _shape("event_shape", event_shape)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, jnp.zeros(()).dtype))
    return Linear(as_pytree(fn), shape, tuple(out.shape), _checks.in_range("tol", tol, 0.0, math.inf))


@struct.dataclass(eq=False)
class Nonlinear(Operator):
    """A(x) = fn(x) for any fn on one unbatched x, vmapped over leading axes; only `__call__`.

    Attributes:
      fn: the function (a pytree value, or an `arrays.Static`); event_shape, measurement_shape (static).
    """

    fn: Callable
    event_shape: tuple = struct.field(**_STATIC)
    measurement_shape: tuple = struct.field(**_STATIC)

    def _apply(self, x):
        return _vmapped(self.fn, x, self.event_shape)


def nonlinear(fn: Callable, event_shape, measurement_shape) -> Nonlinear:
    """Any differentiable measurement function (phase retrieval, a network...), for DPS-type methods.

    Args:
      fn: `fn(x) -> y` for one x of `event_shape`: a pytree value or any function.
      event_shape: the shape of one x.
      measurement_shape: the shape of one y, checked against `jax.eval_shape`.

    Returns:
      A `Nonlinear` (`linear` False).

    Raises:
      ValueError: if `fn` is not callable, a shape is not a shape, or fn's output shape is not
        `measurement_shape`.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable as fn(x) -> y, got {fn!r}")
    shape, m_shape = _shape("event_shape", event_shape), _shape("measurement_shape", measurement_shape, 0)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, jnp.zeros(()).dtype))
    if tuple(out.shape) != m_shape:
        raise ValueError(f"measurement_shape must be fn's output shape {tuple(out.shape)}, got {m_shape}")
    return Nonlinear(as_pytree(fn), shape, m_shape)


def measure(op: Operator, key, x, sigma_y: float):
    """A noisy measurement y = A(x) + sigma_y n, n ~ N(0, I) drawn by `arrays.noise_like`; for
    inpainting only observed entries get noise (y stays 0 where the mask is 0).

    Args:
      op: the measurement `Operator`.
      key: a typed PRNG key.
      x: clean signals (*lead, *op.event_shape).
      sigma_y: the noise level, a finite number >= 0.

    Returns:
      y of shape (*lead, *op.measurement_shape).

    Raises:
      ValueError: if `op` is not an Operator, `key` not typed, `sigma_y` not a finite number >= 0,
        or x does not end in the event shape.
    """
    if not isinstance(op, Operator):
        raise ValueError(f"op must be an Operator from diffjax.guidance.operators, got {op!r}")
    _checks.typed_key("key", key)
    sigma_y = _checks.in_range("sigma_y", sigma_y, 0.0, math.inf)
    y = op(x)
    return y + jnp.asarray(sigma_y, y.dtype) * op._measured(noise_like(key, y))
