r"""DDRM (Kawar, Elad, Ermon & Song 2022, "Denoising Diffusion Restoration Models") as a solver value.

DDRM solves y = A x0 + sigma_y n for a linear operator with an SVD A = U diag(s) V^T by running the
sampler in spectral coordinates. In the VE view x_bar = V^T x / alpha, sigma_bar = sigma / alpha,
with x0_bar = V^T x0-hat, eps_bar = V^T eps-hat and y_bar = (U^T y)_i / s_i, one step t -> t'
(sigma_bar' = sigma_bar(t')) updates every spectral coordinate i independently:

    s_i = 0 (missing):               x_bar' = x0_bar + sqrt(1 - eta^2) sigma_bar' eps_bar + eta sigma_bar' z
    s_i sigma_bar' < sigma_y:        x_bar' = x0_bar + sqrt(1 - eta^2) sigma_bar' s_i (y_bar - x0_bar) / sigma_y
                                              + eta sigma_bar' z
    s_i sigma_bar' >= sigma_y:       x_bar' = (1 - eta_b) x0_bar + eta_b y_bar
                                              + sqrt(sigma_bar'^2 - eta_b^2 sigma_y^2 / s_i^2) z

and x' = alpha' V x_bar'. It starts from the measurement: x_bar_T = y_bar + sqrt(sigma_bar_T^2 - sigma_y^2 / s_i^2) z
where s_i sigma_bar_T >= sigma_y, and sigma_bar_T z elsewhere. Defaults eta = 0.85, eta_b = 1 are the
official code's (`main.py`). One network evaluation per step.

How this differs from the official code (`functions/denoising.py`, bahjat-kawar/ddrm@32b6b3c):

- The boundary s_i sigma_bar' = sigma_y belongs to the third ("noisier than y") case; the official
  code uses strict inequalities on both sides, so equality falls into the missing case. This matters
  when sigma_y = 0 and the grid ends at sigma = 0: here the observed coordinates end at
  (1 - eta_b) x0_bar + eta_b y_bar (y_bar itself for eta_b = 1: A x = y), the limit of the third case
  as sigma_bar' -> 0, while the official output is the last x0-hat on every coordinate.
- Singular values below the operator's tolerance are 0 (the operators zero them) and are treated as
  missing; the official code keeps them in the "less noisy" case, dividing by 0.
- The start multiplies by alpha_T (x_T = alpha_T V x_bar_T) instead of dividing by sigma_bar_T.
- `project=True` ends with x <- x + A^+ (y - A x) (the observed spectral coordinates set to y_bar), so
  A x = y exactly on the range of A; meant for sigma_y = 0. The official code returns its last x0-hat.
- Every case is multiplied through by alpha' (alpha' sigma_bar' = sigma'): nothing divides by alpha,
  so grids that start at alpha = 0 (rectified flow at t = 1) work.

Noise z is drawn in pixel space (`noise_like`) and mapped with `to_spectral`, so complex Fourier
coordinates (circular blur) keep Hermitian symmetry and every coefficient, real and even in
frequency, keeps the result real. The sampler is per sample: y has shape (B, *measurement_shape)
for x of shape (B, *event_shape) (particles: flatten (B, K) to B K and repeat y).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, broadcast_to_x, noise_like
from diffjax.guidance.operators import LinearOperator
from diffjax.solvers.base import Solver, StepInfo


class DDRMState(NamedTuple):
    """DDRM's state: the sample and, per sample, whether the measurement start is still to be made.

    `Solver.init` does not see the schedule, so the start from y (which needs alpha_T and sigma_T)
    is made at the beginning of the first step, where the step's time is timesteps[0]."""

    x: jax.Array  # (B, *event)
    start: jax.Array  # (B,) bool: True until the first step has made the measurement start


@struct.dataclass(eq=False)
class DDRM(Value, Solver):
    """The DDRM sampler for one measurement; build it with `ddrm`.

    Attributes:
      operator: a linear operator with an SVD (pytree: a new mask or kernel does not recompile).
      y: the measurement (B, *measurement_shape) (leaf: a new y does not recompile).
      sigma_y: the measurement noise level, a scalar (leaf).
      eta: the noise of the missing and "less noisy" cases (static).
      eta_b: the weight of y in the "noisier than y" case (static).
      project: whether the last step projects onto A x = y (static).
    """

    operator: LinearOperator
    y: jax.Array
    sigma_y: jax.Array
    eta: float = struct.field(pytree_node=False, default=0.85)
    eta_b: float = struct.field(pytree_node=False, default=1.0)
    project: bool = struct.field(pytree_node=False, default=False)

    def init(self, x, timesteps):
        del timesteps
        event = tuple(self.operator.event_shape)
        if tuple(x.shape) != (self.y.shape[0],) + event:
            raise ValueError(
                f"x_T must have shape (B, *event_shape) = {(self.y.shape[0],) + event} to match y "
                f"{tuple(self.y.shape)}, got {tuple(x.shape)}"
            )
        return DDRMState(x, jnp.ones(x.shape[:1], bool))

    def _spectral(self, dtype):
        """(s, observed, s with 1 where missing, y_bar) in spectral coordinates."""
        s = jnp.asarray(self.operator.singular_values, dtype)
        observed = s > 0
        s_safe = jnp.where(observed, s, 1.0)
        y_bar = jnp.where(observed, self.operator.measurement_to_spectral(self.y.astype(dtype)) / s_safe, 0.0)
        return s, observed, s_safe, y_bar

    def _start(self, x, t, schedule):
        """DDRM's start at time t from x = sigma_t z: alpha_t V x_bar_T (module docstring)."""
        s, observed, s_safe, y_bar = self._spectral(x.dtype)
        alpha, sigma = broadcast_to_x(schedule.alpha(t), x), broadcast_to_x(schedule.sigma(t), x)
        c = self.operator.to_spectral(x)  # sigma_t z
        sigma_y = self.sigma_y.astype(x.dtype)
        strong = observed & (s * sigma >= alpha * sigma_y)
        std = jnp.sqrt(jnp.maximum(sigma**2 - (alpha * sigma_y / s_safe) ** 2, 0.0))
        return self.operator.from_spectral(jnp.where(strong, alpha * y_bar + std * c / sigma, c)).astype(x.dtype)

    def step(self, state, key, t, t_next, denoise):
        schedule = denoise.schedule
        start = broadcast_to_x(state.start, state.x)
        x = jnp.where(start, self._start(state.x, t, schedule), state.x)
        pred = denoise(x, t)
        s, observed, s_safe, y_bar = self._spectral(x.dtype)
        op = self.operator
        x0, eps, z = op.to_spectral(pred.x0), op.to_spectral(pred.eps), op.to_spectral(noise_like(key, x))
        alpha, sigma = broadcast_to_x(schedule.alpha(t_next), x), broadcast_to_x(schedule.sigma(t_next), x)
        sigma_y = self.sigma_y.astype(x.dtype)
        keep = np.sqrt(1.0 - self.eta**2)  # the share of the predicted noise kept
        missing = alpha * x0 + keep * sigma * eps + self.eta * sigma * z
        gain = s / jnp.where(sigma_y > 0, sigma_y, 1.0)
        less_noisy = alpha * x0 + keep * sigma * gain * (y_bar - x0) + self.eta * sigma * z
        std = jnp.sqrt(jnp.maximum(sigma**2 - (self.eta_b * alpha * sigma_y / s_safe) ** 2, 0.0))
        noisier = alpha * ((1.0 - self.eta_b) * x0 + self.eta_b * y_bar) + std * z
        below = s * sigma < alpha * sigma_y  # s_i sigma_bar' < sigma_y
        c = jnp.where(observed, jnp.where(below, less_noisy, noisier), missing)
        x_next = op.from_spectral(c).astype(x.dtype)
        return DDRMState(x_next, jnp.zeros_like(state.start)), StepInfo(jnp.int32(1), pred.x0)

    def _project(self, state, key, t, t_next, denoise):
        """The last step followed by x <- x + A^+ (y - A x): observed spectral coordinates set to y_bar."""
        state, info = self.step(state, key, t, t_next, denoise)
        _, observed, _, y_bar = self._spectral(state.x.dtype)
        c = jnp.where(observed, y_bar, self.operator.to_spectral(state.x))
        return state._replace(x=self.operator.from_spectral(c).astype(state.x.dtype)), info

    @property
    def tail(self):
        return (self._project,) if self.project else ()

    @property
    def order(self):
        return 1.0

    @property
    def stochastic(self):
        return True


def ddrm(operator, y, sigma_y, *, eta: float = 0.85, eta_b: float = 1.0, project: bool = False) -> DDRM:
    """DDRM (Kawar, Elad, Ermon & Song 2022, "Denoising Diffusion Restoration Models"): restoration
    of y = A x0 + sigma_y n with any denoiser, schedule and grid, as a solver:

        x, info = dj.sample(ddrm(op, y, sigma_y), denoiser, timesteps, key, x_T)

    Each step calls the denoiser once and updates the spectral coordinates V^T x by the three cases
    of the module docstring; the start reads the noise z from x_T = sigma_T z
    (`dj.prior_sample(..., data_std=0)`) and places y on the observed coordinates. Per sample.

    Args:
      operator: a linear measurement operator with an SVD (`diffjax.guidance.operators`: identity,
        inpainting, downsample, blur, matrix); coordinates with s = 0 are missing.
      y: the measurement, (B, *operator.measurement_shape), one per sample of x_T (B, *event_shape).
      sigma_y: the measurement noise level >= 0 (the standard deviation in the units of y; the
        official code doubles its [0, 1] figure for images in [-1, 1]).
      eta: noise of the missing and "less noisy than y" cases, in [0, 1] (official default 0.85).
      eta_b: weight of y in the "noisier than y" case, in [0, 1] (official default 1).
      project: end with x <- x + A^+ (y - A x) so that A x = y exactly on the range of A (for
        sigma_y = 0; the official code returns the last x0-hat). Adds a tail step, no extra NFE.

    Returns:
      A `DDRM` solver value whose operator, y and sigma_y are pytree leaves: a new y or sigma_y
      reuses the compiled sampler; eta, eta_b and project are static.

    Raises:
      ValueError: if `operator` is not linear with an SVD, `y` does not have the shape
        (B, *measurement_shape) or is not finite, `sigma_y` is negative or not finite, or `eta`,
        `eta_b` are outside [0, 1] or `project` is not a bool.
    """
    if not isinstance(operator, LinearOperator) or not operator.has_svd:
        raise ValueError(
            f"operator must be a linear operator with an SVD (identity, inpainting, downsample, blur, matrix), "
            f"got {operator!r}"
        )
    measurement = tuple(operator.measurement_shape)
    if jnp.ndim(y) != 1 + len(measurement) or tuple(jnp.shape(y)[1:]) != measurement:
        raise ValueError(f"y must have shape (B, *measurement_shape) = (B, *{measurement}), got {jnp.shape(y)}")
    if _checks.is_concrete(y) and not np.all(np.isfinite(np.asarray(y))):
        raise ValueError("y must be finite")
    sigma_y = _checks.in_range("sigma_y", sigma_y, 0.0, float("inf"))
    eta, eta_b = _checks.in_range("eta", eta, 0.0, 1.0), _checks.in_range("eta_b", eta_b, 0.0, 1.0)
    if not isinstance(project, bool):
        raise ValueError(f"project must be a bool, got {project!r}")
    y = jnp.asarray(y)
    return DDRM(operator, y, jnp.asarray(sigma_y, jnp.result_type(y, float)), eta, eta_b, project)
