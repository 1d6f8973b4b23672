r"""SMCDiff (Trippe, Yim, Tischer et al. 2023, "Diffusion probabilistic modeling of protein backbones
in 3D for the motif-scaffolding problem"): inpainting by particle filtering.

The observed entries (`mask` = 1) follow one forward-noised copy of the measurement y per
condition, y_{t_{S}}, ..., y_{t_0}: a chain of q(y_t | y_s) = N(alpha_t/alpha_s y_s, sigma_t^2 g I),
g = 1 - SNR_t / SNR_s, drawn once from y_0 = y upwards along the grid. K particles per condition
move the free entries with the model's kernel p(x_s | x_t), set the observed entries to y_s and
are weighted by how well the kernel predicted them,

    log w += sum_observed log N(y_s; mean_p(x_t), std_p(x_t)^2),

then resampled. The kernel is any stochastic `solvers.GaussianSolver`'s transition (DDPM by
default). With a kernel that factorises over entries (every diagonal Gaussian) and an exact model,
the free entries target p(x0_free | x0_observed = y) as K grows, because the forward noise
of the observed entries is independent of the free ones. The returned samples hold y exactly
on the observed entries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import gaussian
from diffjax.arrays import noise_like, per_particle
from diffjax.sampling import check_denoiser, run_steps
from diffjax.schedules import Schedule
from diffjax.solvers.base import Solver
from diffjax.steering import resampling
from diffjax.steering.particles import Particles, check_run, collect, warn_degenerate
from diffjax.steering.twisted import kernel_solver


def forward_chain(schedule: Schedule, key, y, timesteps):
    """y_t at every grid time, (len(timesteps), *y.shape): y_{t_S} ~ q(. | y) at the last (least
    noisy) time, then upwards y_{t_i} ~ q(y_{t_i} | y_{t_{i+1}}) (`gaussian.forward`). Row i is the
    value at timesteps[i]."""
    last = timesteps[-1]
    keys = jax.random.split(key, timesteps.shape[0])
    y_last = schedule.alpha(last) * y + schedule.sigma(last) * noise_like(keys[-1], y)

    def up(y_s, args):
        key, t, s = args
        y_t = gaussian.forward(schedule, y_s, s, t).sample(key)
        return y_t, y_t

    _, above = jax.lax.scan(up, y_last, (keys[:-1], timesteps[:-1], timesteps[1:]), reverse=True)
    return jnp.concatenate([above, y_last[None]]).astype(y.dtype)


def _observed_log_prob(x, p, mask):
    """sum over observed entries of log N(x; p.mean, p.std^2); entries with std 0 count 0. In x's dtype
    promoted to float32 or wider (float32 for bfloat16 particles, and for float32 ones under x64)."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x, p = x.astype(dtype), jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), p)
    std = jnp.broadcast_to(p.std, x.shape)
    live = (std > 0) & (mask > 0)
    safe = jnp.where(live, std, 1.0)
    term = -0.5 * ((x - p.mean) / safe) ** 2 - jnp.log(safe) - 0.5 * jnp.log(2 * jnp.pi)
    return jnp.sum(jnp.where(live, term, 0.0).reshape(x.shape[0], -1), axis=-1)


@functools.partial(jax.jit, static_argnames=("num_particles", "resample_steps", "threshold", "resampler"))
def _smcdiff(solver, denoiser, timesteps, key, x_T, y, mask, num_particles, resample_steps, threshold, resampler):
    n, k = x_T.shape[0], num_particles
    b = n // k
    sched = denoiser.schedule
    resample_fn = resampling.RESAMPLERS[resampler]
    steps = timesteps.shape[0] - 1
    key_chain, key_steps = jax.random.split(key)
    chain = jax.vmap(lambda key, y: forward_chain(sched, key, y, timesteps), out_axes=1)(
        jax.random.split(key_chain, b), y
    )  # (steps + 1, B, *event)
    chain = jnp.repeat(chain, k, axis=1)
    keys = jax.random.split(key_steps, (steps, 2))
    observed = jnp.broadcast_to(mask, x_T.shape[1:]) > 0
    scheduled = jnp.asarray(resample_steps)
    x_T = jnp.where(observed, chain[0], x_T)

    def body(carry, i):
        state, log_w, log_z, degenerate = carry
        t, s = timesteps[i], timesteps[i + 1]
        pred = denoiser(state.x, t)
        p = solver.transition(state, pred, t, s, sched)
        x_free = p.sample(keys[i, 0])
        log_w = log_w + _observed_log_prob(chain[i + 1], p, observed)
        log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
        x = jnp.where(observed, chain[i + 1], x_free).astype(x_T.dtype)
        state = solver.advance(state, x, pred, t, s, sched)
        out = resampling.resample_flat(keys[i, 1], log_w, k, scheduled[i], threshold, resample_fn)
        carry = (solver.gather(state, out.ancestors), out.log_weights, log_z + out.log_z_increment,
                 degenerate + out.degenerate)  # fmt: skip
        return carry, (out.ess, out.resampled, out.local_ancestors)

    wide = jnp.promote_types(x_T.dtype, jnp.float32)  # the log-weights' dtype
    carry = (solver.init(x_T, timesteps), jnp.zeros(n, wide), jnp.zeros(b, wide), jnp.zeros(b, jnp.int32))
    (state, log_w, log_z, degenerate), trace = run_steps(solver, body, carry, steps)
    x = jnp.where(observed, jnp.repeat(y, k, axis=0), state.x)
    return collect(x, log_w, jnp.zeros(n, x_T.dtype), log_z, degenerate, trace, k, jnp.int32(steps))


def smcdiff(
    denoiser,
    timesteps,
    key,
    x_T,
    y,
    mask,
    *,
    solver: Solver | None = None,
    kernel=None,
    schedule: resampling.Schedule | None = None,
    resampler: str = "systematic",
    cond=None,
) -> Particles:
    """SMCDiff inpainting (Trippe et al. 2023): y (B, *event) on the entries where `mask` is 1, with K
    particles per condition; see the module docstring.

    Args:
      denoiser: the model.
      timesteps: the grid, noise to data.
      key: a typed key.
      x_T: (B, K, *event) starting particles.
      y: the measurement (B, *event); only its observed entries are read.
      mask: 0/1 of the event's shape, 1 = observed, or an inpainting operator
        (`dj.guidance.operators.inpainting(mask)`), whose mask is used.
      solver: the model's kernel p(x_s | x_t): any stochastic `solvers.GaussianSolver` (default
        ddpm(), SMCDiff's); others raise a ValueError naming them.
      kernel: deprecated, `kernel(schedule, x_t, x0, eps, t, s) -> Gaussian`; use `solver`.
      schedule: when to resample (default every step but the last).
      resampler: a name in `resampling.RESAMPLERS`.
      cond: the denoiser's condition (B leading), repeated per particle.

    Returns:
      `Particles` (rewards are 0: SMCDiff has none); log Z-hat estimates the probability of the
      observed chain under the model.

      A population whose weights were all 0 at some step (non-finite twists) falls back to uniform
      weights, is counted in `Particles.degenerate`, and the call emits one RuntimeWarning (on the
      host after the compiled call; not when called inside `jit`).
    """
    check_denoiser(denoiser)
    schedule = check_run(timesteps, key, x_T, schedule, resampler, denoiser=denoiser, cond=cond)
    solver = kernel_solver(solver, kernel)
    b, k = jnp.shape(x_T)[:2]
    event = jnp.shape(x_T)[2:]
    if jnp.shape(y) != (b,) + event:
        raise ValueError(f"y must have shape (B, *event) = {(b,) + event}, got {jnp.shape(y)}")
    mask = np.asarray(getattr(mask, "mask", mask))  # an inpainting operator, or its mask
    if mask.shape != event or not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"mask must be 0/1 with the event's shape {event}, got shape {mask.shape}")
    if cond is not None:
        denoiser = denoiser.replace(cond=per_particle(cond, k))
    x_T = jnp.asarray(x_T)
    particles = _smcdiff(
        solver, denoiser, jnp.asarray(timesteps), key, x_T.reshape((b * k,) + event), jnp.asarray(y, x_T.dtype),
        jnp.asarray(mask, x_T.dtype), k, tuple(bool(s) for s in schedule.steps), schedule.threshold, resampler,
    )  # fmt: skip
    warn_degenerate("smcdiff", jnp.any(particles.degenerate > 0), particles)
    return particles
