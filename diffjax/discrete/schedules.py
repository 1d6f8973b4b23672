r"""Masking schedules of absorbing-state ("masked") discrete diffusion.

Time t in [0, 1] grows towards full masking; alpha(t) is the probability that a token is still
*kept* (unmasked) at time t (MDLM / MD4 notation, unrelated to the Gaussian alpha of
`diffjax.schedules`). The forward process masks every token independently:
q(z_t^l = x^l) = alpha(t), q(z_t^l = m) = 1 - alpha(t). The continuous NELBO weights the
cross-entropy of the masked tokens by

    weight(t) = -alpha'(t) / (1 - alpha(t)).

| builder | alpha(t) | weight(t) | official code |
|---|---|---|---|
| `log_linear(eps=1e-3)` | 1 - (1 - eps) t | 1/t (eps cancels) | MDLM `LogLinearNoise` |
| `mdlm_cosine(eps=1e-3)` | eps + (1 - eps) cos(pi t / 2) | (pi/2) cot(pi t / 4) | MDLM `CosineNoise` |
| `mdlm_linear(1e-3, 7)` | exp(-[s_min + t (s_max - s_min)]) | sigma'(t) / expm1(sigma(t)) | MDLM `Linear` |
| `md4_linear(eps=1e-4)` | (1 - 2 eps)(1 - t) + eps | (1 - 2 eps) / ((1 - 2 eps) t + eps) | MD4 `MaskingSchedule` |
| `md4_cosine(eps=1e-4)` | (1 - 2 eps)(1 - cos(pi (1 - t)/2)) + eps | ~ (pi/2) cot(pi t/2) | MD4 `MaskingSchedule` |
| `md4_poly(k, eps=1e-4)` | (1 - 2 eps)(1 - t^k) + eps | ~ k / t | MD4 `MaskingSchedule` |

The two "cosine" schedules differ: MDLM's keeps alpha = cos(pi t / 2), MD4's alpha =
1 - sin(pi t / 2). Formulas follow the table of `references/anchors-inverse-discrete.md` §9, which
was taken from MDLM's `noise_schedule.py` and MD4's `MaskingSchedule` (not re-read for this file). With eps = 0 the MDLM
log-linear and cosine schedules and the MD4 ones reach alpha(0) = 1 and alpha(1) = 0 exactly, where
the continuous NELBO of an exact denoiser equals -log p(x) (tests/test_markov.py).

Each schedule is a value (a frozen dataclass registered as a static pytree): equal schedules
are equal and hash equal, so they share compiled programs. `t_from_alpha` inverts alpha (the
first-hitting sampler needs it).
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp

from diffjax import _checks


def _value(cls):
    return jax.tree_util.register_static(dataclasses.dataclass(frozen=True)(cls))


def _t(t):
    return jnp.asarray(t, dtype=jnp.result_type(t, float))


class MaskingSchedule(abc.ABC):
    """Base class: subclasses define `alpha`, `dalpha` and `t_from_alpha`; `weight` follows."""

    @abc.abstractmethod
    def alpha(self, t):
        """The keep probability alpha(t)."""

    @abc.abstractmethod
    def dalpha(self, t):
        """d alpha / dt (<= 0)."""

    @abc.abstractmethod
    def t_from_alpha(self, alpha):
        """The time at which the keep probability is `alpha` (the inverse of `alpha`)."""

    def weight(self, t):
        """The NELBO weight -alpha'(t) / (1 - alpha(t)) of the masked tokens' cross-entropy."""
        t = _t(t)
        return -self.dalpha(t) / (1.0 - self.alpha(t))


@_value
class LogLinear(MaskingSchedule):
    """MDLM's default: alpha(t) = 1 - (1 - eps) t (built by `log_linear`)."""

    eps: float = 1e-3

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * _t(t)

    def dalpha(self, t):
        return jnp.full_like(_t(t), -(1.0 - self.eps))

    def weight(self, t):
        return 1.0 / _t(t)

    def t_from_alpha(self, alpha):
        return (1.0 - _t(alpha)) / (1.0 - self.eps)


@_value
class MDLMCosine(MaskingSchedule):
    """MDLM's cosine: alpha(t) = eps + (1 - eps) cos(pi t / 2) (built by `mdlm_cosine`)."""

    eps: float = 1e-3

    def alpha(self, t):
        return self.eps + (1.0 - self.eps) * jnp.cos(0.5 * jnp.pi * _t(t))

    def dalpha(self, t):
        return -(1.0 - self.eps) * 0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * _t(t))

    def weight(self, t):
        half = 0.25 * jnp.pi * _t(t)  # (1 - eps) cancels; sin(2h) / (1 - cos(2h)) = cot(h)
        return 0.5 * jnp.pi * jnp.cos(half) / jnp.sin(half)

    def t_from_alpha(self, alpha):
        return jnp.arccos(jnp.clip((_t(alpha) - self.eps) / (1.0 - self.eps), -1.0, 1.0)) * 2.0 / jnp.pi


@_value
class MDLMLinear(MaskingSchedule):
    """MDLM's "linear" total noise: alpha(t) = exp(-[sigma_min + t (sigma_max - sigma_min)])."""

    sigma_min: float = 1e-3
    sigma_max: float = 7.0

    def _sigma(self, t):
        return self.sigma_min + _t(t) * (self.sigma_max - self.sigma_min)

    def alpha(self, t):
        return jnp.exp(-self._sigma(t))

    def dalpha(self, t):
        return -(self.sigma_max - self.sigma_min) * jnp.exp(-self._sigma(t))

    def weight(self, t):
        return (self.sigma_max - self.sigma_min) / jnp.expm1(self._sigma(t))

    def t_from_alpha(self, alpha):
        return (-jnp.log(_t(alpha)) - self.sigma_min) / (self.sigma_max - self.sigma_min)


@_value
class MD4(MaskingSchedule):
    """MD4's `MaskingSchedule`: alpha(t) = (1 - 2 eps) g(t) + eps with g = 1 - t ("linear"),
    1 - sin(pi t / 2) ("cosine", written cos(pi (1 - t) / 2) in MD4) or 1 - t^k ("poly")."""

    kind: str = "linear"
    eps: float = 1e-4
    power: float = 1.0

    def _g(self, t):
        t = _t(t)
        if self.kind == "linear":
            return 1.0 - t
        if self.kind == "cosine":
            return 1.0 - jnp.sin(0.5 * jnp.pi * t)
        return 1.0 - t**self.power

    def _dg(self, t):
        t = _t(t)
        if self.kind == "linear":
            return -jnp.ones_like(t)
        if self.kind == "cosine":
            return -0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)
        return -self.power * t ** (self.power - 1.0)

    def alpha(self, t):
        return (1.0 - 2.0 * self.eps) * self._g(t) + self.eps

    def dalpha(self, t):
        return (1.0 - 2.0 * self.eps) * self._dg(t)

    def t_from_alpha(self, alpha):
        one_minus_g = 1.0 - (_t(alpha) - self.eps) / (1.0 - 2.0 * self.eps)
        one_minus_g = jnp.clip(one_minus_g, 0.0, 1.0)
        if self.kind == "linear":
            return one_minus_g
        if self.kind == "cosine":
            return jnp.arcsin(one_minus_g) * 2.0 / jnp.pi
        return one_minus_g ** (1.0 / self.power)


def _eps(eps, high):
    eps = _checks.finite("eps", eps)
    if not 0.0 <= eps < high:
        raise ValueError(f"eps must lie in [0, {high}), got {eps!r}")
    return eps


def log_linear(eps: float = 1e-3) -> LogLinear:
    """MDLM's default masking schedule, alpha(t) = 1 - (1 - eps) t, weight 1/t.

    Args:
      eps: alpha(1) (MDLM: 1e-3); in [0, 1). eps = 0 masks everything at t = 1.

    Returns:
      A `LogLinear` schedule value.
    """
    return LogLinear(_eps(eps, 1.0))


def mdlm_cosine(eps: float = 1e-3) -> MDLMCosine:
    """MDLM's cosine masking schedule, alpha(t) = eps + (1 - eps) cos(pi t / 2).

    Not MD4's "cosine" (`md4_cosine`, alpha = 1 - sin(pi t / 2)).

    Args:
      eps: alpha(1); in [0, 1).

    Returns:
      An `MDLMCosine` schedule value.
    """
    return MDLMCosine(_eps(eps, 1.0))


def mdlm_linear(sigma_min: float = 1e-3, sigma_max: float = 7.0) -> MDLMLinear:
    """MDLM's "linear" noise: alpha(t) = exp(-sigma(t)), sigma(t) = sigma_min + t (sigma_max - sigma_min).

    Args:
      sigma_min: total noise at t = 0 (MDLM: 1e-3); >= 0.
      sigma_max: total noise at t = 1 (MDLM: 7); > sigma_min.

    Returns:
      An `MDLMLinear` schedule value.
    """
    sigma_min = _checks.in_range("sigma_min", sigma_min, 0.0, math.inf)
    sigma_max = _checks.finite("sigma_max", sigma_max)
    _checks.less("sigma_min", sigma_min, "sigma_max", sigma_max)
    return MDLMLinear(sigma_min, sigma_max)


def md4_linear(eps: float = 1e-4) -> MD4:
    """MD4's default masking schedule, alpha(t) = (1 - 2 eps)(1 - t) + eps.

    Args:
      eps: in [0, 0.5); alpha(0) = 1 - eps and alpha(1) = eps.

    Returns:
      An `MD4` schedule value.
    """
    return MD4("linear", _eps(eps, 0.5), 1.0)


def md4_cosine(eps: float = 1e-4) -> MD4:
    """MD4's cosine masking schedule, alpha(t) = (1 - 2 eps)(1 - cos(pi (1 - t) / 2)) + eps.

    Not MDLM's cosine (`mdlm_cosine`).

    Args:
      eps: in [0, 0.5).

    Returns:
      An `MD4` schedule value.
    """
    return MD4("cosine", _eps(eps, 0.5), 1.0)


def md4_poly(k: float, eps: float = 1e-4) -> MD4:
    """MD4's polynomial masking schedule, alpha(t) = (1 - 2 eps)(1 - t^k) + eps.

    Args:
      k: the power; > 0 (k = 1 is `md4_linear`).
      eps: in [0, 0.5).

    Returns:
      An `MD4` schedule value.
    """
    return MD4("poly", _eps(eps, 0.5), _checks.positive("k", k))


def check_schedule(name: str, schedule) -> None:
    """A ValueError naming `name` unless `schedule` is a masking schedule."""
    if not isinstance(schedule, MaskingSchedule):
        raise ValueError(f"{name} must be a masking schedule (diffjax.discrete.schedules), got {schedule!r}")


REGISTRY = {
    "log_linear": log_linear,
    "mdlm_cosine": mdlm_cosine,
    "mdlm_linear": mdlm_linear,
    "md4_linear": md4_linear,
    "md4_cosine": md4_cosine,
    "md4_poly": md4_poly,
}
