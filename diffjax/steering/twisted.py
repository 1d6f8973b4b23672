r"""Twisted SMC: the Twisted Diffusion Sampler (Wu, Trippe, Naesseth, Blei & Cunningham 2023,
"Practical and Asymptotically Exact Conditional Sampling in Diffusion Models").

K particles per condition target p(x_end) h_end(x_end, y) / Z, where x_end is the sample at the
grid's last time and the twist h_t(x_t, y) approximates p_t(y | x_t); at the end (t = 0 for a
grid that reaches the data) the twist should be the likelihood p(y | x0) or exp(lambda r(x0)).
Each step t -> s:

    x_s ~ q(x_s | x_t)                                   (the proposal)
    log w += log p(x_s | x_t) - log q(x_s | x_t) + log h_s(x_s) - log h_t(x_t)

with p the model's Gaussian kernel (the `solver`'s transition, any `solvers.GaussianSolver`; by
default DDPM: the posterior q(x_s | x_t, x0-hat), the step of DDIM with eta = 1) and q, by default,
TDS's twisted proposal: the same kernel evaluated at the prediction of the guided score
s + grad_{x_t} log h_t, i.e.

    x0-tw = x0-hat + (sigma_t^2 / alpha_t) grad log h_t,   eps-tw = eps-hat - sigma_t grad log h_t,

the gradient taken through the denoiser (one forward and one backward pass per step). The
starting weight is h_T(x_T); log Z-hat estimates log E_p[h_end(x_end)] (log p(y) for a
likelihood twist). A step whose kernel has zero variance (to sigma = 0) is taken with the kernel
itself and only the twist ratio enters the weight, so the bookkeeping stays exact.

`log_twist(x_t, x0_hat, t, y) -> (N,)` gets the particles x_t (N, *event), the denoiser's
x0-hat(x_t) (differentiable in x_t), the time, and y repeated per particle. Builders live in
`twists`: `reward_twist` (lambda r(x0-hat): FK's target with TDS's proposal), `classifier_twist`
(log p(y | x0-hat) or a noisy classifier's log p(y | x_t)), `inpainting_twist` (Gaussian
likelihood of observed pixels with TDS's variance inflation).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax import _checks, gaussian
from diffjax.arrays import as_pytree, broadcast_to_x, per_particle
from diffjax.denoiser import Prediction, prediction_views
from diffjax.gaussian import Gaussian
from diffjax.sampling import check_denoiser, run_steps
from diffjax.schedules import Schedule
from diffjax.solvers import ddpm
from diffjax.solvers.base import GaussianSolver, Solver, check_gaussian
from diffjax.steering import resampling
from diffjax.steering.particles import Particles, check_run, collect, warn_degenerate


def ddpm_kernel(schedule: Schedule, x_t, x0, eps, t, s) -> Gaussian:
    """q(x_s | x_t, x0) of the forward process, written with the prediction (x0, eps): the DDPM
    posterior (`gaussian.posterior`), the transition of `solvers.ddpm()` and of DDIM with eta = 1."""
    del x_t
    return gaussian.posterior(schedule, x0, eps, t, s)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class KernelSolver(GaussianSolver):
    """A kernel function `kernel(schedule, x_t, x0, eps, t, s) -> Gaussian` as a Gaussian solver: what
    the deprecated `kernel=` argument of `tds` and `smcdiff` becomes (pass `solver=` instead)."""

    kernel: Callable

    def transition(self, state, pred, t, t_next, schedule):
        return self.kernel(schedule, state.x, pred.x0, pred.eps, t, t_next)

    @property
    def stochastic(self):
        return True

    @property
    def order(self):
        return 1.0


def kernel_solver(solver, kernel):
    """The solver of `tds`/`smcdiff`: `solver`, or the deprecated `kernel` function wrapped (with a
    DeprecationWarning), or DDPM."""
    if kernel is not None:
        warnings.warn("kernel= is deprecated and goes in the next release: pass solver= (a GaussianSolver)",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
        if solver is not None or not callable(kernel):
            raise ValueError(f"pass either solver= or a callable kernel=, got solver={solver!r}, kernel={kernel!r}")
        return KernelSolver(kernel)
    return ddpm() if solver is None else check_gaussian("solver", solver)


def twisted_prediction(schedule: Schedule, x0, eps, grad_log_twist, t):
    """(x0, eps) of the score shifted by grad log h_t: x0 + sigma^2/alpha g, eps - sigma g.

    Where alpha(t) = 0 (pure noise, rectified flow at t = 1) x0-hat does not depend on x_t, so g = 0
    and the shift sigma^2/alpha g is 0/0: there the prediction is left untwisted, and the proposal is
    the model's own step (any proposal is valid: TDS's weights divide by its density)."""
    alpha, sigma = broadcast_to_x(schedule.alpha(t), x0), broadcast_to_x(schedule.sigma(t), x0)
    shifted = x0 + sigma**2 / jnp.where(alpha == 0, 1.0, alpha) * grad_log_twist
    return jnp.where(alpha == 0, x0, shifted).astype(x0.dtype), eps - sigma * grad_log_twist


def _log_ratio(x, p: Gaussian, q: Gaussian):
    """log p(x) - log q(x) summed over the event; coordinates where either std is 0 count 0. Computed
    in the particles' dtype promoted to float32 or wider (float32 for bfloat16 and float16 particles;
    the kernels' float64 coefficients under x64 do not widen float32 particles' weights)."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x, p, q = (jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), v) for v in (x, p, q))
    p_std, q_std = jnp.broadcast_to(p.std, x.shape), jnp.broadcast_to(q.std, x.shape)
    live = (p_std > 0) & (q_std > 0)
    safe = lambda a: jnp.where(live, a, 1.0)  # noqa: E731
    term = (-0.5 * ((x - p.mean) / safe(p_std)) ** 2 - jnp.log(safe(p_std))
            + 0.5 * ((x - q.mean) / safe(q_std)) ** 2 + jnp.log(safe(q_std)))  # fmt: skip
    return jnp.sum(jnp.where(live, term, 0.0).reshape(x.shape[0], -1), axis=-1)


class _Twisted(NamedTuple):
    """Per-particle quantities at the current x_t, gathered with the particles at resampling."""

    pred: Prediction  # the denoiser's prediction at (x_t, t)
    log_h: jax.Array  # (N,) log twist; -inf where it was not finite
    grad: jax.Array  # grad_x log h; 0 where not finite


def _evaluate(denoiser, log_twist, x, t, y, chunk):
    """Denoiser prediction, log twist and its gradient through the denoiser at (x, t)."""

    def one(x, y, cond):
        den = denoiser if cond is None else denoiser.replace(cond=cond)

        def total(x):
            pred = den(x, t)
            log_h = log_twist(x, pred.x0, t, y).astype(jnp.promote_types(x.dtype, jnp.float32))
            return jnp.sum(jnp.where(jnp.isfinite(log_h), log_h, 0.0)), (pred, log_h)

        grad, (pred, log_h) = jax.grad(total, has_aux=True)(x)
        return pred, log_h, grad

    n = x.shape[0]
    if chunk is None or chunk == n:
        pred, log_h, grad = one(x, y, denoiser.cond)
    else:
        split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])  # noqa: E731
        parts = jax.lax.map(lambda args: one(*args), (split(x), jax.tree.map(split, y),
                                                      jax.tree.map(split, denoiser.cond)))  # fmt: skip
        pred, log_h, grad = jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), parts)
    finite = jnp.isfinite(log_h)
    grad_ok = jnp.all(jnp.isfinite(grad.reshape(n, -1)), axis=-1)
    log_h = jnp.where(finite & grad_ok, log_h, -jnp.inf)
    grad = jnp.where(broadcast_to_x(finite & grad_ok, grad), grad, 0.0)
    return _Twisted(pred, log_h, grad)


@functools.partial(jax.jit, static_argnames=("num_particles", "resample_steps", "threshold", "resampler",
                                             "twist_chunk"))  # fmt: skip
def _tds(solver, denoiser, log_twist, proposal, timesteps, key, x_T, y, num_particles, resample_steps, threshold,
         resampler, twist_chunk):  # fmt: skip
    n, k = x_T.shape[0], num_particles
    b = n // k
    sched = denoiser.schedule
    resample_fn = resampling.RESAMPLERS[resampler]
    mask = jnp.asarray(resample_steps)
    steps = timesteps.shape[0] - 1
    keys = jax.random.split(key, (steps, 2))
    evaluate = lambda x, t: _evaluate(denoiser, log_twist, x, t, y, twist_chunk)  # noqa: E731
    start = evaluate(x_T, timesteps[0])

    def body(carry, i):
        state, cur, log_w, log_z, degenerate = carry
        t, s = timesteps[i], timesteps[i + 1]
        p = solver.transition(state, cur.pred, t, s, sched)
        if proposal is None:
            x0_tw, eps_tw = twisted_prediction(sched, cur.pred.x0, cur.pred.eps, cur.grad, t)
            q = solver.transition(state, prediction_views(sched, x0_tw, eps_tw, t), t, s, sched)
            deterministic = jnp.broadcast_to(p.std, state.x.shape) == 0
            q = Gaussian(jnp.where(deterministic, p.mean, q.mean), q.std)
        else:
            q = proposal(sched, state.x, cur.pred.x0, cur.pred.eps, cur.grad, t, s)
        x = q.sample(keys[i, 0]).astype(x_T.dtype)
        state = solver.advance(state, x, cur.pred, t, s, sched)
        new = evaluate(x, s)
        increment = _log_ratio(x, p, q) + new.log_h - cur.log_h
        alive = jnp.isfinite(new.log_h) & jnp.isfinite(cur.log_h) & ~jnp.isnan(increment)
        log_w = log_w + jnp.where(alive, increment, -jnp.inf)
        out = resampling.resample_flat(keys[i, 1], log_w, k, mask[i], threshold, resample_fn)
        state = solver.gather(state, out.ancestors)
        new = jax.tree.map(lambda a: a[out.ancestors], new)
        carry = (state, new, out.log_weights, log_z + out.log_z_increment, degenerate + out.degenerate)
        return carry, (out.ess, out.resampled, out.local_ancestors)

    log_z = jnp.zeros(b, start.log_h.dtype)  # float32 or wider, as the log-weights
    carry = (solver.init(x_T, timesteps), start, start.log_h, log_z, jnp.zeros(b, jnp.int32))
    (state, last, log_w, log_z, degenerate), trace = run_steps(solver, body, carry, steps)
    return collect(state.x, log_w, last.log_h, log_z, degenerate, trace, k, jnp.int32(steps + 1))


def tds(
    denoiser,
    timesteps,
    key,
    x_T,
    log_twist: Callable,
    *,
    y=None,
    solver: Solver | None = None,
    kernel: Callable | None = None,
    proposal: Callable | None = None,
    schedule: resampling.Schedule | None = None,
    resampler: str = "systematic",
    cond=None,
    twist_chunk: int | None = None,
) -> Particles:
    """Twisted SMC (Wu et al. 2023, the Twisted Diffusion Sampler) with K particles per condition;
    see the module docstring.

    Args:
      denoiser: the model.
      timesteps: the grid, noise to data.
      key: a typed key.
      x_T: (B, K, *event) starting particles.
      log_twist: `log_twist(x_t, x0_hat, t, y) -> (N,)`, differentiable in x_t through x0_hat; a
        pytree value (`twists.reward_twist`, `classifier_twist`, `inpainting_twist`: parameters are
        data) or any function.
      y: what the twist conditions on, a pytree with leading axis B (labels, measurements), passed
        to `log_twist` repeated per particle.
      solver: the model's transition p(x_s | x_t) and, evaluated at the twisted prediction, the
        proposal: any stochastic solver whose step is one Gaussian transition
        (`solvers.GaussianSolver`: ddpm() (the default, TDS's choice), ddim(eta > 0),
        euler_ancestral(), dpmpp_2m_sde(), euler_maruyama()); others raise a ValueError naming them.
      kernel: deprecated, `kernel(schedule, x_t, x0, eps, t, s) -> Gaussian`; use `solver`.
      proposal: `proposal(schedule, x_t, x0, eps, grad_log_twist, t, s) -> Gaussian` to replace
        TDS's twisted kernel (for tests and new proposals).
      schedule: when to resample (default every step but the last, as TDS).
      resampler: a name in `resampling.RESAMPLERS`.
      cond: the denoiser's condition (B leading), repeated per particle.
      twist_chunk: evaluate the denoiser, twist and gradient on this many particles at a time.

    The log-twists, log-weights, their normalisation and the ESS are float32 or wider whatever x_T's
    dtype (bfloat16 and float16 particles keep their dtype).

    Returns:
      `Particles` whose `rewards` are the final log-twists log h_end(x_end) and whose `nfe` counts
      the denoiser's forward passes per particle (each with one backward pass).

      A population whose weights were all 0 at some step (non-finite twists) falls back to uniform
      weights, is counted in `Particles.degenerate`, and the call emits one RuntimeWarning (on the
      host after the compiled call; not when called inside `jit`).
    """
    check_denoiser(denoiser)
    schedule = check_run(timesteps, key, x_T, schedule, resampler, denoiser=denoiser, cond=cond)
    _checks.batch("y", y, jnp.shape(x_T)[0])
    solver = kernel_solver(solver, kernel)
    if not callable(log_twist):
        raise ValueError(f"log_twist must be callable as log_twist(x_t, x0_hat, t, y) -> (N,), got {log_twist!r}")
    if proposal is not None and not callable(proposal):
        raise ValueError(f"proposal must be None or callable, got {proposal!r}")
    b, k = jnp.shape(x_T)[:2]
    if twist_chunk is not None:
        twist_chunk = _checks.positive_int("twist_chunk", twist_chunk)
        if (b * k) % twist_chunk:
            raise ValueError(f"twist_chunk must divide the number of particles B*K={b * k}, got {twist_chunk}")
    if cond is not None:
        denoiser = denoiser.replace(cond=per_particle(cond, k))
    x_T = jnp.asarray(x_T)
    particles = _tds(
        solver, denoiser, as_pytree(log_twist), as_pytree(proposal), jnp.asarray(timesteps), key,
        x_T.reshape((b * k,) + x_T.shape[2:]), per_particle(y, k), k, tuple(bool(s) for s in schedule.steps),
        schedule.threshold, resampler, twist_chunk,
    )  # fmt: skip
    warn_degenerate("tds", jnp.any(particles.degenerate > 0), particles)
    return particles
