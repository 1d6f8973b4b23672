r"""Laws of the training time t: `sampler(key, n, schedule) -> (n,)` times in diffjax's convention.

Each constructor validates its options and returns a `TimeSampler`, a pure callable; times come in
the default float type. The range is the schedule's [t_min, t_max] unless `t_min`/`t_max` are given.
`uniform`, `antithetic` and `logit_normal` draw u in [0, 1], keep it inside [eps/2, 1 - eps/2] (eps
of the float type) and return t = t_min + (t_max - t_min) u, so they never land exactly on an end
point, where some schedules have SNR = 0 or infinity (rectified flow at t = 0 and 1).

| sampler            | law                                                                 | source                   |
|--------------------|---------------------------------------------------------------------|--------------------------|
| `uniform`          | u ~ U[0, 1)                                                         | DDPM, score_sde          |
| `antithetic`       | u_i = (u_0 + i/n) mod 1, u_0 ~ U[0, 1): one stratified batch        | VDM (Kingma et al. 2021) |
| `logit_normal`     | u = sigmoid(m + s z), z ~ N(0, 1)                                   | SD3 (Esser et al. 2024)  |
| `edm_lognormal`    | ln(sigma/alpha) ~ N(P_mean, P_std^2), t = t_from_ve_sigma, clipped  | EDM (Karras et al. 2022) |
| `discrete_uniform` | DDPM step i ~ U{0, ..., N-1}, t = (i + 1)/N (`Discrete` schedules)  | DDPM (Ho et al. 2020)    |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.schedules import Discrete, Schedule


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """A law of training times, called as `sampler(key, n, schedule) -> (n,)`.

    `law(key, n, t_min, t_max, schedule)` draws the times; `t_min`/`t_max` are None for the
    schedule's own range (see `bounds`). `name` is the constructor's name.
    """

    name: str
    law: Callable = dataclasses.field(repr=False)
    t_min: float | None = None
    t_max: float | None = None

    def bounds(self, schedule: Schedule) -> tuple[float, float]:
        """The range the times are drawn from: the given one, else the schedule's."""
        t_min = schedule.t_min if self.t_min is None else self.t_min
        t_max = schedule.t_max if self.t_max is None else self.t_max
        _checks.less("t_min", t_min, "t_max", t_max)
        return t_min, t_max

    def __call__(self, key, n: int, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
        n = _checks.positive_int("n", n)
        return self.law(key, n, *self.bounds(schedule), schedule)


def _range(t_min, t_max):
    t_min = None if t_min is None else _checks.finite("t_min", t_min)
    t_max = None if t_max is None else _checks.finite("t_max", t_max)
    if t_min is not None and t_max is not None:
        _checks.less("t_min", t_min, "t_max", t_max)
    return t_min, t_max


def _dtype():
    return jnp.result_type(float)


def _to_range(u, t_min, t_max):
    """t_min + (t_max - t_min) u, with u kept in [eps/2, 1 - eps/2], off the end points."""
    half_eps = 0.5 * jnp.finfo(u.dtype).eps
    return t_min + (t_max - t_min) * jnp.clip(u, half_eps, 1.0 - half_eps)


def uniform(*, t_min: float | None = None, t_max: float | None = None) -> TimeSampler:
    """t ~ U[t_min, t_max]."""

    def law(key, n, low, high, schedule):
        return _to_range(jax.random.uniform(key, (n,), _dtype()), low, high)

    return TimeSampler("uniform", law, *_range(t_min, t_max))


def antithetic(*, t_min: float | None = None, t_max: float | None = None) -> TimeSampler:
    """VDM's low-discrepancy times: u_i = (u_0 + i/n) mod 1 with one u_0 ~ U[0, 1) per batch.

    Each u_i is marginally uniform and the batch covers [0, 1) evenly, which lowers the variance
    of the loss's Monte Carlo estimate over t (Kingma et al. 2021, appendix I.1)."""

    def law(key, n, low, high, schedule):
        u0 = jax.random.uniform(key, (), _dtype())
        return _to_range(jnp.mod(u0 + jnp.arange(n, dtype=_dtype()) / n, 1.0), low, high)

    return TimeSampler("antithetic", law, *_range(t_min, t_max))


def logit_normal(
    mean: float = 0.0, std: float = 1.0, *, t_min: float | None = None, t_max: float | None = None
) -> TimeSampler:
    """SD3's logit-normal times (Esser et al. 2024): u = sigmoid(mean + std z), t = t_min + (t_max - t_min) u."""
    mean = _checks.finite("mean", mean)
    std = _checks.positive("std", std)

    def law(key, n, low, high, schedule):
        return _to_range(jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,), _dtype())), low, high)

    return TimeSampler("logit_normal", law, *_range(t_min, t_max))


def edm_lognormal(
    p_mean: float = -1.2, p_std: float = 1.2, *, t_min: float | None = None, t_max: float | None = None
) -> TimeSampler:
    """EDM's training noise levels (Karras et al. 2022, Table 1): ln(sigma/alpha) ~ N(p_mean, p_std^2).

    The VE noise level is mapped to the schedule's time by `t_from_ve_sigma` and clipped to
    [t_min, t_max], so levels beyond the range land on its ends."""
    p_mean = _checks.finite("p_mean", p_mean)
    p_std = _checks.positive("p_std", p_std)

    def law(key, n, low, high, schedule):
        ve_sigma = jnp.exp(p_mean + p_std * jax.random.normal(key, (n,), _dtype()))
        return jnp.clip(schedule.t_from_ve_sigma(ve_sigma), low, high)

    return TimeSampler("edm_lognormal", law, *_range(t_min, t_max))


def discrete_uniform() -> TimeSampler:
    """DDPM's training steps: i ~ U{0, ..., N-1} and t = (i + 1)/N, for `Discrete` schedules only."""

    def law(key, n, low, high, schedule):
        if not isinstance(schedule, Discrete):
            raise ValueError(f"schedule must be discrete (schedules.discrete) for discrete_uniform, got {schedule!r}")
        steps = jax.random.randint(key, (n,), 0, schedule.num_train_timesteps)
        return (steps + 1).astype(_dtype()) / schedule.num_train_timesteps

    return TimeSampler("discrete_uniform", law)


REGISTRY = {
    "uniform": uniform,
    "antithetic": antithetic,
    "logit_normal": logit_normal,
    "edm_lognormal": edm_lognormal,
    "discrete_uniform": discrete_uniform,
}
