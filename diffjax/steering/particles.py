"""The particle population that every steering sampler returns, and the three ways to read it:
all particles with their weights (`weighted`), one draw per condition (`resampled`, a sample of
the target), or the highest reward (`best_of`, a search result). Named apart because they are
different things (FK's code returns the argmax and calls it a sample).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.sampling import check_grid, check_inputs
from diffjax.steering import resampling


class Particles(NamedTuple):
    """FK steering's output for B conditions x K particles; see `weighted`, `resampled`, `best_of`."""

    x: jax.Array  # (B, K, *event) final particles
    log_weights: jax.Array  # (B, K) normalised log-weights (logsumexp over K is 0)
    rewards: jax.Array  # (B, K) r(x0, c) of the final particles
    log_z: jax.Array  # (B,) log Z-hat, the SMC estimate of log E_p[exp(lambda r(x0))]
    ess: jax.Array  # (steps, B) effective sample size after each step's reweighting
    resampled: jax.Array  # (steps, B) bool
    ancestors: jax.Array  # (steps, B, K) int32: particle j after step i descends from ancestors[i, :, j]
    degenerate: jax.Array  # (B,) int32: steps at which every log-weight was -inf (uniform fallback)
    nfe: jax.Array  # network evaluations per particle


def check_run(timesteps, key, x_T, schedule, resampler, *, denoiser=None, cond=None,
              tokens: bool = False) -> resampling.Schedule:  # fmt: skip
    """The checks every sampler shares, on the host: the grid, the key, x_T (B, K, *event), the
    resampler's name and the schedule (default: every step but the last), which is returned. With
    `denoiser`, also `sampling.check_inputs`: the grid under its schedule, x_T's dtype, emptiness and
    finiteness (integer tokens when `tokens`), and `cond`'s batch and labels."""
    check_grid(timesteps)
    _checks.typed_key("key", key)
    if jnp.ndim(x_T) < 3:
        raise ValueError(f"x_T must have shape (B, K, *event), got shape {jnp.shape(x_T)}")
    if denoiser is not None:
        check_inputs(denoiser, timesteps, x_T, cond, batch_axes=2, tokens=tokens)
    _checks.one_of("resampler", resampler, tuple(resampling.RESAMPLERS))
    steps = jnp.shape(timesteps)[0] - 1
    schedule = resampling.resampling_schedule(steps) if schedule is None else schedule
    if len(schedule.steps) != steps:
        raise ValueError(f"schedule must cover the grid's {steps} steps, got {len(schedule.steps)}")
    return schedule


def collect(x, log_weights, rewards, log_z, degenerate, trace, num_particles: int, nfe) -> Particles:
    """`Particles` from the flat (N, ...) final state and weights: the weights normalised per
    condition, their log-mean added to log Z-hat. `trace` = (ess, resampled, ancestors) per step."""
    k = num_particles
    b = log_weights.shape[0] // k
    split = lambda a: a.reshape((b, k) + a.shape[1:])  # noqa: E731
    normalised = jax.vmap(resampling.normalise)(split(log_weights))
    ess, resampled, ancestors = trace
    return Particles(
        x=split(x),
        log_weights=normalised.log_weights,
        rewards=split(rewards),
        log_z=log_z + normalised.log_total - jnp.log(k),
        ess=ess,
        resampled=resampled,
        ancestors=ancestors,
        degenerate=degenerate + normalised.degenerate,
        nfe=nfe,
    )


def weighted(particles: Particles):
    """All particles with their normalised weights: (x (B, K, *event), weights (B, K))."""
    return particles.x, jnp.exp(particles.log_weights)


def resampled(key, particles: Particles) -> jax.Array:
    """One particle per condition drawn by weight, (B, *event): a sample of p_target."""
    b = particles.x.shape[0]
    pick = jax.vmap(lambda key, lw: jax.random.categorical(key, lw))(jax.random.split(key, b), particles.log_weights)
    return particles.x[jnp.arange(b), pick]


def best_of(particles: Particles) -> jax.Array:
    """The particle with the highest final reward per condition, (B, *event): a search result,
    not a sample of p_target (it ignores the weights)."""
    return particles.x[jnp.arange(particles.x.shape[0]), jnp.argmax(particles.rewards, axis=1)]


def _outside_diffjax() -> int:
    """The stack level of the first caller outside the diffjax package, for `warnings.warn` called
    from the function that calls this."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1  # the function calling warnings.warn is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def warn_degenerate(name: str, any_degenerate, particles: Particles) -> None:
    """On the host after a compiled call: one RuntimeWarning when the flag `any_degenerate` says some
    population had weight 0 on every particle at some step (NaN rewards, say) and fell back to uniform
    weights; nothing when the flag is traced (inside `jit` or `vmap`). The warning points at the first
    caller outside diffjax.

    Args:
      name: the caller's name, for the message.
      any_degenerate: a bool returned by the compiled call.
      particles: its `Particles` (`degenerate` counts the steps per population).
    """
    if not _checks.is_concrete(any_degenerate, particles.degenerate) or not bool(any_degenerate):
        return
    count = np.asarray(particles.degenerate)
    warnings.warn(
        f"{name}: {int(np.sum(count > 0))} of {count.size} populations had weight 0 on every particle at some "
        f"step (NaN rewards or twists, or lmbda r = -inf) and fell back to uniform weights; "
        "Particles.degenerate counts those steps per population",
        RuntimeWarning,
        stacklevel=_outside_diffjax(),
    )
