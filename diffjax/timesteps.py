"""Time grids from noise to data. Every grid for n steps has n + 1 strictly decreasing times.

Grids are built on the host in float64 and returned as arrays (float64 when x64 is on): they are
data for `sample`, so a new grid of the same length never recompiles.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.schedules import Discrete, Schedule


def _range(schedule, t_min, t_max):
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a diffjax schedule, got {schedule!r}")
    t_min = schedule.t_min if t_min is None else _checks.finite("t_min", t_min)
    t_max = schedule.t_max if t_max is None else _checks.finite("t_max", t_max)
    _checks.less("t_min", t_min, "t_max", t_max)
    return t_min, t_max


def _grid(ts):
    ts = np.asarray(ts, dtype=np.float64)
    if not np.all(np.diff(ts) < 0):
        raise ValueError(f"the grid is not strictly decreasing (repeated times?): {ts}")
    return jnp.asarray(ts)


def _host(fn, values):
    return np.array(fn(jnp.asarray(values, dtype=jnp.result_type(float))), dtype=np.float64)


def uniform(schedule: Schedule, n: int, *, t_min: float | None = None, t_max: float | None = None):
    """Uniform in t from t_max to t_min (DPM-Solver's "time_uniform")."""
    n = _checks.positive_int("n", n)
    t_min, t_max = _range(schedule, t_min, t_max)
    return _grid(np.linspace(t_max, t_min, n + 1))


def quadratic(schedule: Schedule, n: int, *, t_min: float | None = None, t_max: float | None = None):
    """Uniform in sqrt(t) (DPM-Solver's "time_quadratic", DDIM's quadratic skip)."""
    n = _checks.positive_int("n", n)
    t_min, t_max = _range(schedule, t_min, t_max)
    if t_min < 0:
        raise ValueError(f"quadratic grids need t_min >= 0, got {t_min}")
    return _grid(np.linspace(np.sqrt(t_max), np.sqrt(t_min), n + 1) ** 2)


def logsnr_uniform(schedule: Schedule, n: int, *, t_min: float | None = None, t_max: float | None = None):
    """Uniform in logSNR between logsnr(t_max) and logsnr(t_min) (DPM-Solver's "logSNR")."""
    n = _checks.positive_int("n", n)
    t_min, t_max = _range(schedule, t_min, t_max)
    low, high = _host(schedule.logsnr, [t_max, t_min])
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(
            f"logsnr is infinite at t_min={t_min} or t_max={t_max} (logsnr = {low}, {high}); "
            "pass t_min and t_max inside the open range"
        )
    ts = _host(schedule.t_from_logsnr, np.linspace(low, high, n + 1))
    ts[0], ts[-1] = t_max, t_min  # the inverse is exact; pin the ends to the last bit
    return _grid(ts)


def karras(
    schedule: Schedule,
    n: int,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    append_zero: bool = True,
):
    """EDM's rho-spaced noise levels (Karras et al. 2022, eq. 5) in the VE sigma = sigma/alpha.

    append_zero=True (EDM): n levels from sigma_max to sigma_min, then sigma = 0.
    append_zero=False: n + 1 levels from sigma_max to sigma_min. Defaults: the schedule's range.
    """
    n = _checks.positive_int("n", n)
    rho = _checks.positive("rho", rho)
    if sigma_min is None or sigma_max is None:
        default_min, default_max = _host(schedule.ve_sigma, [schedule.t_min, schedule.t_max])
        if not (0 < default_min < default_max < np.inf):
            raise ValueError(
                f"{type(schedule).__name__}'s range [t_min, t_max] spans VE sigma [{default_min}, {default_max}], "
                "which has no finite rho grid; pass sigma_min and sigma_max"
            )
        sigma_min = default_min if sigma_min is None else sigma_min
        sigma_max = default_max if sigma_max is None else sigma_max
    sigma_min = _checks.positive("sigma_min", sigma_min)
    sigma_max = _checks.positive("sigma_max", sigma_max)
    _checks.less("sigma_min", sigma_min, "sigma_max", sigma_max)
    count = n if append_zero else n + 1
    if count < 2:
        raise ValueError(f"karras grids with append_zero=True need n >= 2, got n={n}")
    ramp = np.linspace(0.0, 1.0, count)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    ts = _host(schedule.t_from_ve_sigma, sigmas)
    if append_zero:
        if float(schedule.sigma(0.0)) != 0.0:
            raise ValueError(
                f"append_zero=True needs a schedule with sigma(0) = 0; {type(schedule).__name__} "
                "never reaches sigma = 0 (use edm() or append_zero=False)"
            )
        ts = np.append(ts, 0.0)
    return _grid(ts)


SPACINGS = ("linspace", "leading", "trailing")
DIFFUSERS_FAMILIES = ("ddim", "dpmsolver", "euler")
FINALS = ("zero", "sigma_min")


def diffusers_timesteps(num_train_timesteps: int, n: int, spacing: str, steps_offset: int, family: str):
    """The integer (or, for "euler" + "linspace", fractional) model timesteps diffusers runs.

    family "ddim": DDIMScheduler, DDPMScheduler, PNDMScheduler; "dpmsolver": DPMSolverMultistep,
    UniPCMultistep, DEISMultistep (which space n + 1 points and drop the last for "linspace" and
    "leading"); "euler": EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete (no rounding).
    """
    N = num_train_timesteps
    if family == "dpmsolver":
        if spacing == "linspace":
            return np.linspace(0, N - 1, n + 1).round()[::-1][:-1].astype(np.float64)
        if spacing == "leading":
            ratio = N // (n + 1)
            return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.float64) + steps_offset
        return np.arange(N, 0, -N / n).round().astype(np.float64) - 1
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n, dtype=np.float64)[::-1]
        return ts if family == "euler" else ts.round()
    if spacing == "leading":
        return (np.arange(0, n) * (N // n)).round()[::-1].astype(np.float64) + steps_offset
    return np.arange(N, 0, -N / n).round().astype(np.float64) - 1


def diffusers(
    schedule: Discrete,
    n: int,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    family: str = "ddim",
    final: str = "zero",
):
    """The grid a diffusers scheduler steps through, in diffjax time t = (timestep + 1) / N.

    `spacing` and `steps_offset` are diffusers' `timestep_spacing` and `steps_offset`; `family`
    picks the scheduler family (see `diffusers_timesteps`); `final` is where the last step lands:
    "zero" (alpha = 1: DDIM's `set_alpha_to_one=True`, `final_sigmas_type="zero"`) or
    "sigma_min" (alphas_cumprod[0]: `set_alpha_to_one=False`, `final_sigmas_type="sigma_min"`).
    """
    if not isinstance(schedule, Discrete):
        raise ValueError(f"diffusers grids need a discrete() schedule, got {type(schedule).__name__}")
    n = _checks.positive_int("n", n)
    _checks.one_of("spacing", spacing, SPACINGS)
    _checks.one_of("family", family, DIFFUSERS_FAMILIES)
    _checks.one_of("final", final, FINALS)
    steps_offset = _checks.positive_int("steps_offset", steps_offset, 0)
    N = schedule.num_train_timesteps
    if n > N:
        raise ValueError(f"n must be <= num_train_timesteps={N}, got {n}")
    timesteps = diffusers_timesteps(N, n, spacing, steps_offset, family)
    if timesteps.max() > N - 1:
        raise ValueError(f"steps_offset={steps_offset} pushes timestep {timesteps.max()} past {N - 1}")
    ts = (timesteps + 1.0) / N
    last = 0.0 if final == "zero" else 1.0 / N
    if ts[-1] > last:  # diffusers' step from timestep 0 to alphas_cumprod[0] is the identity: dropped
        ts = np.append(ts, last)
    return _grid(ts)


REGISTRY = {
    "uniform": uniform,
    "quadratic": quadratic,
    "logsnr_uniform": logsnr_uniform,
    "karras": karras,
    "diffusers": diffusers,
}
