"""`sample`: run any `Solver` over a time grid as one `lax.scan` inside one `jit`.

The grid is an array argument: new values reuse the compiled sampler, only its length is a
shape. The key is split once per step, so step i always gets the same bits for the same seed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.denoiser import Denoiser
from diffjax.schedules import Schedule
from diffjax.solvers.base import Solver


class SampleInfo(NamedTuple):
    nfe: jax.Array  # total network evaluations
    trajectory: jax.Array | None = None  # (n_steps + 1, *x.shape): x_T, then the state after each step
    x0_trajectory: jax.Array | None = None  # (n_steps, *x.shape): the data prediction of each step


def scan_steps(solver: Solver, state, keys, timesteps, denoise, *, return_trajectory: bool = False):
    """Apply the solver over consecutive grid pairs: its `head` steps, one scan of `step`, its `tail`.

    Returns the final state, the NFE per step (n,), and, if asked, the stacked states and x0s.
    """
    n, n_head, n_tail = keys.shape[0], len(solver.head), len(solver.tail)
    nfes, saved = [], []

    def unrolled(state, step_fn, i):
        state, info = step_fn(state, keys[i], timesteps[i], timesteps[i + 1], denoise)
        nfes.append(info.nfe[None])
        saved.append((state.x[None], info.x0[None]))
        return state

    def body(state, xs):
        key, t, t_next = xs
        state, info = solver.step(state, key, t, t_next, denoise)
        return state, (info.nfe, (state.x, info.x0) if return_trajectory else None)

    for i, step_fn in enumerate(solver.head):
        state = unrolled(state, step_fn, i)
    middle = slice(n_head, n - n_tail)
    state, (nfe, middle_saved) = jax.lax.scan(
        body, state, (keys[middle], timesteps[:-1][middle], timesteps[1:][middle])
    )
    nfes.append(nfe)
    saved.append(middle_saved)
    for i, step_fn in enumerate(solver.tail):
        state = unrolled(state, step_fn, n - n_tail + i)
    trajectory = None
    if return_trajectory:
        trajectory = jax.tree.map(lambda *parts: jnp.concatenate(parts), *saved)
    return state, jnp.concatenate(nfes), trajectory


@functools.partial(jax.jit, static_argnames=("solver", "return_trajectory"))
def _sample(solver, denoiser, timesteps, key, x_T, return_trajectory):
    keys = jax.random.split(key, timesteps.shape[0] - 1)
    state = solver.init(x_T, timesteps)
    state, nfe, saved = scan_steps(solver, state, keys, timesteps, denoiser, return_trajectory=return_trajectory)
    info = SampleInfo(nfe=jnp.sum(nfe))
    if return_trajectory:
        xs, x0s = saved
        info = info._replace(trajectory=jnp.concatenate([x_T[None], xs]), x0_trajectory=x0s)
    return state.x, info


def check_grid(timesteps):
    """Validate a time grid on the host: 1-D, >= 2 entries, strictly decreasing when concrete."""
    if jnp.ndim(timesteps) != 1 or jnp.shape(timesteps)[0] < 2:
        raise ValueError(f"timesteps must be a 1-D array of >= 2 times, got shape {jnp.shape(timesteps)}")
    if _checks.is_concrete(timesteps):
        values = np.asarray(timesteps)
        if not np.all(np.diff(values) < 0):
            raise ValueError(f"timesteps must decrease strictly from noise to data, got {values}")


def sample(
    solver: Solver,
    denoiser: Denoiser,
    timesteps,
    key,
    x_T,
    *,
    cond=None,
    return_trajectory: bool = False,
):
    """Sample from `denoiser` with `solver` along `timesteps` (noise to data), starting at x_T.

    Returns (x, SampleInfo). Build `solver` once and reuse it: it is a static argument, so a new
    solver object compiles anew, while new `timesteps` values, keys, starts or params do not.
    """
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a diffjax Solver, got {solver!r}")
    if not callable(denoiser) or not isinstance(getattr(denoiser, "schedule", None), Schedule):
        raise ValueError(f"denoiser must be callable as denoiser(x, t) and have a .schedule, got {denoiser!r}")
    check_grid(timesteps)
    n_special = len(solver.head) + len(solver.tail)
    if jnp.shape(timesteps)[0] - 1 < n_special:
        raise ValueError(
            f"timesteps has {jnp.shape(timesteps)[0] - 1} steps but this solver needs at least {n_special} "
            f"({len(solver.head)} warm-up and {len(solver.tail)} final steps)"
        )
    _checks.typed_key("key", key)
    if jnp.ndim(x_T) < 1:
        raise ValueError(f"x_T must have a batch axis, shape (B, *event), got shape {jnp.shape(x_T)}")
    if cond is not None:
        denoiser = denoiser.replace(cond=cond)
    return _sample(solver, denoiser, jnp.asarray(timesteps), key, jnp.asarray(x_T), return_trajectory)


def prior_sample(key, schedule: Schedule, timesteps, shape, *, data_std: float = 0.0, dtype=None):
    """Start noise for the grid's first time T: sqrt(alpha_T^2 data_std^2 + sigma_T^2) z, z ~ N(0, I).

    With data_std = 0 this is sigma_T z: z itself for rectified flow at t = 1, sigma_max z for
    VE/EDM (as score_sde and EDM start), and sigma_T z ~ z for VP schedules.
    """
    _checks.typed_key("key", key)
    check_grid(timesteps)
    data_std = _checks.in_range("data_std", data_std, 0.0, float("inf"))
    t = jnp.asarray(timesteps)[0]
    scale = jnp.sqrt(schedule.alpha(t) ** 2 * data_std**2 + schedule.sigma(t) ** 2)
    z = jax.random.normal(key, tuple(shape), dtype or jnp.result_type(float))
    return (scale * z).astype(z.dtype)
