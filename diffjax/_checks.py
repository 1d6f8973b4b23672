"""Argument checks run at the API boundary, before anything is traced.

Each raises a ``ValueError`` that names the argument, the value it got and what is allowed.
"""

import collections
import contextlib
import math
from collections.abc import Collection

import jax
import jax.numpy as jnp
import numpy as np


@contextlib.contextmanager
def on_host():
    """A context in which the arithmetic of a check on concrete values runs eagerly, even when the
    caller is being traced (`jax.ensure_compile_time_eval`), and on the CPU: its arrays are a few
    numbers (a grid, a schedule's coefficients), and on an accelerator each operation would be a
    kernel launch and a wait."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.ensure_compile_time_eval())
        try:
            stack.enter_context(jax.default_device(jax.devices("cpu")[0]))
        except RuntimeError:  # no CPU backend (JAX_PLATFORMS without "cpu")
            pass
        yield


@jax.jit
def _count_nonfinite(x):
    return jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)


def all_finite(x) -> tuple[bool, int]:
    """(whether every entry of the concrete array x is finite, how many are not), reduced where x lives
    in one compiled call: one number comes back from an accelerator, not the array (copying a
    (64, 32, 32, 128) start noise to the host cost 150 us a step of a 50-step sampler on an H200). Reading
    that number waits for x (and, on an accelerator, for the work queued before it)."""
    if not isinstance(x, jax.Array):
        count = int(np.sum(~np.isfinite(np.asarray(x, np.float64))))
        return count == 0, count
    with jax.ensure_compile_time_eval():
        count = int(_count_nonfinite(x))
    return count == 0, count


def is_concrete(*values) -> bool:
    """True when no value is a tracer, so it can be inspected on the host."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values))


def _number(value):
    """`value` itself if it is a Python/numpy number, its item if a concrete 0-d numeric array, else None."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    if hasattr(value, "dtype") and np.ndim(value) == 0 and is_concrete(value):
        dtype = None if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key) else value.dtype
        if dtype is not None and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            return np.asarray(value).item()
    return None


def finite(name: str, value) -> float:
    """`value` as a float; a ValueError naming `name` unless it is a finite number (0-d arrays included)."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(number)


def positive(name: str, value) -> float:
    """`value` as a float; a ValueError naming `name` unless it is finite and > 0."""
    value = finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def in_range(name: str, value, low: float, high: float) -> float:
    """`value` as a float; a ValueError naming `name` unless low <= value <= high."""
    value = finite(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return value


def less(name_low: str, low: float, name_high: str, high: float) -> None:
    """A ValueError naming both fields unless low < high."""
    if not low < high:
        raise ValueError(f"{name_low} must be < {name_high}, got {name_low}={low!r}, {name_high}={high!r}")


def positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int; a ValueError naming `name` unless it is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def one_of(name: str, value, allowed: Collection) -> None:
    """A ValueError naming `name` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def typed_key(name: str, key) -> None:
    """A ValueError naming `name` unless `key` is a typed key from jax.random.key."""
    if not (hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise ValueError(f"{name} must be a typed PRNG key from jax.random.key(seed), got {key!r}")


def grid(timesteps) -> None:
    """Validate a time grid on the host: 1-D, >= 2 entries, strictly decreasing when concrete."""
    if np.ndim(timesteps) != 1 or np.shape(timesteps)[0] < 2:
        raise ValueError(f"timesteps must be a 1-D array of >= 2 times, got shape {np.shape(timesteps)}")
    if is_concrete(timesteps):
        values = np.asarray(timesteps)
        if not np.all(np.diff(values) < 0):
            raise ValueError(f"timesteps must decrease strictly from noise to data, got {values}")


# the last (schedule, grid) pairs that passed `grid_on`, held so that their ids stay theirs: a loop that
# samples again with the same immutable objects is not checked again (the check is ~0.4 ms of host work)
_PASSED_GRIDS: collections.OrderedDict = collections.OrderedDict()


def _immutable(*values) -> bool:
    """Whether every leaf is a jax.Array or a Python number (a numpy array may change in place)."""
    return all(isinstance(v, (jax.Array, int, float)) for v in jax.tree.leaves(values))


def grid_on(schedule, timesteps, name: str = "timesteps") -> bool | None:
    """On a concrete grid, a ValueError naming `name` at a time where `schedule` is undefined:
    alpha or sigma not finite, alpha = sigma = 0, or logSNR NaN. No [t_min, t_max] range is imposed.
    The last 8 passing pairs of immutable objects are remembered and not checked again.

    Returns:
      Whether alpha(timesteps[0]) == 0 (the grid starts at pure noise), or None for a traced grid or
      a schedule without alpha, sigma and logsnr.
    """
    if not is_concrete(timesteps, schedule) or not all(hasattr(schedule, f) for f in ("alpha", "sigma", "logsnr")):
        return None
    key = (id(schedule), id(timesteps))
    passed = _PASSED_GRIDS.get(key)
    if passed is not None and passed[0] is schedule and passed[1] is timesteps:
        _PASSED_GRIDS.move_to_end(key)
        return passed[2]
    pure_noise_start = _check_grid_on(schedule, timesteps, name)
    if _immutable(schedule, timesteps):
        _PASSED_GRIDS[key] = (schedule, timesteps, pure_noise_start)
        while len(_PASSED_GRIDS) > 8:
            _PASSED_GRIDS.popitem(last=False)
    return pure_noise_start


def _check_grid_on(schedule, timesteps, name) -> bool:
    ts = np.asarray(timesteps)
    if not (jnp.issubdtype(ts.dtype, jnp.floating) or jnp.issubdtype(ts.dtype, jnp.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {ts.dtype}")
    if not np.all(np.isfinite(ts)):
        raise ValueError(f"{name} must be finite times, got {ts}")
    with np.errstate(all="ignore"), on_host():
        t = jnp.asarray(ts)
        alpha, sigma = np.asarray(schedule.alpha(t)), np.asarray(schedule.sigma(t))
        logsnr = np.asarray(schedule.logsnr(t))
    alpha, sigma, logsnr = np.broadcast_arrays(alpha, sigma, logsnr, ts)[:3]
    bad = ~np.isfinite(alpha) | ~np.isfinite(sigma) | ((alpha == 0) & (sigma == 0)) | np.isnan(logsnr)
    if np.any(bad):
        i = int(np.argmax(bad))
        a, s, snr = (np.ravel(v)[i].item() for v in (alpha, sigma, logsnr))
        raise ValueError(
            f"{name}[{i}]={ts[i].item()!r} is a time where {type(schedule).__name__} is undefined "
            f"(alpha={a!r}, sigma={s!r}, logsnr={snr!r}); every time must have finite alpha and sigma, "
            "not both 0, and a logSNR that is not NaN"
        )
    return bool(np.ravel(alpha)[0] == 0)


def array_shape(name: str, shape) -> tuple:
    """`shape` as a tuple; a ValueError naming `name` unless it is a non-empty sequence of integers >= 1."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError(f"{name} must be a non-empty tuple of integers >= 1, (B, *event), got {shape!r}")
    return tuple(int(d) for d in dims)


def start_noise(name: str, x, *, batch_axes: int = 1, tokens: bool = False) -> None:
    """A ValueError naming `name` unless x is a real floating array (integer tokens when `tokens`) with
    `batch_axes` leading batch axes, no empty axis, and (when concrete) no NaN or inf."""
    axes = "(B, *event)" if batch_axes == 1 else "(B, K, *event)"
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(x).dtype
        except (TypeError, ValueError):
            dtype = None
    if dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise ValueError(f"{name} must be an array of shape {axes}, got {x!r}")
    if np.dtype(dtype).kind in "OUSV" and not jnp.issubdtype(dtype, jnp.floating):  # (bfloat16's kind is V)
        raise ValueError(f"{name} must be an array of shape {axes}, got {x!r}")
    shape = np.shape(x)
    if len(shape) < batch_axes:
        raise ValueError(f"{name} must have shape {axes}, got shape {shape}")
    if 0 in shape:
        names = ("B", "K")[:batch_axes]
        where = ", ".join(f"{n} = 0" for n, d in zip(names, shape) if d == 0) or "an empty event axis"
        raise ValueError(f"{name} must not be empty, got shape {shape} ({where})")
    if tokens:
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"{name} must hold integer tokens for a token solver, got dtype {dtype}")
        return
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype (float32, float64, bfloat16, ...), got dtype {dtype}")
    if is_concrete(x):
        ok, count = all_finite(x)
        if not ok:
            raise ValueError(f"{name} must be finite, got {count} NaN or inf entries of {np.size(x)} (shape {shape})")


def batch(name: str, tree, size: int, other: str = "x_T") -> None:
    """A ValueError naming `name` unless every leaf of `tree` with an axis has `size` rows (scalars broadcast)."""
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) >= 1 and np.shape(leaf)[0] != size:
            raise ValueError(f"{name} has batch {np.shape(leaf)[0]} but {other} has batch {size} "
                             f"({name} leaves must have leading axis {size}, or be scalars)")  # fmt: skip


def num_classes_of(denoiser) -> int | None:
    """The `num_classes` of the diffjax network inside `denoiser` (through wrappers' `.denoiser`), or None."""
    for _ in range(16):
        if denoiser is None:
            return None
        module = getattr(getattr(denoiser, "apply_fn", None), "module", None)
        n = getattr(module, "num_classes", None)
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            return int(n)
        denoiser = getattr(denoiser, "denoiser", None)
    return None


def labels(name: str, cond, num_classes: int | None) -> None:
    """When concrete, a ValueError naming `name` unless its integer leaves lie in [0, num_classes] (the null label)."""
    if num_classes is None or cond is None:
        return
    for leaf in jax.tree.leaves(cond):
        dtype = getattr(leaf, "dtype", None)
        dtype = np.asarray(leaf).dtype if dtype is None else dtype
        if not jnp.issubdtype(dtype, jnp.integer) or not is_concrete(leaf):
            continue
        values = np.asarray(leaf)
        bad = (values < 0) | (values > num_classes)
        if np.any(bad):
            raise ValueError(f"{name} must hold class labels in [0, {num_classes}] ({num_classes} is the null label "
                             f"of CFG), got {values[bad].ravel()[:8].tolist()} in {name}")  # fmt: skip


def output_shape(name: str, out, n: int) -> None:
    """A ValueError naming `name` unless `out` (a verifier's or reward's output) has shape (n,); static shapes."""
    if np.shape(out) != (n,):
        raise ValueError(f"{name} must return one score per sample, shape ({n},), got shape {np.shape(out)}")
