"""EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2), in EDM's variables
x_bar = x/alpha against s = sigma/alpha so it runs on any schedule.

    gamma = min(S_churn / N, sqrt(2) - 1) if S_min <= s <= S_max else 0,  s_hat = (1 + gamma) s,
    x_hat = x_bar + sqrt(s_hat^2 - s^2) S_noise z,
    d = (x_hat - D(x_hat; s_hat)) / s_hat,   x_bar' = x_hat + (s' - s_hat) d,
    d' = (x_bar' - D(x_bar'; s')) / s',      x_bar' = x_hat + (s' - s_hat) (d + d') / 2.

The last step is Euler (EDM's loop skips the correction into s' = 0), so NFE = 2N - 1 on EDM's
grid. With S_churn = 0 this is the deterministic Heun / EDM sampler. A step from alpha = 0 (s = inf,
where neither churn nor the trapezoidal correction has a limit) is the deterministic DDIM step
(`diffjax.solvers.base`); it still costs the step's NFE.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.solvers.base import Solver, StepInfo, ddim_step, noise_like, solver_value, take, where_pure_noise


class HeunState(NamedTuple):
    """Heun's state: the sample and the churn gamma fixed by the grid's length."""

    x: jax.Array
    gamma: jax.Array  # min(S_churn / N, sqrt(2) - 1), fixed by the grid's length (not per particle)


@solver_value
class Heun(Solver):
    """EDM's (stochastic) Heun sampler; build it with `heun`."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0

    def init(self, x, timesteps):
        n = timesteps.shape[0] - 1
        return HeunState(x, jnp.asarray(min(self.s_churn / n, 2**0.5 - 1), jnp.result_type(timesteps)))

    def _churn_and_euler(self, state, key, t, t_next, denoise):
        """Add churn noise, take the Euler step; returns what the correction needs."""
        sched, x = denoise.schedule, state.x
        s, s_next = sched.ve_sigma(t), sched.ve_sigma(t_next)
        gamma = jnp.where((s >= self.s_min) & (s <= self.s_max), state.gamma, 0.0)
        s_hat = s * (1.0 + gamma)
        x_hat = x / sched.alpha(t)
        if self.s_churn > 0:
            churn = s * jnp.sqrt(gamma * (2.0 + gamma))  # sqrt(s_hat^2 - s^2) without cancellation
            x_hat = x_hat + churn * self.s_noise * noise_like(key, x)
        t_hat = sched.t_from_ve_sigma(s_hat) if self.s_churn > 0 else t
        # at alpha(t) = 0 (s = inf) there is no churn and the prediction is taken at (x, t) itself
        t_hat = where_pure_noise(sched, t, t, t_hat)
        pred = denoise(where_pure_noise(sched, t, x, sched.alpha(t_hat) * x_hat).astype(x.dtype), t_hat)
        d = (x_hat - pred.x0) / s_hat
        return x_hat, s_hat, s_next, d, x_hat + (s_next - s_hat) * d, pred

    def _from_pure_noise(self, sched, x, pred, x_next, t, t_next):
        """x_next, or DDIM's step from the prediction at (x, t) where alpha(t) = 0; in x's dtype."""
        x_next = where_pure_noise(sched, t, ddim_step(sched, pred, t, t_next).mean, x_next)
        return x_next.astype(x.dtype)

    def step(self, state, key, t, t_next, denoise):
        sched = denoise.schedule
        x_hat, s_hat, s_next, d, x_bar, pred = self._churn_and_euler(state, key, t, t_next, denoise)
        alpha_next = sched.alpha(t_next)
        d_next = (x_bar - denoise((alpha_next * x_bar).astype(state.x.dtype), t_next).x0) / s_next
        x_bar = x_hat + (s_next - s_hat) * 0.5 * (d + d_next)
        x_next = self._from_pure_noise(sched, state.x, pred, alpha_next * x_bar, t, t_next)
        return state._replace(x=x_next), StepInfo(jnp.int32(2), pred.x0)

    def final_euler(self, state, key, t, t_next, denoise):
        """The last step: churn and Euler only (1 NFE), as EDM's loop into s' = 0."""
        *_, x_bar, pred = self._churn_and_euler(state, key, t, t_next, denoise)
        sched = denoise.schedule
        x_next = self._from_pure_noise(sched, state.x, pred, sched.alpha(t_next) * x_bar, t, t_next)
        return state._replace(x=x_next), StepInfo(jnp.int32(1), pred.x0)

    @property
    def tail(self):
        return (self.final_euler,)

    @property
    def order(self):
        return 2.0  # global order without churn; weak order 2 with it (tests/test_stochastic.py)

    @property
    def stochastic(self):
        return self.s_churn > 0 and self.s_noise > 0

    def gather(self, state, ancestors):
        return state._replace(x=take(state.x, ancestors))


def heun(s_churn: float = 0.0, s_min: float = 0.0, s_max: float = float("inf"), s_noise: float = 1.0) -> Heun:
    """EDM's Heun sampler (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models", Algorithm 2), for any schedule in EDM's variables
    x_bar = x/alpha, s = sigma/alpha.

    Each step optionally raises the noise level to s_hat = (1 + gamma) s by adding fresh noise
    ("churn"), takes an Euler step to s' and corrects it with the trapezoidal rule (2 NFE). The
    last step is Euler only (EDM's loop), so NFE = 2 N - 1. Second order without churn (weak
    order 2 with it).

    Args:
      s_churn: total churn (>= 0): gamma = min(s_churn / N, sqrt(2) - 1) on N steps. 0 is the
        deterministic Heun / EDM sampler.
      s_min: churn only where s >= s_min (>= 0).
      s_max: churn only where s <= s_max (>= s_min).
      s_noise: scale of the churn noise (>= 0; EDM uses values slightly above 1).

    Returns:
      A `Solver` value with one tail step (`final_euler`).
    """
    s_churn = _checks.in_range("s_churn", s_churn, 0.0, float("inf"))
    s_min = _checks.in_range("s_min", s_min, 0.0, float("inf"))
    if isinstance(s_max, bool) or not isinstance(s_max, (int, float, np.integer, np.floating)) or not s_max >= s_min:
        raise ValueError(f"s_max must be a number >= s_min={s_min}, got {s_max!r}")
    s_noise = _checks.in_range("s_noise", s_noise, 0.0, float("inf"))
    return Heun(s_churn, s_min, float(s_max), s_noise)
