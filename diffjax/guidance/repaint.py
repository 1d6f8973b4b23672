r"""RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool 2022, "RePaint: Inpainting using Denoising
Diffusion Probabilistic Models"): inpainting with an unconditional model by replacing the known region
and resampling ("jumping back") along the grid.

Every model step t -> t' first replaces the known region (`mask` = 1) of x_t by a fresh forward draw
of the measurement at the current level,

    x_t <- m * (alpha_t y + sigma_t z) + (1 - m) * x_t,

then takes the solver's step (the official code's form, `inpa_inj_sched_prev`, before the model
call). At the jump points the state goes back up the grid by `jump_length` steps with the exact
forward kernel q(x_{t_i} | x_{t_{i+j}}) = N(alpha_{t_i} / alpha_{t_{i+j}} x, sigma_{t_i}^2 g)
(`gaussian.forward`; the official code's j one-level undo steps compose exactly to it) and walks
down again, so the known and unknown regions harmonise.

The schedule is the official `get_schedule_jump` (andreas128/RePaint@8e2a055, `scheduler.py`) mapped
to grid indices: with T = num_steps levels, jump points at levels {0, j, 2j, ...} below T - j
(level l is grid index T - 1 - l, the state after the step into it), each firing r - 1 times
(r = jump_n_sample). `repaint_schedule` lists only the down steps, each flagged when a jump precedes
it, so the sampler is one `lax.scan` with NFE = the number of down steps, T + n_j (r - 1) j with
n_j = |range(0, T - j, j)|, and no branches: a jump is a `where` over a cheap forward draw.

Differences from the official code: `paste=True` (the default) puts y on the known region of the
output, while the official code returns the model's last sample there; any solver can take the
steps (DDPM by default, the paper's), and its state is re-initialised at every jump because a
multistep history is not valid across one (its step counter restarts with it).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks, gaussian
from diffjax.arrays import noise_like
from diffjax.sampling import check_denoiser, check_grid
from diffjax.solvers.ancestral import ddpm
from diffjax.solvers.base import Solver, check_solver


class RePaintInfo(NamedTuple):
    """What `repaint` reports besides the sample."""

    nfe: jax.Array  # total network evaluations (one per down step for one-call solvers)
    jumps: jax.Array  # number of jumps back, each over jump_length grid steps


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10):
    """RePaint's resampling schedule (the official `get_schedule_jump`) as the list of its down steps.

    Walking the grid from index 0 (noise) to `num_steps` (data), after each step into index
    T - 1 - p for a jump point p in {0, j, 2j, ...} with p < T - j, the state jumps back to index
    T - 1 - p - j, r - 1 times per point. For (T, j, r) = (250, 10, 10), the paper's, that is 2410
    down steps and 216 jumps (2160 forward levels).

    Args:
      num_steps: T, the number of grid steps (levels), >= 2.
      jump_length: j, how many grid steps a jump goes back up, in [1, T - 1].
      jump_n_sample: r, how many times each jump point's segment is walked down (r - 1 jumps), >= 1.

    Returns:
      (indices, jumps): int32 and bool numpy arrays, one entry per down step in order; entry k is the
      step timesteps[indices[k]] -> timesteps[indices[k] + 1], and jumps[k] says that the state
      first jumps from timesteps[indices[k] + j] up to timesteps[indices[k]].

    Raises:
      ValueError: if an argument is not an integer in its range.
    """
    steps = _checks.positive_int("num_steps", num_steps, 2)
    j = _checks.positive_int("jump_length", jump_length)
    r = _checks.positive_int("jump_n_sample", jump_n_sample)
    if j >= steps:
        raise ValueError(f"jump_length must be < num_steps = {steps}, got {j}")
    remaining = {steps - 1 - p: r - 1 for p in range(0, steps - j, j)}  # grid index -> jumps left
    indices, jumps = [], []
    i, jumped = 0, False
    while i < steps:
        indices.append(i)
        jumps.append(jumped)
        i, jumped = i + 1, False
        if remaining.get(i, 0) > 0:
            remaining[i] -= 1
            i, jumped = i - j, True
    return np.asarray(indices, np.int32), np.asarray(jumps, bool)


@functools.partial(jax.jit, static_argnames=("jump_length", "paste"))
def _repaint(solver, denoiser, timesteps, key, x_T, y, mask, indices, jumps, jump_length, paste):
    sched = denoiser.schedule
    last = timesteps.shape[0] - 1
    keys = jax.random.split(key, indices.shape[0])
    known = jnp.broadcast_to(mask > 0, x_T.shape[1:])

    def body(state, entry):
        i, jump, key = entry
        t, t_next = timesteps[i], timesteps[i + 1]
        x = state.x
        back = gaussian.forward(sched, x, timesteps[jnp.minimum(i + jump_length, last)], t)
        x = jnp.where(jump, back.sample(jax.random.fold_in(key, 2)), x)
        y_t = sched.alpha(t) * y + sched.sigma(t) * noise_like(jax.random.fold_in(key, 1), x)
        x = jnp.where(known, y_t, x).astype(x_T.dtype)
        state = jax.tree.map(lambda a, b: jnp.where(jump, a, b), solver.init(x, timesteps), solver.with_x(state, x))
        state, info = solver.step(state, key, t, t_next, denoiser)
        return state, info.nfe

    state, nfe = jax.lax.scan(body, solver.init(x_T, timesteps), (indices, jumps, keys))
    x = jnp.where(known, y, state.x) if paste else state.x
    return x, RePaintInfo(jnp.sum(nfe), jnp.sum(jumps.astype(jnp.int32)))


def repaint(
    denoiser,
    timesteps,
    key,
    x_T,
    y,
    mask,
    *,
    solver: Solver | None = None,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    paste: bool = True,
    cond=None,
):
    """RePaint inpainting (Lugmayr et al. 2022): sample the unknown region (`mask` = 0) given y on the
    known region with an unconditional model, replacing the known region before every step and
    jumping back along the grid (`repaint_schedule`); see the module docstring. One jitted program.

    Args:
      denoiser: the model (a `Denoiser`, or any `denoiser(x, t)` with a `.schedule`).
      timesteps: the grid, noise to data (T = len - 1 levels; the paper: 250 DDPM steps).
      key: a typed key, split once into one key per down step; entry k's solver step uses key k
        itself, its replacement noise `fold_in(key_k, 1)` and its jump noise `fold_in(key_k, 2)`, so
        with jump_n_sample = 1 and an all-zero mask this is `dj.sample(solver, ...)` bit for bit.
      x_T: the start (B, *event) at timesteps[0] (`prior_sample`).
      y: the known image (B, *event); only its entries where mask = 1 are read.
      mask: 0/1 of the event's shape, 1 = known.
      solver: the step; any solver without head or tail steps (default `ddpm()`, the paper's).
      jump_length: j, grid steps per jump back, in [1, T - 1] (paper: 10).
      jump_n_sample: r, walks down each jump segment, >= 1 (paper: 10); 1 means no jumps.
      paste: put y on the known region of the output (True), or return the last sample as the
        official code does (False).
      cond: the network's condition (class labels (B,), ...), or None.

    Returns:
      (x, RePaintInfo): the inpainted samples (B, *event) and the NFE and number of jumps.

    Raises:
      ValueError: if the solver has head or tail steps or is not a solver, the denoiser, grid or key
        are invalid, y's shape is not x_T's, the mask is not 0/1 of the event's shape, or jump_length,
        jump_n_sample or paste are out of range.
    """
    solver = ddpm() if solver is None else check_solver("solver", solver)
    if solver.head or solver.tail:
        raise ValueError(f"solver must have no head or tail steps (a jump restarts it anywhere), got {solver!r}")
    check_denoiser(denoiser)
    check_grid(timesteps)
    _checks.typed_key("key", key)
    if jnp.ndim(x_T) < 1:
        raise ValueError(f"x_T must have a batch axis, shape (B, *event), got shape {jnp.shape(x_T)}")
    x_T = jnp.asarray(x_T)
    event = x_T.shape[1:]
    if jnp.shape(y) != x_T.shape:
        raise ValueError(f"y must have the shape of x_T (B, *event) = {x_T.shape}, got {jnp.shape(y)}")
    mask = np.asarray(mask)
    if mask.shape != event or not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"mask must be 0/1 with the event's shape {event}, got shape {mask.shape}")
    if not isinstance(paste, bool):
        raise ValueError(f"paste must be a bool, got {paste!r}")
    indices, jumps = repaint_schedule(jnp.shape(timesteps)[0] - 1, jump_length, jump_n_sample)
    if cond is not None:
        denoiser = denoiser.replace(cond=cond)
    return _repaint(
        solver, denoiser, jnp.asarray(timesteps), key, x_T, jnp.asarray(y, x_T.dtype), jnp.asarray(mask, x_T.dtype),
        jnp.asarray(indices), jnp.asarray(jumps), jump_length, paste,
    )  # fmt: skip
