"""Reverse-SDE samplers in the style of score_sde (Song et al. 2021), for any schedule.

The forward SDE of a schedule is dx = f(t) x dt + g(t) dW with f = d log alpha/dt and
g^2 = -sigma^2 d logsnr/dt (`Schedule.drift`, `Schedule.diffusion2`); its reverse is
dx = [f x - g^2 score] dt + g dW_bar. Euler-Maruyama steps it from t to t' < t:

    x' = x - [f(t) x - g^2(t) score(x, t)] (t - t') + g(t) sqrt(t - t') z.

With `denoise_final` the last step returns its mean (score_sde's `noise_removal`).

`predictor_corrector` precedes every predictor step by `n_steps` Langevin corrector steps at
time t with step size 2 r (snr |z| / |score|)^2, r = (alpha_t / alpha_t')^2 (score_sde's
`alphas[timestep]` for VP, 1 for VE). `norm="batch"` (the default, score_sde's choice) averages
the norms over the batch; it needs no explicit collective (under `jit` a batch mean over a
sharded axis compiles to one) and for a large batch the step size is nearly the same for every
sample. `norm="sample"` uses each sample's own norms: samples no longer interact, but the step
size then depends on the current state, which biases Langevin dynamics: on a 2-D mixture with
snr = 0.01 it inflates within-mode spreads by about 20% where "batch" is within 1.5%.
"""

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.solvers.base import Solver, State, StepInfo, noise_like, single_step_init


def _em_step(add_noise):
    def step(state, key, t, t_next, denoise):
        sched, x = denoise.schedule, state.x
        pred = denoise(x, t)
        dt = t - t_next
        x_next = x - (sched.drift(t) * x - sched.diffusion2(t) * pred.score) * dt
        if add_noise:
            x_next = x_next + jnp.sqrt(sched.diffusion2(t) * dt) * noise_like(key, x)
        return State(x_next.astype(x.dtype)), StepInfo(jnp.int32(1), pred.x0)

    return step


def euler_maruyama(denoise_final: bool = True) -> Solver:
    return Solver(single_step_init, _em_step(True), tail=(_em_step(not denoise_final),))


def _per_sample_norm(a):
    return jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1)).reshape((-1,) + (1,) * (a.ndim - 1))


def _norm(a, norm):
    per_sample = _per_sample_norm(a)
    return per_sample if norm == "sample" else jnp.mean(per_sample)


def langevin(state, key, t, t_next, denoise, *, snr, n_steps, norm="batch"):
    """`n_steps` Langevin corrector steps at time t; returns the new state and the NFE spent."""
    sched = denoise.schedule
    ratio = (sched.alpha(t) / sched.alpha(t_next)) ** 2
    x = state.x
    for k in jax.random.split(key, n_steps):
        score = denoise(x, t).score
        z = noise_like(k, x)
        step_size = 2.0 * ratio * (snr * _norm(z, norm) / _norm(score, norm)) ** 2
        x = (x + step_size * score + jnp.sqrt(2.0 * step_size) * z).astype(x.dtype)
    return state._replace(x=x), n_steps


def predictor_corrector(
    predictor: Solver | None = None, *, snr: float = 0.16, n_steps: int = 1, norm: str = "batch"
) -> Solver:
    """Langevin corrector steps at t, then the predictor's step from t to t' (default: Euler-Maruyama)."""
    predictor = euler_maruyama() if predictor is None else predictor
    if not isinstance(predictor, Solver) or predictor.head:
        raise ValueError(f"predictor must be a Solver without head steps, got {predictor!r}")
    snr = _checks.positive("snr", snr)
    n_steps = _checks.positive_int("n_steps", n_steps)
    _checks.one_of("norm", norm, ("sample", "batch"))

    def corrected(step_fn):
        def step(state, key, t, t_next, denoise):
            key_c, key_p = jax.random.split(key)
            state, nfe = langevin(state, key_c, t, t_next, denoise, snr=snr, n_steps=n_steps, norm=norm)
            state, info = step_fn(state, key_p, t, t_next, denoise)
            return state, info._replace(nfe=info.nfe + nfe)

        return step

    return Solver(predictor.init, corrected(predictor.step), tail=tuple(corrected(f) for f in predictor.tail))
