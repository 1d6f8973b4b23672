"""The solver interface, in the style of optax's `GradientTransformation` and blackjax's kernels.

    state = solver.init(x_T, timesteps)
    state, info = solver.step(state, key, t, t_next, denoise)

`denoise(x, t) -> Prediction` is a `Denoiser` (or anything with that call and a `.schedule`).
`step` is pure: every stochastic step draws its noise from `key` only, as `noise_like(key, x)`. States are fixed-shape
pytrees with the current sample in `state.x`, so a whole sampler is one `lax.scan`.
Steps that cost a different number of network evaluations cannot share one `lax.scan` without
branching, so a solver may name them statically: `head` steps replace `step` on the first
intervals of the grid (F-PNDM's Runge-Kutta warm-up), `tail` steps on the last ones (EDM's Heun
ends with an Euler step, DPM-Solver-fast with orders 2, 1). The middle is one scan.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class StepInfo(NamedTuple):
    nfe: jax.Array  # network evaluations spent in this step (int32)
    x0: jax.Array  # the data prediction the step used


class State(NamedTuple):
    """State of a one-step solver: only the current sample."""

    x: jax.Array


class Solver(NamedTuple):
    init: Callable
    step: Callable
    head: tuple[Callable, ...] = ()
    tail: tuple[Callable, ...] = ()


def noise_like(key, x):
    """N(0, I) noise shaped like x, drawn in float32 and cast: the same key gives the same noise
    in float32, float64 and bfloat16 runs."""
    return jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)


def single_step_init(x, timesteps):
    del timesteps
    return State(x)


def push(history, value):
    """Newest-first fixed-size history: drop the oldest entry and put `value` at index 0."""
    return jnp.concatenate([value[None].astype(history.dtype), history[:-1]], axis=0)


def denoise_to_zero(solver: Solver) -> Solver:
    """`solver` followed by one more evaluation at the grid's last time, returning its data
    prediction x0 (DDPM's and score_sde's last denoising step; DPM-Solver's `denoise_to_zero`).
    It costs one NFE and no extra grid point."""

    def last(state, key, t, t_next, denoise):
        state, info = (solver.tail[-1] if solver.tail else solver.step)(state, key, t, t_next, denoise)
        x0 = denoise(state.x, t_next).x0
        return state._replace(x=x0.astype(state.x.dtype)), StepInfo(info.nfe + 1, info.x0)

    tail = solver.tail[:-1] if solver.tail else ()
    return solver._replace(tail=tail + (last,))


class History(NamedTuple):
    """A fixed-size ring buffer of earlier arrays (model outputs of past steps).

    `record` writes one slot in place (a dynamic-update-slice of the scan carry) instead of shifting
    every slot as `push` does; entry j (0 = newest) is read without moving the others.
    """

    values: jax.Array  # (size, *shape)
    newest: jax.Array  # int32: the slot holding entry 0


def empty_history(size, like):
    return History(jnp.zeros((size,) + like.shape, like.dtype), jnp.int32(0))


def record(history, value):
    slot = (history.newest - 1) % history.values.shape[0]
    values = jax.lax.dynamic_update_index_in_dim(history.values, value.astype(history.values.dtype), slot, 0)
    return History(values, slot)


def read(history, j):
    """Entry j, 0 being the newest recorded."""
    return jax.lax.dynamic_index_in_dim(history.values, (history.newest + j) % history.values.shape[0], 0, False)


def weighted_sum(history, weights):
    """sum_j weights[j] * read(history, j), in one pass over the buffer."""
    return jnp.tensordot(jnp.roll(weights, history.newest).astype(history.values.dtype), history.values, axes=1)
