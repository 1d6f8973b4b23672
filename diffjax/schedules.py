r"""Noise schedules: the forward process x_t = alpha(t) * x_0 + sigma(t) * eps, eps ~ N(0, I).

**One time convention for every schedule.** Time t increases from data to noise: x_0 is data,
`logsnr(t) = log(alpha(t)^2 / sigma(t)^2)` is strictly decreasing in t, and samplers run from
`t_max` down to `t_min` (or to the time where sigma = 0). The schedules differ only in how t is
spelled:

| schedule         | t is                       | alpha, sigma                                     | range          |
|------------------|----------------------------|--------------------------------------------------|----------------|
| `vp_linear`      | score_sde/DPM-Solver time  | log alpha = -(b1-b0) t^2/4 - b0 t/2              | [1e-3, 1]      |
| `vp_cosine`      | Nichol & Dhariwal time     | alpha^2 = f(t)/f(0), f = cos^2(pi/2 (t+s)/(1+s)) | [1e-3, 0.9946] |
| `ve`             | score_sde VE time          | alpha = 1, sigma = s_min (s_max/s_min)^t         | [0, 1]         |
| `edm`            | the noise level, t = sigma | alpha = 1, sigma = t                             | [0.002, 80]    |
| `rectified_flow` | SD3 / diffusers flow time  | alpha = 1 - t, sigma = t                         | [0, 1]         |
| `discrete`       | (i + 1)/N for DDPM step i  | alpha^2 = alphas_cumprod[i] at knots             | [1/N, 1]       |
| `shifted`        | the base's t               | base at t', logsnr = base's - 2 log s            | base's         |

Every schedule has `alpha, sigma, dalpha, dsigma` (time derivatives, closed form), `logsnr`,
`t_from_logsnr` (its exact inverse), `ve_sigma = sigma / alpha` (EDM's sigma, the "VE view"),
the SDE coefficients `drift` f(t) and `diffusion2` g(t)^2 of dx = f x dt + g dW, and
`model_time(t)`: the time a network trained with that schedule was given (the DDPM integer
index for discrete schedules, t otherwise).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks


class Schedule(abc.ABC):
    """The interface of every schedule, and the methods derived from it; a subclass defines alpha,
    sigma, their time derivatives, logsnr and t_from_logsnr in closed form."""

    t_min: float
    t_max: float

    @abc.abstractmethod
    def alpha(self, t):
        """The signal scale alpha(t) of x_t = alpha(t) x_0 + sigma(t) eps."""

    @abc.abstractmethod
    def sigma(self, t):
        """The noise scale sigma(t) of x_t = alpha(t) x_0 + sigma(t) eps."""

    @abc.abstractmethod
    def dalpha(self, t):
        """d alpha / dt."""

    @abc.abstractmethod
    def dsigma(self, t):
        """d sigma / dt."""

    @abc.abstractmethod
    def logsnr(self, t):
        """log(alpha(t)^2 / sigma(t)^2), strictly decreasing in t."""

    @abc.abstractmethod
    def t_from_logsnr(self, logsnr):
        """The time at which `logsnr(t)` equals `logsnr`: the exact inverse of `logsnr`."""

    def ve_sigma(self, t):
        """EDM's noise level sigma / alpha: x / alpha = x_0 + ve_sigma * eps."""
        return jnp.exp(-0.5 * self.logsnr(t))

    def t_from_ve_sigma(self, ve_sigma):
        """The time at which `ve_sigma(t)` equals `ve_sigma`."""
        return self.t_from_logsnr(-2.0 * jnp.log(ve_sigma))

    def dlogsnr(self, t):
        """d logsnr / dt (negative)."""
        return 2.0 * (self.dalpha(t) / self.alpha(t) - self.dsigma(t) / self.sigma(t))

    def drift(self, t):
        """f(t) = d log alpha / dt in dx = f(t) x dt + g(t) dW."""
        return self.dalpha(t) / self.alpha(t)

    def diffusion2(self, t):
        """g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2 = -sigma^2 * dlogsnr/dt."""
        return -(self.sigma(t) ** 2) * self.dlogsnr(t)

    def model_time(self, t):
        """The time input of a network trained with this schedule (t itself; discrete schedules
        give the DDPM step index)."""
        return t


def same_schedule(a, b) -> bool:
    """Whether two schedules are the same forward process: one pytree structure (type and static
    options) with equal parameters. Traced parameters compare as equal (only their structure is known
    then), so the check is exact before tracing, where composed models are built.

    Args:
      a: a schedule.
      b: another schedule.

    Returns:
      True if every model built on `a` sees the same alpha(t), sigma(t) as one built on `b`.
    """
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if type(a) is not type(b) or tree_a != tree_b:
        return False
    if not _checks.is_concrete(leaves_a, leaves_b):
        return True
    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(leaves_a, leaves_b))


def _as_float(t):
    return jnp.asarray(t, dtype=jnp.result_type(t, float))


def _vp_sigma(log_alpha):
    return jnp.sqrt(-jnp.expm1(2.0 * log_alpha))


def _vp_logsnr(log_alpha):
    return 2.0 * log_alpha - jnp.log(-jnp.expm1(2.0 * log_alpha))


@struct.dataclass
class VPLinear(Schedule):
    """Continuous VP SDE with linear beta(t) = b0 + (b1 - b0) t (Song et al. 2021)."""

    beta_min: float
    beta_max: float
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def log_alpha(self, t):
        """log alpha(t), the closed form the other quantities are computed from."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return _vp_sigma(self.log_alpha(t))

    def dalpha(self, t):
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def dsigma(self, t):
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def logsnr(self, t):
        return _vp_logsnr(self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        # -log alpha = softplus(-logsnr)/2 = c solves (b1-b0) t^2/4 + b0 t/2 = c.
        c = 0.5 * jax.nn.softplus(-logsnr)
        delta = self.beta_max - self.beta_min
        return 4.0 * c / (self.beta_min + jnp.sqrt(self.beta_min**2 + 4.0 * delta * c))


@struct.dataclass
class VPCosine(Schedule):
    """Cosine schedule alpha(t)^2 = f(t)/f(0), f(t) = cos^2(pi/2 (t+s)/(1+s)) (Nichol & Dhariwal 2021).

    `t_max = 0.9946` follows DPM-Solver: alpha(1) = 0 makes eps-prediction singular.
    """

    s: float = 0.008
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=0.9946)

    def _angle(self, t):
        return 0.5 * jnp.pi * (t + self.s) / (1.0 + self.s)

    def log_alpha(self, t):
        """log alpha(t), the closed form the other quantities are computed from."""
        return jnp.log(jnp.cos(self._angle(t))) - jnp.log(jnp.cos(self._angle(0.0)))

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return _vp_sigma(self.log_alpha(t))

    def dalpha(self, t):
        return -self.alpha(t) * jnp.tan(self._angle(t)) * 0.5 * jnp.pi / (1.0 + self.s)

    def dsigma(self, t):
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def logsnr(self, t):
        return _vp_logsnr(self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        log_alpha = -0.5 * jax.nn.softplus(-logsnr)
        angle = jnp.arccos(jnp.exp(log_alpha) * jnp.cos(self._angle(0.0)))
        return angle * 2.0 * (1.0 + self.s) / jnp.pi - self.s


@struct.dataclass
class VE(Schedule):
    """Variance exploding: alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t (Song et al. 2021).

    sigma never reaches 0; finish with a denoising step or use `edm()`.
    """

    sigma_min: float
    sigma_max: float
    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def _log_ratio(self):
        return jnp.log(self.sigma_max) - jnp.log(self.sigma_min)

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return self.sigma_min * jnp.exp(t * self._log_ratio())

    def dalpha(self, t):
        return jnp.zeros_like(self.alpha(t))

    def dsigma(self, t):
        return self.sigma(t) * self._log_ratio()

    def logsnr(self, t):
        return -2.0 * (jnp.log(self.sigma_min) + t * self._log_ratio())

    def t_from_logsnr(self, logsnr):
        return (-0.5 * logsnr - jnp.log(self.sigma_min)) / self._log_ratio()


@struct.dataclass
class EDM(Schedule):
    """Karras et al. 2022: alpha = 1 and sigma = t; `sigma_data` is the data scale used by the
    EDM preconditioning (`Denoiser(prediction="edm")`) and loss weighting."""

    sigma_data: float = 0.5
    t_min: float = struct.field(pytree_node=False, default=0.002)
    t_max: float = struct.field(pytree_node=False, default=80.0)

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return _as_float(t)

    def dalpha(self, t):
        return jnp.zeros_like(self.alpha(t))

    def dsigma(self, t):
        return jnp.ones_like(self.alpha(t))

    def logsnr(self, t):
        return -2.0 * jnp.log(t)

    def t_from_logsnr(self, logsnr):
        return jnp.exp(-0.5 * logsnr)


@struct.dataclass
class RectifiedFlow(Schedule):
    """Linear interpolation x_t = (1 - t) x_0 + t eps (Liu et al. 2022; SD3's convention, noise at t = 1)."""

    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def alpha(self, t):
        return 1.0 - _as_float(t)

    def sigma(self, t):
        return _as_float(t)

    def dalpha(self, t):
        return -jnp.ones_like(self.sigma(t))

    def dsigma(self, t):
        return jnp.ones_like(self.sigma(t))

    def logsnr(self, t):
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_logsnr(self, logsnr):
        return jax.nn.sigmoid(-0.5 * logsnr)


@struct.dataclass
class Interpolant(Schedule):
    """Any alpha(t), sigma(t) given as JAX functions; derivatives by forward-mode autodiff and
    `t_from_logsnr` by bisection on [t_min, t_max] (logsnr must be strictly decreasing there)."""

    alpha_fn: Callable = struct.field(pytree_node=False)
    sigma_fn: Callable = struct.field(pytree_node=False)
    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def alpha(self, t):
        return self.alpha_fn(t)

    def sigma(self, t):
        return self.sigma_fn(t)

    def dalpha(self, t):
        t = _as_float(t)
        return jax.jvp(self.alpha_fn, (t,), (jnp.ones_like(t),))[1]

    def dsigma(self, t):
        t = _as_float(t)
        return jax.jvp(self.sigma_fn, (t,), (jnp.ones_like(t),))[1]

    def logsnr(self, t):
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def t_from_logsnr(self, logsnr):
        logsnr = _as_float(logsnr)
        low = jnp.full_like(logsnr, self.t_min)
        high = jnp.full_like(logsnr, self.t_max)

        def halve(_, bracket):
            low, high = bracket
            mid = 0.5 * (low + high)
            above = self.logsnr(mid) > logsnr  # logsnr decreases: the root is later than mid
            return jnp.where(above, mid, low), jnp.where(above, high, mid)

        low, high = jax.lax.fori_loop(0, 64, halve, (low, high))
        return 0.5 * (low + high)


@struct.dataclass
class Discrete(Schedule):
    """A DDPM schedule given by its N `alphas_cumprod`, as diffusers and the DDPM/DDIM code store it.

    Integer model timestep i in {0, ..., N-1} sits at t = (i + 1) / N; t = 0 is the data
    (alpha = 1, diffusers' `set_alpha_to_one` / `final_sigmas_type="zero"`). Between knots,
    EDM's sigma = sqrt((1 - abar) / abar) is interpolated linearly in t, exactly as diffusers'
    Euler and Heun schedulers do for fractional timesteps; `model_time(t) = N t - 1` is the
    (possibly fractional) timestep the network was trained on.
    """

    sigma_knots: jax.Array  # (N + 1,): 0 at t = 0, then sqrt((1 - abar_i) / abar_i)
    num_train_timesteps: int = struct.field(pytree_node=False)
    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    @property
    def alphas_cumprod(self):
        """The DDPM alpha-bar of each training step, (num_train_timesteps,)."""
        return 1.0 / (1.0 + self.sigma_knots[1:] ** 2)

    def _segment(self, t):
        u = _as_float(t) * self.num_train_timesteps
        k = jnp.clip(jnp.floor(u), 0, self.num_train_timesteps - 1).astype(jnp.int32)
        low, high = self.sigma_knots[k], self.sigma_knots[k + 1]
        return low, high, u - k

    def ve_sigma(self, t):
        low, high, frac = self._segment(t)
        return low + frac * (high - low)

    def _dve_sigma(self, t):
        low, high, _ = self._segment(t)
        return (high - low) * self.num_train_timesteps

    def alpha(self, t):
        return jax.lax.rsqrt(1.0 + self.ve_sigma(t) ** 2)

    def sigma(self, t):
        return self.ve_sigma(t) * self.alpha(t)

    def dalpha(self, t):
        return -(self.alpha(t) ** 3) * self.ve_sigma(t) * self._dve_sigma(t)

    def dsigma(self, t):
        return self.alpha(t) ** 3 * self._dve_sigma(t)

    def logsnr(self, t):
        return -2.0 * jnp.log(self.ve_sigma(t))

    def t_from_logsnr(self, logsnr):
        target = jnp.exp(-0.5 * logsnr)
        k = jnp.clip(jnp.searchsorted(self.sigma_knots, target, method="compare_all"), 1, self.num_train_timesteps)
        low, high = self.sigma_knots[k - 1], self.sigma_knots[k]
        return (k - 1 + (target - low) / (high - low)) / self.num_train_timesteps

    def model_time(self, t):
        return t * self.num_train_timesteps - 1.0


@struct.dataclass
class Shifted(Schedule):
    """`base` with its logSNR shifted by -2 log(shift): logsnr(t) = base.logsnr(t) - 2 log(shift).

    Equals `base` read at the time t'(t) with the same logsnr, so the family is kept and the
    network sees `base.model_time(t')`. For rectified flow t' = shift t / (1 + (shift - 1) t),
    SD3's shift; for resolution d against a base resolution d0 (simple diffusion), shift = d / d0.
    """

    base: Schedule
    shift: float

    @property
    def t_min(self):
        """The base schedule's t_min (a shift keeps the time range)."""
        return self.base.t_min

    @property
    def t_max(self):
        """The base schedule's t_max."""
        return self.base.t_max

    def base_time(self, t):
        """The base schedule's time t' with the same logsnr as the shifted schedule at t."""
        return self.base.t_from_logsnr(self.logsnr(t))

    def _dbase_time(self, t):
        return self.base.dlogsnr(t) / self.base.dlogsnr(self.base_time(t))

    def alpha(self, t):
        return self.base.alpha(self.base_time(t))

    def sigma(self, t):
        return self.base.sigma(self.base_time(t))

    def dalpha(self, t):
        return self.base.dalpha(self.base_time(t)) * self._dbase_time(t)

    def dsigma(self, t):
        return self.base.dsigma(self.base_time(t)) * self._dbase_time(t)

    def logsnr(self, t):
        return self.base.logsnr(t) - 2.0 * jnp.log(self.shift)

    def t_from_logsnr(self, logsnr):
        return self.base.t_from_logsnr(logsnr + 2.0 * jnp.log(self.shift))

    def model_time(self, t):
        return self.base.model_time(self.base_time(t))


# --- constructors: validate, then build -------------------------------------------------------


def _time_range(t_min, t_max, low=0.0, high=math.inf):
    t_min = _checks.in_range("t_min", t_min, low, high)
    t_max = _checks.in_range("t_max", t_max, low, high)
    _checks.less("t_min", t_min, "t_max", t_max)
    return t_min, t_max


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3, t_max: float = 1.0):
    """The linear-beta VP schedule of score_sde and DPM-Solver (Song et al. 2021): log alpha =
    -(beta_max - beta_min) t^2 / 4 - beta_min t / 2, sigma = sqrt(1 - alpha^2).

    Args:
      beta_min: beta(0), > 0.
      beta_max: beta(1), >= beta_min.
      t_min: the first time, in [0, 1].
      t_max: the last time, in [0, 1].

    Returns:
      A `VPLinear` schedule.

    Raises:
      ValueError: for a bad beta or time range, naming it.
    """
    beta_min = _checks.positive("beta_min", beta_min)
    beta_max = _checks.finite("beta_max", beta_max)
    if beta_max < beta_min:
        raise ValueError(f"beta_max must be >= beta_min={beta_min}, got {beta_max!r}")
    t_min, t_max = _time_range(t_min, t_max, 0.0, 1.0)
    return VPLinear(beta_min, beta_max, t_min=t_min, t_max=t_max)


def vp_cosine(s: float = 0.008, *, t_min: float = 1e-3, t_max: float = 0.9946):
    """The cosine VP schedule (Nichol & Dhariwal 2021): alpha^2 = f(t) / f(0), f = cos^2(pi/2 (t + s)/(1 + s)).

    Args:
      s: the offset s > 0.
      t_min: the first time, in [0, 1].
      t_max: the last time, in [0, 1] (t_max < 1 keeps alpha > 0).

    Returns:
      A `VPCosine` schedule.

    Raises:
      ValueError: for a bad s or time range, naming it.
    """
    s = _checks.positive("s", s)
    t_min, t_max = _time_range(t_min, t_max, 0.0, 1.0)
    return VPCosine(s, t_min=t_min, t_max=t_max)


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0, *, t_min: float = 0.0, t_max: float = 1.0):
    """The VE schedule of score_sde (Song et al. 2021): alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t.

    Args:
      sigma_min: the smallest noise level, > 0.
      sigma_max: the largest noise level, > sigma_min.
      t_min: the first time, in [0, 1].
      t_max: the last time, in [0, 1].

    Returns:
      A `VE` schedule.

    Raises:
      ValueError: for bad sigmas or time range, naming them.
    """
    sigma_min = _checks.positive("sigma_min", sigma_min)
    sigma_max = _checks.positive("sigma_max", sigma_max)
    _checks.less("sigma_min", sigma_min, "sigma_max", sigma_max)
    t_min, t_max = _time_range(t_min, t_max, 0.0, 1.0)
    return VE(sigma_min, sigma_max, t_min=t_min, t_max=t_max)


def edm(sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """EDM's schedule (Karras et al. 2022): alpha = 1, sigma = t, t in [sigma_min, sigma_max].

    Args:
      sigma_data: the data's standard deviation (EDM's preconditioning), > 0.
      sigma_min: the smallest noise level, > 0.
      sigma_max: the largest noise level, > sigma_min.

    Returns:
      An `EDM` schedule.

    Raises:
      ValueError: for a non-positive or misordered value, naming it.
    """
    sigma_data = _checks.positive("sigma_data", sigma_data)
    sigma_min = _checks.positive("sigma_min", sigma_min)
    sigma_max = _checks.positive("sigma_max", sigma_max)
    _checks.less("sigma_min", sigma_min, "sigma_max", sigma_max)
    return EDM(sigma_data, t_min=sigma_min, t_max=sigma_max)


def rectified_flow(*, t_min: float = 0.0, t_max: float = 1.0):
    """The rectified-flow path (Liu et al. 2023; SD3): alpha = 1 - t, sigma = t.

    Args:
      t_min: the first time, in [0, 1].
      t_max: the last time, in [0, 1].

    Returns:
      A `RectifiedFlow` schedule.

    Raises:
      ValueError: for a bad time range.
    """
    t_min, t_max = _time_range(t_min, t_max, 0.0, 1.0)
    return RectifiedFlow(t_min=t_min, t_max=t_max)


def interpolant(alpha_fn: Callable, sigma_fn: Callable, *, t_min: float = 0.0, t_max: float = 1.0):
    """A user's interpolant x_t = alpha(t) x_0 + sigma(t) eps (derivatives by autodiff, the inverse of logSNR by
    bisection).

    Args:
      alpha_fn: a callable t -> alpha(t).
      sigma_fn: a callable t -> sigma(t) (logSNR must decrease in t).
      t_min: the first time of the range.
      t_max: the last time of the range.

    Returns:
      An `Interpolant` schedule.

    Raises:
      ValueError: if a function is not callable or the time range is bad.
    """
    if not callable(alpha_fn):
        raise ValueError(f"alpha_fn must be a callable t -> alpha(t), got {alpha_fn!r}")
    if not callable(sigma_fn):
        raise ValueError(f"sigma_fn must be a callable t -> sigma(t), got {sigma_fn!r}")
    t_min, t_max = _time_range(t_min, t_max, -math.inf, math.inf)
    return Interpolant(alpha_fn, sigma_fn, t_min=t_min, t_max=t_max)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _diffusers_betas(beta_schedule, n, beta_start, beta_end):
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2

    # squaredcos_cap_v2: betas from the cosine alpha_bar, capped at 0.999 (Nichol & Dhariwal 2021).
    def abar(t):
        return np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2

    i = np.arange(n, dtype=np.float64)
    return np.minimum(1.0 - abar((i + 1) / n) / abar(i / n), 0.999)


def discrete(
    betas=None,
    *,
    alphas_cumprod=None,
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
):
    """A discrete DDPM schedule from `betas`, from `alphas_cumprod`, or from diffusers'
    named beta schedules (`beta_schedule`, `num_train_timesteps`, `beta_start`, `beta_end`)."""
    if betas is not None and alphas_cumprod is not None:
        raise ValueError("give betas or alphas_cumprod, not both")
    if alphas_cumprod is None:
        if betas is None:
            _checks.one_of("beta_schedule", beta_schedule, BETA_SCHEDULES)
            num_train_timesteps = _checks.positive_int("num_train_timesteps", num_train_timesteps, 2)
            beta_start = _checks.positive("beta_start", beta_start)
            beta_end = _checks.in_range("beta_end", beta_end, beta_start, 1.0)
            betas = _diffusers_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"betas must be a 1-D array of >= 2 values in (0, 1), got {betas!r}")
        alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    if (
        alphas_cumprod.ndim != 1
        or alphas_cumprod.size < 2
        or not np.all((alphas_cumprod > 0) & (alphas_cumprod < 1))
        or not np.all(np.diff(alphas_cumprod) < 0)
    ):
        raise ValueError(
            f"alphas_cumprod must be a 1-D, strictly decreasing array of >= 2 values in (0, 1), got {alphas_cumprod!r}"
        )
    n = alphas_cumprod.size
    knots = np.concatenate([[0.0], np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)])
    return Discrete(jnp.asarray(knots), num_train_timesteps=n, t_min=1.0 / n, t_max=1.0)


def shifted(base: Schedule, shift: float):
    """`base` with logSNR lowered by 2 log(shift) (shift > 1 spends more time at high noise)."""
    if not isinstance(base, Schedule):
        raise ValueError(f"base must be a diffjax schedule, got {base!r}")
    return Shifted(base, _checks.positive("shift", shift))


REGISTRY = {
    "vp_linear": vp_linear,
    "vp_cosine": vp_cosine,
    "ve": ve,
    "edm": edm,
    "rectified_flow": rectified_flow,
    "discrete": discrete,
}
