"""The solver interface, in the style of optax's `GradientTransformation` and blackjax's kernels.

    state = solver.init(x_T, timesteps)
    state, info = solver.step(state, key, t, t_next, denoise)

`denoise(x, t) -> Prediction` is a `Denoiser` (or anything with that call and a `.schedule`).
`step` is pure: every stochastic step draws its noise from `key` only. States are fixed-shape
pytrees with the current sample in `state.x`, so a whole sampler is one `lax.scan`.
`final_step`, when a solver has one, replaces `step` on the last interval of the grid (EDM's
Heun ends with an Euler step, so it never evaluates the network at sigma = 0).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax


class StepInfo(NamedTuple):
    nfe: jax.Array  # network evaluations spent in this step (int32)
    x0: jax.Array  # the data prediction the step used


class State(NamedTuple):
    """State of a one-step solver: only the current sample."""

    x: jax.Array


class Solver(NamedTuple):
    init: Callable
    step: Callable
    final_step: Callable | None = None


def single_step_init(x, timesteps):
    del timesteps
    return State(x)
