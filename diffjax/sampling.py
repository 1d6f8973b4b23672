"""`sample`: run any `Solver` over a time grid as one `lax.scan` inside one `jit`.

The grid is an array argument: new values reuse the compiled sampler, only its length is a
shape. The solver is a value (a pytree whose options are static), so equal solvers share the
compiled sampler. The key is split once per step, so step i always gets the same bits for the
same seed. `run_steps` is the step driver that every sampler and steering method runs through.
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
from diffjax.solvers.base import Solver, check_solver, check_start_prediction


class SampleInfo(NamedTuple):
    """What `sample` reports besides the sample: the NFE and, if asked, the trajectory."""

    nfe: jax.Array  # total network evaluations
    trajectory: jax.Array | None = None  # (n_steps + 1, *x.shape): x_T, then the state after each step
    x0_trajectory: jax.Array | None = None  # (n_steps, *x.shape): the data prediction of each step


def run_steps(solver: Solver, body, carry, num_steps: int):
    """The one step driver: `body(carry, i) -> (carry, out)` for i = 0 .. num_steps - 1, with the
    solver's head steps and tail steps unrolled (i a Python int there) and the steps between them
    as one `lax.scan` (i traced). `body` picks its step function with `solver.step_at(i, num_steps)`.

    `sample`, FK steering, importance sampling, TDS, SMCDiff and the searches all run through it.

    Returns:
      The final carry and the outputs stacked along a leading axis of length num_steps.
    """
    n_head, n_tail = len(solver.head), len(solver.tail)
    outs = []
    for i in range(n_head):
        carry, out = body(carry, i)
        outs.append(jax.tree.map(lambda a: a[None], out))
    carry, out = jax.lax.scan(body, carry, jnp.arange(n_head, num_steps - n_tail))
    outs.append(out)
    for i in range(num_steps - n_tail, num_steps):
        carry, out = body(carry, i)
        outs.append(jax.tree.map(lambda a: a[None], out))
    return carry, jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)


def scan_steps(solver: Solver, state, keys, timesteps, denoise, *, return_trajectory: bool = False,
               return_finite: bool = False):  # fmt: skip
    """Apply the solver over consecutive grid pairs from `state`, step i with keys[i].

    Args:
      solver: the `Solver`.
      state: its state at timesteps[0].
      keys: (n,) typed keys, one per step.
      timesteps: the (n + 1,) grid.
      denoise: the denoiser.
      return_trajectory: also stack every state's x and every step's x0.
      return_finite: also return (n,) bools, "x is finite after step i" (a static switch).

    Returns:
      (final state, NFE per step (n,), the stacked (x, x0) or None), plus the (n,) finite flags
      when `return_finite`.
    """

    def body(state, i):
        step_fn = solver.step_at(i, keys.shape[0])
        state, info = step_fn(state, keys[i], timesteps[i], timesteps[i + 1], denoise)
        out = (info.nfe, (state.x, info.x0) if return_trajectory else None)
        return state, (out + (jnp.all(jnp.isfinite(state.x)),) if return_finite else out)

    state, outs = run_steps(solver, body, state, keys.shape[0])
    return (state, *outs)


def raise_if_nonfinite(name: str, finite, timesteps) -> None:
    """On the host after a compiled call: raise a FloatingPointError naming the first step whose
    state was not finite, and its times from the grid; nothing when every step was finite, or when
    `finite` is traced (inside `jit` or `vmap` it cannot be read).

    Args:
      name: the caller's name, for the message ("sample", "fk_steer").
      finite: (n,) bools, or (..., n) for batched calls, "the state is finite after step i".
      timesteps: the (n + 1,) grid the steps ran on.

    Raises:
      FloatingPointError: "name: x became non-finite at step i (t = t_i -> t_{i+1})".
    """
    if not _checks.is_concrete(finite, timesteps):
        return
    finite = np.asarray(finite).reshape(-1, np.shape(finite)[-1]).all(axis=0)
    if finite.all():
        return
    i = int(np.argmin(finite))
    ts = np.asarray(timesteps, np.float64)
    raise FloatingPointError(f"{name}: x became non-finite at step {i} (t = {ts[i]:.4g} -> {ts[i + 1]:.4g})")


@functools.partial(jax.jit, static_argnames=("return_trajectory", "debug_nans"))
def _sample(solver, denoiser, timesteps, key, x_T, return_trajectory, debug_nans=False):
    keys = jax.random.split(key, timesteps.shape[0] - 1)
    state = solver.init(x_T, timesteps)
    state, nfe, saved, *finite = scan_steps(solver, state, keys, timesteps, denoiser,
                                            return_trajectory=return_trajectory, return_finite=debug_nans)  # fmt: skip
    info = SampleInfo(nfe=jnp.sum(nfe))
    if return_trajectory:
        xs, x0s = saved
        info = info._replace(trajectory=jnp.concatenate([x_T[None], xs]), x0_trajectory=x0s)
    return (state.x, info, finite[0]) if debug_nans else (state.x, info)


check_grid = _checks.grid


def check_steps(solver: Solver, timesteps) -> None:
    """Raise a ValueError unless the grid has room for the solver's head and tail steps."""
    n_special = len(solver.head) + len(solver.tail)
    if jnp.shape(timesteps)[0] - 1 < n_special:
        raise ValueError(
            f"timesteps has {jnp.shape(timesteps)[0] - 1} steps but this solver needs at least {n_special} "
            f"({len(solver.head)} warm-up and {len(solver.tail)} final steps)"
        )


def check_denoiser(denoiser) -> None:
    """Raise a ValueError unless `denoiser` is callable as denoiser(x, t) and has a `.schedule`."""
    if not callable(denoiser) or not isinstance(getattr(denoiser, "schedule", None), Schedule):
        raise ValueError(f"denoiser must be callable as denoiser(x, t) and have a .schedule, got {denoiser!r}")


def check_inputs(denoiser, timesteps, x_T, cond=None, *, batch_axes: int = 1, tokens: bool = False) -> None:
    """The input checks of `sample` and the steering samplers, on the host before tracing: the grid's
    times under the denoiser's schedule (`_checks.grid_on`), x_T (`_checks.start_noise`: a floating,
    non-empty array, finite when concrete; integer tokens when `tokens`), and `cond`: its batch against
    x_T's and, for a class-conditional network, its labels in [0, num_classes]; and that the denoiser
    gives x0 at the grid's start (`solvers.base.check_start_prediction`)."""
    schedule = getattr(denoiser, "schedule", None)
    if isinstance(schedule, Schedule):
        _checks.grid_on(schedule, timesteps)
    check_start_prediction(denoiser, timesteps)
    _checks.start_noise("x_T", x_T, batch_axes=batch_axes, tokens=tokens)
    _checks.batch("cond", cond, jnp.shape(x_T)[0])
    _checks.labels("cond", cond, _checks.num_classes_of(denoiser))


def sample(
    solver: Solver,
    denoiser: Denoiser,
    timesteps,
    key,
    x_T,
    *,
    cond=None,
    return_trajectory: bool = False,
    debug_nans: bool = False,
):
    """Sample from `denoiser` with `solver` along `timesteps` (noise to data), starting at x_T.

    Args:
      solver: a `Solver` value; equal solvers (`ddim(eta=0.5) == ddim(eta=0.5)`) share one compiled
        sampler.
      denoiser: a `Denoiser` (or any callable `denoiser(x, t)` with a `.schedule`); its parameters
        are data, so new weights reuse the compiled sampler.
      timesteps: 1-D grid from noise to data; new values reuse the compiled sampler, only its length
        is a shape.
      key: a typed key (`jax.random.key(seed)`), split once per step.
      x_T: the start (B, *event) at timesteps[0] (`prior_sample`).
      cond: the network's condition (class labels (B,), ...), or None.
      return_trajectory: also return every state and data prediction.
      debug_nans: find where NaNs start: the compiled program (a separate one; the default program
        is unchanged) also returns, per step, whether x is finite after it, and after the call a
        FloatingPointError names the first non-finite step and its times, e.g. "sample: x became
        non-finite at step 3 (t = 0.41 -> 0.3)". Checked on the host, so only when `sample` is
        called outside `jit`/`vmap`; it waits for the result.

    Returns:
      (x, SampleInfo): the sample at the grid's last time and the NFE (and trajectory).

    Raises:
      FloatingPointError: with `debug_nans`, if x became non-finite at some step.
    """
    check_solver("solver", solver)
    check_denoiser(denoiser)
    check_grid(timesteps)
    check_steps(solver, timesteps)
    _checks.typed_key("key", key)
    check_inputs(denoiser, timesteps, x_T, cond)
    if cond is not None:
        denoiser = denoiser.replace(cond=cond)
    timesteps = jnp.asarray(timesteps)
    if not debug_nans:
        return _sample(solver, denoiser, timesteps, key, jnp.asarray(x_T), return_trajectory)
    x, info, finite = _sample(solver, denoiser, timesteps, key, jnp.asarray(x_T), return_trajectory, True)
    raise_if_nonfinite("sample", finite, timesteps)
    return x, info


def prior_sample(key, schedule: Schedule, timesteps, shape, *, data_std: float = 0.0, dtype=None):
    """Start noise for the grid's first time T: sqrt(alpha_T^2 data_std^2 + sigma_T^2) z, z ~ N(0, I).

    With data_std = 0 this is sigma_T z: z itself for rectified flow at t = 1, sigma_max z for
    VE/EDM (as score_sde and EDM start), and sigma_T z ~ z for VP schedules.
    """
    _checks.typed_key("key", key)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    check_grid(timesteps)
    _checks.grid_on(schedule, timesteps)
    shape = _checks.array_shape("shape", shape)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (float32, float64, bfloat16, ...) or None, got {dtype!r}")
    data_std = _checks.in_range("data_std", data_std, 0.0, float("inf"))
    t = jnp.asarray(timesteps)[0]
    scale = jnp.sqrt(schedule.alpha(t) ** 2 * data_std**2 + schedule.sigma(t) ** 2)
    z = jax.random.normal(key, tuple(shape), dtype or jnp.result_type(float))
    return (scale * z).astype(z.dtype)
