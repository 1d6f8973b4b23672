r"""Twisted SMC: the Twisted Diffusion Sampler (Wu, Trippe, Naesseth, Blei & Cunningham 2023,
"Practical and Asymptotically Exact Conditional Sampling in Diffusion Models").

K particles per condition target p(x_end) h_end(x_end, y) / Z, where x_end is the sample at the
grid's last time and the twist h_t(x_t, y) approximates p_t(y | x_t); at the end (t = 0 for a
grid that reaches the data) the twist should be the likelihood p(y | x0) or exp(lambda r(x0)).
Each step t -> s:

    x_s ~ q(x_s | x_t)                                   (the proposal)
    log w += log p(x_s | x_t) - log q(x_s | x_t) + log h_s(x_s) - log h_t(x_t)

with p the model's Gaussian kernel (`ddpm_kernel`: the DDPM posterior q(x_s | x_t, x0-hat), the
step of DDIM with eta = 1) and q, by default, TDS's twisted proposal: the same kernel evaluated
at the prediction of the guided score s + grad_{x_t} log h_t, i.e.

    x0-tw = x0-hat + (sigma_t^2 / alpha_t) grad log h_t,   eps-tw = eps-hat - sigma_t grad log h_t,

the gradient taken through the denoiser (one forward and one backward pass per step). The
starting weight is h_T(x_T); log Z-hat estimates log E_p[h_end(x_end)] (log p(y) for a
likelihood twist). A step whose kernel has zero variance (to sigma = 0) is taken with the kernel
itself and only the twist ratio enters the weight, so the bookkeeping stays exact.

`log_twist(x_t, x0_hat, t, y) -> (N,)` gets the particles x_t (N, *event), the denoiser's
x0-hat(x_t) (differentiable in x_t), the time, and y repeated per particle. Builders:
`reward_twist` (lambda r(x0-hat): FK's target with TDS's proposal), `classifier_twist`
(log p(y | x0-hat) or a noisy classifier's log p(y | x_t)), `inpainting_twist` (Gaussian
likelihood of observed pixels with TDS's variance inflation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.denoiser import broadcast_to_x
from diffjax.schedules import Schedule
from diffjax.solvers.base import noise_like
from diffjax.steering import resampling
from diffjax.steering.particles import Particles, check_run, collect


class Gaussian(NamedTuple):
    """A diagonal Gaussian over x: mean (N, *event), std broadcastable to it (0 = deterministic)."""

    mean: jax.Array
    std: jax.Array


def ddpm_kernel(schedule: Schedule, x_t, x0, eps, t, s) -> Gaussian:
    """q(x_s | x_t, x0) of the forward process, written with the prediction (x0, eps):

    mean = alpha_s x0 + sigma_s sqrt(1 - g) eps,  std = sigma_s sqrt(g),  g = 1 - SNR_t / SNR_s

    (the DDIM eta = 1 step of `solvers.ddim`)."""
    del x_t
    gap = -jnp.expm1(schedule.logsnr(t) - schedule.logsnr(s))
    alpha_s, sigma_s = schedule.alpha(s), schedule.sigma(s)
    return Gaussian(alpha_s * x0 + sigma_s * jnp.sqrt(1.0 - gap) * eps, sigma_s * jnp.sqrt(gap) * jnp.ones_like(x0))


def twisted_prediction(schedule: Schedule, x0, eps, grad_log_twist, t):
    """(x0, eps) of the score shifted by grad log h_t: x0 + sigma^2/alpha g, eps - sigma g."""
    alpha, sigma = broadcast_to_x(schedule.alpha(t), x0), broadcast_to_x(schedule.sigma(t), x0)
    return x0 + sigma**2 / alpha * grad_log_twist, eps - sigma * grad_log_twist


def _log_ratio(x, p: Gaussian, q: Gaussian):
    """log p(x) - log q(x) summed over the event; coordinates where either std is 0 count 0."""
    p_std, q_std = jnp.broadcast_to(p.std, x.shape), jnp.broadcast_to(q.std, x.shape)
    live = (p_std > 0) & (q_std > 0)
    safe = lambda a: jnp.where(live, a, 1.0)  # noqa: E731
    term = (-0.5 * ((x - p.mean) / safe(p_std)) ** 2 - jnp.log(safe(p_std))
            + 0.5 * ((x - q.mean) / safe(q_std)) ** 2 + jnp.log(safe(q_std)))  # fmt: skip
    return jnp.sum(jnp.where(live, term, 0.0).reshape(x.shape[0], -1), axis=-1)


class _Twisted(NamedTuple):
    """Per-particle quantities at the current x_t, gathered with the particles at resampling."""

    x: jax.Array
    x0: jax.Array
    eps: jax.Array
    log_h: jax.Array  # (N,) log twist; -inf where it was not finite
    grad: jax.Array  # grad_x log h; 0 where not finite


def _evaluate(denoiser, log_twist, x, t, y, chunk):
    """Denoiser prediction, log twist and its gradient through the denoiser at (x, t)."""

    def one(x, y, cond):
        den = denoiser if cond is None else denoiser.replace(cond=cond)

        def total(x):
            pred = den(x, t)
            log_h = log_twist(x, pred.x0, t, y).astype(x.dtype)
            return jnp.sum(jnp.where(jnp.isfinite(log_h), log_h, 0.0)), (pred, log_h)

        grad, (pred, log_h) = jax.grad(total, has_aux=True)(x)
        return pred.x0, pred.eps, log_h, grad

    n = x.shape[0]
    if chunk is None or chunk == n:
        x0, eps, log_h, grad = one(x, y, denoiser.cond)
    else:
        split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])  # noqa: E731
        parts = jax.lax.map(lambda args: one(*args), (split(x), jax.tree.map(split, y),
                                                      jax.tree.map(split, denoiser.cond)))  # fmt: skip
        x0, eps, log_h, grad = jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), parts)
    finite = jnp.isfinite(log_h)
    grad_ok = jnp.all(jnp.isfinite(grad.reshape(n, -1)), axis=-1)
    log_h = jnp.where(finite & grad_ok, log_h, -jnp.inf)
    grad = jnp.where(broadcast_to_x(finite & grad_ok, grad), grad, 0.0)
    return _Twisted(x, x0, eps, log_h, grad)


@functools.partial(
    jax.jit,
    static_argnames=("log_twist", "kernel", "proposal", "num_particles", "resample_steps", "threshold",
                     "resampler", "twist_chunk"),
)  # fmt: skip
def _tds(denoiser, log_twist, kernel, proposal, timesteps, key, x_T, y, num_particles, resample_steps, threshold,
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

    def step(carry, i):
        cur, log_w, log_z, degenerate = carry
        t, s = timesteps[i], timesteps[i + 1]
        p = kernel(sched, cur.x, cur.x0, cur.eps, t, s)
        if proposal is None:
            q = kernel(sched, cur.x, *twisted_prediction(sched, cur.x0, cur.eps, cur.grad, t), t, s)
            deterministic = jnp.broadcast_to(p.std, cur.x.shape) == 0
            q = Gaussian(jnp.where(deterministic, p.mean, q.mean), q.std)
        else:
            q = proposal(sched, cur.x, cur.x0, cur.eps, cur.grad, t, s)
        x = (q.mean + q.std * noise_like(keys[i, 0], cur.x)).astype(x_T.dtype)
        new = evaluate(x, s)
        increment = _log_ratio(x, p, q) + new.log_h - cur.log_h
        alive = jnp.isfinite(new.log_h) & jnp.isfinite(cur.log_h) & ~jnp.isnan(increment)
        log_w = log_w + jnp.where(alive, increment, -jnp.inf)
        out = resampling.resample_flat(keys[i, 1], log_w, k, mask[i], threshold, resample_fn)
        new = jax.tree.map(lambda a: a[out.ancestors], new)
        carry = (new, out.log_weights, log_z + out.log_z_increment, degenerate + out.degenerate)
        return carry, (out.ess, out.resampled, out.local_ancestors)

    carry = (start, start.log_h, jnp.zeros(b, x_T.dtype), jnp.zeros(b, jnp.int32))
    (last, log_w, log_z, degenerate), trace = jax.lax.scan(step, carry, jnp.arange(steps))
    return collect(last.x, log_w, last.log_h, log_z, degenerate, trace, k, jnp.int32(steps + 1))


def tds(
    denoiser,
    timesteps,
    key,
    x_T,
    log_twist: Callable,
    *,
    y=None,
    kernel: Callable = ddpm_kernel,
    proposal: Callable | None = None,
    schedule: resampling.Schedule | None = None,
    resampler: str = "systematic",
    cond=None,
    twist_chunk: int | None = None,
) -> Particles:
    """Twisted SMC with K particles per condition from x_T (B, K, *event); see the module docstring.

    `y`: what the twist conditions on, a pytree with leading axis B (labels, measurements), passed
    to `log_twist` repeated per particle. `cond`: the denoiser's condition (B leading), likewise.
    `kernel(schedule, x_t, x0, eps, t, s) -> Gaussian`: the model's transition (default the DDPM
    posterior). `proposal(schedule, x_t, x0, eps, grad_log_twist, t, s) -> Gaussian`: default TDS's
    twisted kernel. `schedule`: when to resample (default every step but the last, as TDS).
    `twist_chunk`: evaluate the denoiser, twist and gradient on this many particles at a time.

    Returns `Particles` whose `rewards` are the final log-twists log h_end(x_end) and whose `nfe`
    counts the denoiser's forward passes per particle (each with one backward pass).
    """
    schedule = check_run(timesteps, key, x_T, schedule, resampler)
    if not callable(log_twist):
        raise ValueError(f"log_twist must be callable as log_twist(x_t, x0_hat, t, y) -> (N,), got {log_twist!r}")
    if not callable(kernel):
        raise ValueError(f"kernel must be callable as kernel(schedule, x_t, x0, eps, t, s), got {kernel!r}")
    if proposal is not None and not callable(proposal):
        raise ValueError(f"proposal must be None or callable, got {proposal!r}")
    b, k = jnp.shape(x_T)[:2]
    if twist_chunk is not None:
        twist_chunk = _checks.positive_int("twist_chunk", twist_chunk)
        if (b * k) % twist_chunk:
            raise ValueError(f"twist_chunk must divide the number of particles B*K={b * k}, got {twist_chunk}")
    per_particle = lambda c: jnp.repeat(jnp.asarray(c), k, axis=0)  # noqa: E731
    if cond is not None:
        denoiser = denoiser.replace(cond=jax.tree.map(per_particle, cond))
    y = None if y is None else jax.tree.map(per_particle, y)
    x_T = jnp.asarray(x_T)
    return _tds(
        denoiser, log_twist, kernel, proposal, jnp.asarray(timesteps), key, x_T.reshape((b * k,) + x_T.shape[2:]), y,
        k, tuple(bool(s) for s in schedule.steps), schedule.threshold, resampler, twist_chunk,
    )  # fmt: skip


@functools.cache
def reward_twist(reward: Callable, lmbda: float) -> Callable:
    """log h_t = lmbda r(x0-hat(x_t), y): at the end the twist is exp(lmbda r(x0)), FK's target,
    reached with TDS's gradient-informed proposal. Cached: the same arguments give the same function."""
    lmbda = _checks.finite("lmbda", lmbda)

    def log_twist(x_t, x0, t, y):
        del x_t, t
        return lmbda * reward(x0, y)

    return log_twist


def classifier_twist(logits_fn: Callable, *, scale: float = 1.0, noisy: bool = False) -> Callable:
    """log h_t = log_softmax(scale * logits)[y] with labels y: of a clean classifier on x0-hat
    (`logits_fn(x0_hat)`, TDS's class twist, `classifier_guidance_scale` = scale) or, with
    `noisy=True`, of a time-conditioned classifier on x_t (`logits_fn(x_t, t)`)."""
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {logits_fn!r}")
    scale = _checks.positive("scale", scale)

    def log_twist(x_t, x0, t, y):
        logits = logits_fn(x_t, t) if noisy else logits_fn(x0)
        log_p = jax.nn.log_softmax(scale * logits.astype(x0.dtype), axis=-1)
        return jnp.take_along_axis(log_p, jnp.asarray(y, jnp.int32)[:, None], axis=-1)[:, 0]

    return log_twist


def inpainting_twist(schedule: Schedule, mask, *, sigma_y: float, inflation: str = "tweedie",
                     tausq: float = 0.12) -> Callable:  # fmt: skip
    """log h_t = log N(y_obs; x0-hat_obs, (sigma_y^2 + tau_t^2) I) over the observed entries
    (`mask` of the event's shape, 1 = observed; y the measurement (B, *event)), with TDS's variance
    inflation tau_t^2 = sigma_t^2 / alpha_t^2 ("tweedie", its type 1) or the PiGDM form
    r^2 tausq / (r^2 + tausq), r^2 = sigma_t^2 / alpha_t^2 ("pigdm", its type 6). tau_0 = 0, so
    at the data the twist is the likelihood y = M x0 + sigma_y e."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    sigma_y = _checks.positive("sigma_y", sigma_y)
    _checks.one_of("inflation", inflation, ("tweedie", "pigdm"))
    tausq = _checks.positive("tausq", tausq)
    mask = np.asarray(mask, dtype=np.float64)
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"mask must hold only 0 and 1, got {mask!r}")

    def log_twist(x_t, x0, t, y):
        del x_t
        ratio = (schedule.sigma(t) / schedule.alpha(t)) ** 2
        tau2 = ratio if inflation == "tweedie" else ratio * tausq / (ratio + tausq)
        var = sigma_y**2 + tau2
        m = jnp.asarray(mask, x0.dtype)
        term = -0.5 * m * ((y - x0) ** 2 / var + jnp.log(2 * jnp.pi * var))
        return jnp.sum(term.reshape(x0.shape[0], -1), axis=-1)

    return log_twist
